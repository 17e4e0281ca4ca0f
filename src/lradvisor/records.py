"""The vocabulary every layer speaks: small frozen dataclasses, no torch, no heavy imports.

``theory/`` returns these, ``measure/`` and ``engine/`` fill them, the CLI renders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PowerLawFit:
    """Least-squares line through (ln η, ln drift): drift ≈ exp(intercept) · η^alpha.

    ``alpha_ci`` is a 95 % interval; ``ci_method`` says how it was obtained
    ("bootstrap-seeds": resampling seeds with replacement and refitting; "t": the
    Student-t interval of the OLS slope, used when there is only one seed).
    """

    alpha: float
    intercept: float
    r2: float
    alpha_ci: tuple[float, float]
    alpha_stderr: float
    ci_method: str
    n_points: int

    def as_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "intercept": self.intercept,
            "r2": self.r2,
            "alpha_ci": list(self.alpha_ci),
            "alpha_stderr": self.alpha_stderr,
            "ci_method": self.ci_method,
            "n_points": self.n_points,
        }


@dataclass(frozen=True)
class TauFit:
    """τ(η) = a/η + b fitted by least squares on (1/η, τ)."""

    a: float
    b: float
    r2: float

    def __call__(self, eta: np.ndarray | float) -> np.ndarray | float:
        return self.a / np.asarray(eta, dtype=float) + self.b


@dataclass(frozen=True)
class Spectrum:
    """Hessian eigenpairs (descending eigenvalues) and how they were obtained."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None = None
    method: str = "dense"
    n_hvp: int = 0
    tolerance: float = 0.0

    @property
    def lambda_max(self) -> float:
        return float(np.max(self.eigenvalues))


@dataclass(frozen=True)
class ModeCoefficients:
    """Spectral-formula coefficients c_k ≥ 0 with Σ c_k = |δ(0)| over the kept modes.

    ``outside_fraction`` is the share of ‖g₀‖² that lies outside the kept eigenvectors
    (zero for a complete dense basis restricted to nothing).
    """

    eigenvalues: np.ndarray
    coefficients: np.ndarray
    outside_fraction: float = 0.0


@dataclass(frozen=True)
class LawReport:
    """What a conservation-law measurement found for one trial (one law = one hidden layer).

    ``identity_holds`` is False for optimisers that break the η²·S identity (momentum,
    Adam, weight decay); then ``drift_identity`` is NaN and only ``drift_direct`` means
    something.
    """

    name: str
    bias_aware: bool
    c_initial: float
    c_final: float
    drift_direct: float
    drift_identity: float
    identity_holds: bool
    unit_drift_direct: np.ndarray | None = None
    unit_drift_identity: np.ndarray | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Advice:
    """Learning-rate advice for one model, every number with the rule that produced it.

    ``rules`` maps a field name to one line of reasoning; ``applies`` / ``does_not_apply``
    say which parts of the theory hold for this model (biases, optimiser, layers).
    """

    model: str
    loss: str
    full_batch: bool
    lambda_max: float
    lambda_max_method: str
    eos_lr: float
    eos_lr_by_width: dict[int, float]
    width_law: dict[str, float] | None
    batch_lambda_max: float | None
    batch_eos_lr: float | None
    recommended_lr: float
    lr_range: tuple[float, float]
    alpha_predicted: float | None
    drift_curve: list[dict]
    outside_fraction: float | None
    regime: str
    switch_rate: float | None
    tau: dict | None
    schedule: list[dict] | None
    probe: dict
    rules: dict[str, str]
    applies: tuple[str, ...] = ()
    does_not_apply: tuple[str, ...] = ()
    alpha_fitted: float | None = None
    alpha_ci: tuple[float, float] | None = None
    validation: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        from dataclasses import asdict

        data = asdict(self)
        data["lr_range"] = list(self.lr_range)
        data["eos_lr_by_width"] = {str(k): v for k, v in self.eos_lr_by_width.items()}
        if self.alpha_ci is not None:
            data["alpha_ci"] = list(self.alpha_ci)
        return data

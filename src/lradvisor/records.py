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
class Sharpness:
    """Stage 1 of ``suggest``: the top Hessian eigenvalue at θ₀, by Lanczos on HVPs.

    ``lambda_max`` is the full-batch sharpness on ``samples`` training samples;
    ``batch_lambda_max`` the mean over single mini-batches of ``batch_size`` (mini-batch
    training only). ``note`` says why a number is missing (e.g. no double backward).
    """

    lambda_max: float | None
    samples: int
    n_hvp: int
    residual: float
    batch_lambda_max: float | None = None
    batch_size: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class Bound:
    """Stage 2: the optimizer-aware stability bound and the probe bracket it places.

    ``kind`` names the threshold (gradient descent, heavy-ball or Nesterov momentum) or says
    there is none (adaptive optimizers); ``value`` is the bound itself, ``eos_lr`` the plain
    gradient-descent bound 2/λ_max for comparison; ``warnings`` say when the model or the
    optimizer make the bound unreliable.
    """

    kind: str
    value: float | None
    eos_lr: float | None
    rule: str
    bracket: tuple[float, ...]
    bracket_rule: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeResult:
    """Stage 3: short training runs of the candidate rates, rung by rung.

    ``rows`` holds one dict per probed rate (ascending): ``lr``, ``origin`` (bracket,
    extension, refinement), ``status`` (finalist, dropped, diverged, no progress),
    ``rung_score`` (at step ``rung``) and ``final_score`` (at ``steps``, finalists only),
    ``rung_train`` / ``final_train`` training losses, ``seed_scores`` and
    ``diverged_seeds``. ``score`` says which loss ranks them.
    """

    steps: int
    rung: int
    seeds: tuple[int, ...]
    score: str
    initial_score: float
    rows: tuple[dict, ...]
    extensions: tuple[str, ...]
    mode: str
    concentration: dict | None = None
    trial_steps: int = 0  # (trial, step) pairs trained: the probe's cost in training steps


@dataclass(frozen=True)
class Choice:
    """Stage 4: the recommended rate, the sweep range, and what to watch out for."""

    recommended_lr: float
    lr_range: tuple[float, float]
    rule: str
    range_rule: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Advice:
    """Learning-rate advice for one model, every number with the rule that produced it.

    ``rules`` maps a field name to one line of reasoning; ``applies`` / ``does_not_apply``
    say which parts of the theory hold for this model (laws, optimizer, layers);
    ``warnings`` what the user should know before trusting the numbers.
    """

    model: str
    loss: str
    optimizer: str
    full_batch: bool
    batch_size: int | None
    steps: int
    score: str
    lambda_max: float | None
    lambda_max_method: str
    eos_lr: float | None
    batch_lambda_max: float | None
    batch_eos_lr: float | None
    bound: dict
    recommended_lr: float
    lr_range: tuple[float, float]
    regime: str
    probe: dict
    rules: dict[str, str]
    warnings: tuple[str, ...] = ()
    applies: tuple[str, ...] = ()
    does_not_apply: tuple[str, ...] = ()
    alpha_predicted: float | None = None
    drift_curve: list[dict] = field(default_factory=list)
    outside_fraction: float | None = None
    tau: dict | None = None
    schedule: list[dict] | None = None
    adaptive: dict | None = None
    eos_lr_by_width: dict[int, float] = field(default_factory=dict)
    width_law: dict[str, float] | None = None
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

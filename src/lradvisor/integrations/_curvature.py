"""λ_max(θ₀) and the top Hessian modes of a trial's model, measured once per configuration.

The sharpness at initialisation depends on the architecture, the data and the loss, and
hardly on the seed; a study trains the same configuration many times at different rates. So
it is measured by Lanczos on Hessian-vector products for the first trial of a configuration
and reused: from memory in the same worker, from the study's user_attrs in other workers and
processes (RDB or journal storage); never across studies. In a study that searches width, once three widths are
measured the width law λ_max(m) = a·m^b predicts it for new widths, with every
``WIDTH_CHECK_EVERY``-th new width measured anyway to check the prediction (the error is kept
in the study).

The measurement runs on a copy of the model in training mode (BatchNorm on batch
statistics, one fixed dropout mask) with attention on the math kernel, on at most
``max_rows`` rows of the data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import weakref
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from lradvisor.integrations import _attrs

__all__ = ["Curvature", "configuration_key", "curvature_for", "measure", "width_law_error"]

WIDTH_CHECK_EVERY = 3
# Lanczos' residual tolerance when λ_max alone is wanted. The Ritz value's error is of the
# order of the residual squared over the spectral gap: on the digits CNNs (widths 4–32,
# 256 rows) 3e-2 gave λ within 0.2 % of 1e-2 at ~70 % of the products, while the 256-row
# subsample itself is ~5 % from 1024 rows.
LAMBDA_TOL = 3e-2
# storage → {(study id, configuration): Curvature}. Keyed by the storage object itself, held
# weakly: an id() of a freed storage can be reused by a new one, whose study would then read
# another study's λ (a test saw it).
_MEMORY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Curvature:
    """λ_max and, when measured with modes, the prediction's eigenvalues and weights."""

    lambda_max: float | None
    eigenvalues: list[float] | None = None
    weights: list[float] | None = None
    outside_fraction: float | None = None
    source: str = "measured"

    def as_json(self) -> str:
        return json.dumps(
            {
                "lambda_max": self.lambda_max,
                "eigenvalues": self.eigenvalues,
                "weights": self.weights,
                "outside_fraction": self.outside_fraction,
            }
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> Curvature:
        data = json.loads(text)
        return cls(
            data.get("lambda_max"),
            data.get("eigenvalues"),
            data.get("weights"),
            data.get("outside_fraction"),
            source,
        )


def configuration_key(model: nn.Module, inputs: torch.Tensor, loss_name: str, modes: bool) -> str:
    """What λ_max(θ₀) depends on: architecture (parameter names, shapes, module types), the
    data's shape and dtype, the loss, and whether modes are wanted."""
    parts = [type(model).__qualname__, loss_name, str(tuple(inputs.shape[1:])), str(inputs.dtype)]
    parts += [f"{name}:{tuple(p.shape)}" for name, p in model.named_parameters()]
    parts += [f"{name}:{type(m).__name__}" for name, m in model.named_modules()]
    parts.append("modes" if modes else "top")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def curvature_for(
    trial,
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn,
    *,
    loss_name: str,
    modes: int,
    iterations: int,
    seed: int,
    width: int | None = None,
) -> Curvature:
    """The cached curvature of this configuration, or a fresh measurement (then cached).

    ``modes``: eigenpairs for the drift prediction (0: λ_max only). ``width``: the trial's
    width, for the study-level width law.
    """
    key = configuration_key(model, inputs, loss_name, modes > 0)
    study = trial.study
    memory = _memory_of(study._storage)
    memory_key = (study._study_id, key)
    if memory_key in memory:
        return memory[memory_key]
    stored = study.user_attrs.get(f"{_attrs.STUDY_CURVATURE}.{key}")
    if isinstance(stored, str):
        curvature = Curvature.from_json(stored, "cached in the study")
        memory[memory_key] = curvature
        return curvature
    predicted = _width_prediction(study, width) if width is not None and modes == 0 else None
    if predicted is not None and not predicted[1]:
        curvature = Curvature(predicted[0], source="width law a·m^b")
        _record_width(study, width, None, predicted[0])
    else:
        curvature = measure(
            model, inputs, targets, loss_fn, modes=modes, iterations=iterations, seed=seed
        )
        if width is not None:
            _record_width(
                study, width, curvature.lambda_max, None if predicted is None else predicted[0]
            )
    memory[memory_key] = replace(curvature, source=f"cached in this worker ({curvature.source})")
    study.set_user_attr(f"{_attrs.STUDY_CURVATURE}.{key}", curvature.as_json())
    return curvature


def _memory_of(storage) -> dict[tuple[int, str], Curvature]:
    """This worker's cache for one storage (a throwaway dict if it cannot be weakly keyed)."""
    try:
        return _MEMORY.setdefault(storage, {})
    except TypeError:
        return {}


def measure(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn,
    *,
    modes: int,
    iterations: int,
    seed: int,
) -> Curvature:
    """Lanczos on Hessian-vector products at the model's current weights."""
    from lradvisor.advisor.sharpness import curvature_context
    from lradvisor.measure.lanczos import hessian_operator, lanczos

    copy_ = copy.deepcopy(model).train()  # BatchNorm updates running stats on the copy
    operator = hessian_operator(copy_, [(inputs, targets)], loss_fn)

    def matvec(vector: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(seed)  # one dropout mask for every product
        return operator.matvec(vector)

    with curvature_context():
        spectrum = lanczos(
            matvec,
            operator.dim,
            k=max(1, min(modes, operator.dim)),
            max_iter=max(iterations, modes),
            tol=1e-3 if modes else LAMBDA_TOL,
            seed=seed,
            device=operator.device,
        )
        gradient = operator.gradient() if modes else None
    lam = float(spectrum.lambda_max)
    if not modes or gradient is None:
        return Curvature(lam if lam > 0 else None)
    eigenvalues, weights, outside = _mode_weights(
        spectrum.eigenvalues, spectrum.eigenvectors, gradient.detach().double().cpu().numpy()
    )
    return Curvature(
        lam if lam > 0 else None,
        None if weights is None else [float(v) for v in eigenvalues],
        None if weights is None else [float(v) for v in weights],
        outside,
    )


def _mode_weights(eigenvalues: np.ndarray, eigenvectors: np.ndarray, gradient: np.ndarray):
    """Kept eigenvalues (positive ones, then the smallest again) and weights summing to 1.

    w_k = (g₀·v_k)²/‖g₀‖² on the positive modes; the rest of ‖g₀‖² (outside the computed
    eigenvectors, or on non-positive ones) is the last weight, on the smallest kept λ.
    """
    mass = float(gradient @ gradient)
    positive = eigenvalues > 0
    if mass == 0 or not positive.any():
        return eigenvalues, None, None
    shares = (gradient @ eigenvectors[:, positive]) ** 2 / mass
    outside = max(0.0, 1.0 - float(shares.sum()))
    kept = eigenvalues[positive]
    weights = np.append(shares, outside)
    return np.append(kept, kept.min()), weights / weights.sum(), outside


def _width_points(study) -> list[list[float]]:
    return list(_attrs.decode(study.user_attrs.get(_attrs.STUDY_WIDTH_POINTS)) or [])


def _width_prediction(study, width: int) -> tuple[float, bool] | None:
    """(λ predicted by a·m^b, whether to measure anyway to check it), or None when fewer than
    three widths were measured or this width was seen before."""
    from lradvisor.theory import fit_width_law

    points = _width_points(study)
    measured = {int(p[0]): float(p[1]) for p in points if p[1] is not None}
    if len(measured) < 3 or any(int(p[0]) == width for p in points):
        return None
    widths = np.array(sorted(measured), dtype=float)
    coefficient, exponent, _ = fit_width_law(widths, np.array([measured[int(w)] for w in widths]))
    predicted_before = sum(1 for p in points if p[2] is not None)
    check = predicted_before % WIDTH_CHECK_EVERY == WIDTH_CHECK_EVERY - 1
    return float(coefficient * width**exponent), check


def _record_width(study, width: int, lam: float | None, predicted: float | None) -> None:
    """Append [width, measured λ or None, predicted λ or None] to the study's width points."""
    points = _width_points(study)
    if any(int(p[0]) == width for p in points):
        return
    points.append([int(width), lam, predicted])
    study.set_user_attr(_attrs.STUDY_WIDTH_POINTS, _attrs.encode(points))


def width_law_error(study) -> float | None:
    """Median relative error of the width law's predictions checked by a measurement."""
    errors = [
        abs(p[2] - p[1]) / p[1]
        for p in _width_points(study)
        if p[1] is not None and p[2] is not None and p[1] > 0
    ]
    return float(np.median(errors)) if errors else None

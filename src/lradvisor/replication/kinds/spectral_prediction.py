"""E8 ``spectral_prediction``: S(η) predicted from the Hessian at init against the measurement.

* **S(η)**: the gradient imbalance sum of law C1, |Σ_t δ(t)| from the engine's float64
  accumulator, averaged over seeds (docs/theory.md §2).
* **Predicted S(η)**: docs/theory.md §4 with λ_k, v_k the exact Hessian eigenpairs at init
  (λ_k > 0) and c_k ∝ (g₀·v_k)² normalised to |δ(0)|, averaged over seeds.
* **Prediction error**: median over η of |S_pred − S| / S, counted only below the EoS bound
  2/λ_max of every seed (where the quadratic model is stable).
* **Nulls** (:mod:`lradvisor.replication.nulls`): S ∝ 1/η (no Hessian), one constant
  eigenvalue λ̄ (constant spectrum), c_k ∝ z_k² (random directions, median over draws).
  The comparison is on shape: every curve, the prediction's included (``shape_error``),
  is given its best scale in hindsight (least squares in ln S) before its median error is
  taken; the prediction's must be at most half of each null's.
"""

from __future__ import annotations

import time

import numpy as np

from lradvisor.engine.batched import run_sweep
from lradvisor.prediction import coefficient_profile, predict_imbalance_sum
from lradvisor.replication import nulls
from lradvisor.replication.kinds.common import (
    config_from,
    finite,
    log_log,
    lr_key,
    mean_imbalance,
    progress_for,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.theory import fit_power_law


def _prediction_errors(
    lrs: np.ndarray, measured: np.ndarray, predicted: np.ndarray, bound: float
) -> dict:
    below = lrs < bound
    errors = np.abs(predicted - measured) / measured
    used = errors[below & np.isfinite(errors)]
    return {
        "errors": {lr_key(lr): finite(e) for lr, e in zip(lrs, errors, strict=True)},
        "median_error": finite(np.median(used)) if used.size else None,
        "max_error": finite(used.max()) if used.size else None,
        "lrs_used": [float(lr) for lr in lrs[below]],
    }


def null_curves(prediction, lrs: np.ndarray, steps: int, *, seed: int = 0) -> dict:
    """Seed-mean S(η) of each null (unscaled): no Hessian, constant spectrum, random draws."""
    rng = np.random.default_rng(seed)
    constant, random = [], []
    for spectrum in prediction.spectra:
        eigenvalues, profile = coefficient_profile(spectrum)
        coefficients = abs(float(spectrum.deltas[0])) * profile
        constant.append(nulls.constant_spectrum(lrs, eigenvalues, coefficients, steps=steps))
        random.append(
            nulls.random_directions(lrs, eigenvalues, coefficients.sum(), steps=steps, rng=rng)
        )
    return {
        "no_hessian": nulls.no_hessian(lrs),
        "constant_spectrum": np.mean(constant, axis=0),
        "random_directions": np.mean(random, axis=0),  # (draws, η)
    }


def null_errors(curves: dict, measured: np.ndarray, below: np.ndarray) -> dict[str, float]:
    """Median relative error of each oracle-scaled null over the rates ``below`` the EoS."""
    errors = {}
    for name, curve in curves.items():
        draws = curve if curve.ndim == 2 else curve[np.newaxis]
        per_draw = [
            nulls.median_relative_error(
                nulls.oracle_scale(draw[below], measured[below]), measured[below]
            )
            for draw in draws
        ]
        errors[name] = float(np.median(per_draw))
    return errors


def spectral_prediction(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """E8: predicted vs measured S(η) for each variant (e.g. linear and ReLU), with nulls."""
    started = time.perf_counter()
    lrs = np.asarray(protocol["lrs"], dtype=float)
    seeds = [int(s) for s in protocol["seeds"]]
    values: dict = {}
    series: list[Series] = []
    notes = []
    for name, overrides in protocol["variants"].items():
        config = config_from(protocol, **overrides)
        steps = config.training.steps
        result = run_sweep(config, lrs=lrs, seeds=seeds, progress=progress_for(progress, name))
        grid, measured = mean_imbalance(result)
        prediction = predict_imbalance_sum(
            config, lrs=grid, seeds=seeds, steps=steps, method="dense"
        )
        predicted = prediction.imbalance_sum[:, 0]
        bound = 2.0 / float(prediction.lambda_max.max())
        below = grid < bound
        curves = null_curves(prediction, grid, steps)
        values[name] = {
            **_prediction_errors(grid, measured, predicted, bound),
            "shape_error": nulls.median_relative_error(
                nulls.oracle_scale(predicted[below], measured[below]), measured[below]
            ),
            "nulls": null_errors(curves, measured, below),
            "eos_bound": bound,
            "lambda_max": [float(v) for v in prediction.lambda_max],
            "gradient_outside": prediction.outside_fraction,
            "alpha": fit_power_law(grid, grid**2 * measured).alpha,
        }
        series += [
            Series(grid.tolist(), measured.tolist(), f"{name}: measured S", "points"),
            Series(
                grid[below].tolist(), predicted[below].tolist(), f"{name}: predicted", "prediction"
            ),
        ]
        shown = ", ".join(f"{k} {v:.1%}" for k, v in values[name]["nulls"].items())
        notes.append(
            f"{name}: λ_max(θ₀) {min(prediction.lambda_max):.3g}–{max(prediction.lambda_max):.3g}; "
            f"error counted for η < 2/max λ_max = {bound:.3g} "
            f"({len(values[name]['lrs_used'])} of {len(grid)} rates); "
            f"{prediction.outside_fraction:.0%} of ‖g₀‖² on modes with λ ≤ 0 left out; "
            f"median error {values[name]['median_error']:.1%}; on shape (every curve at its best "
            f"scale) {values[name]['shape_error']:.1%} against the nulls' {shown}"
        )
    figure = Figure("S(η): measured vs predicted from the Hessian at init", "η", "S(η)", series)
    return Outcome(
        values=values,
        figures={"s_prediction": log_log(figure)},
        notes=notes,
        wall_time=time.perf_counter() - started,
    )

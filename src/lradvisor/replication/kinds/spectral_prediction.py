"""E8 ``spectral_prediction``: S(η) predicted from the Hessian at init vs measured."""

from __future__ import annotations

import time

import numpy as np

from lradvisor.engine.batched import run_sweep
from lradvisor.prediction import predict_imbalance_sum
from lradvisor.replication.kinds.common import (
    config_from,
    finite,
    log_log,
    lr_key,
    mean_imbalance,
    progress_for,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.theory import (
    fit_power_law,
)


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


def spectral_prediction(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """E8: predicted vs measured S(η) for each variant (e.g. linear and ReLU)."""
    started = time.perf_counter()
    lrs = np.asarray(protocol["lrs"], dtype=float)
    seeds = [int(s) for s in protocol["seeds"]]
    values: dict = {}
    series: list[Series] = []
    notes = []
    for name, overrides in protocol["variants"].items():
        config = config_from(protocol, **overrides)
        result = run_sweep(config, lrs=lrs, seeds=seeds, progress=progress_for(progress, name))
        grid, measured = mean_imbalance(result)
        prediction = predict_imbalance_sum(
            config, lrs=grid, seeds=seeds, steps=config.training.steps
        )
        predicted = prediction.imbalance_sum[:, 0]
        bound = 2.0 / float(prediction.lambda_max.max())
        values[name] = {
            **_prediction_errors(grid, measured, predicted, bound),
            "eos_bound": bound,
            "lambda_max": [float(v) for v in prediction.lambda_max],
            "gradient_outside": prediction.outside_fraction,
            "alpha": fit_power_law(grid, grid**2 * measured).alpha,
        }
        below = grid < bound
        series += [
            Series(grid.tolist(), measured.tolist(), f"{name}: measured S", "points"),
            Series(
                grid[below].tolist(), predicted[below].tolist(), f"{name}: predicted", "prediction"
            ),
        ]
        notes.append(
            f"{name}: λ_max(θ₀) {min(prediction.lambda_max):.3g}–{max(prediction.lambda_max):.3g}; "
            f"error counted for η < 2/max λ_max = {bound:.3g} "
            f"({len(values[name]['lrs_used'])} of {len(grid)} rates); "
            f"{prediction.outside_fraction:.0%} of ‖g₀‖² on modes with λ ≤ 0 left out"
        )
    figure = Figure("S(η): measured vs predicted from the Hessian at init", "η", "S(η)", series)
    return Outcome(
        values=values,
        figures={"s_prediction": log_log(figure)},
        notes=notes,
        wall_time=time.perf_counter() - started,
    )

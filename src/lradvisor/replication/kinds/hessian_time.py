"""E16 ``hessian_time_prediction``: S(η) predicted from the Hessian at step t of a run.

The (η, seed) sweep measures S(η) from init over T steps; a run at ``train_lr`` gives the
weights θ_t at each of ``hessian_steps``. From the exact Hessian and gradient at θ_t:
c_k ∝ (g_t·v_k)² over λ_k > 0, normalised to |δ(t)|, and S_pred(η) by docs/theory.md §4 with T
steps, averaged over seeds.

* **R**: Pearson correlation of ln S_pred and ln S over the η below 2/λ_max(θ_t) (S spans
  three decades; on a linear scale the smallest η alone would decide R, ``r_linear``).
  R is blind to the overall scale; ``median_error`` and ``scale`` (median S_pred/S) say
  how far off the prediction is in size.
* **Nulls** on the same rates (:mod:`lradvisor.replication.nulls`): S ∝ 1/η (no Hessian),
  one constant eigenvalue λ̄ from the Hessian at θ_t (constant spectrum), and c_k ∝ z_k² on
  its eigenvalues (random directions, median R over draws).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import Observables, run_sweep
from lradvisor.engine.data import Dataset
from lradvisor.measure.hessian import dense_spectrum, flat_gradient
from lradvisor.replication import nulls
from lradvisor.replication.kinds.common import (
    config_from,
    finite,
    first_law_imbalance,
    flat,
    log_log,
    loss_function,
    mean_imbalance,
    pearson,
    progress_for,
    seed_data,
    trial_index,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.theory import gradient_imbalance_sum, mode_coefficients


def _predict_from(
    config: ModelConfig, data: Dataset, theta: torch.Tensor, lrs: np.ndarray, steps: int
) -> tuple[np.ndarray, float]:
    """S(η) predicted from the Hessian and gradient at ``theta``; and λ_max there."""
    predicted, lam, _ = _predict_with_nulls(config, data, theta, lrs, steps, rng=None)
    return predicted, lam


def _predict_with_nulls(
    config: ModelConfig,
    data: Dataset,
    theta: torch.Tensor,
    lrs: np.ndarray,
    steps: int,
    *,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, float, dict]:
    """S_pred(η), λ_max and the spectrum nulls' S(η) (unscaled) from the Hessian at ``theta``."""
    loss_fn = loss_function(config, data)
    spectrum = dense_spectrum(loss_fn, theta)
    gradient = flat_gradient(loss_fn, theta)
    delta = first_law_imbalance(config, data, gradient)
    modes = mode_coefficients(
        gradient.numpy(), spectrum.eigenvectors, spectrum.eigenvalues, delta0=delta
    )
    predicted = gradient_imbalance_sum(lrs, modes.eigenvalues, modes.coefficients, steps=steps)
    curves = {}
    if rng is not None:
        curves["constant_spectrum"] = nulls.constant_spectrum(
            lrs, modes.eigenvalues, modes.coefficients, steps=steps
        )
        curves["random_directions"] = nulls.random_directions(
            lrs, modes.eigenvalues, modes.coefficients.sum(), steps=steps, rng=rng
        )
    return predicted, spectrum.lambda_max, curves


def _null_correlations(curves: dict, lrs: np.ndarray, measured: np.ndarray) -> dict:
    values = {"no_hessian": nulls.log_correlation(nulls.no_hessian(lrs), measured)}
    values["constant_spectrum"] = nulls.log_correlation(curves["constant_spectrum"], measured)
    values["random_directions"] = float(
        np.median([nulls.log_correlation(draw, measured) for draw in curves["random_directions"]])
    )
    return values


def _step_values(
    grid: np.ndarray,
    measured: np.ndarray,
    predicted: np.ndarray,
    curves: dict,
    sharpness: list[float],
) -> dict:
    bound = 2.0 / max(sharpness)
    usable = (grid < bound) & np.isfinite(predicted) & (predicted > 0)
    ratio = predicted[usable] / measured[usable]
    used = {k: (v[..., usable]) for k, v in curves.items()}
    return {
        "r": nulls.log_correlation(predicted[usable], measured[usable]),
        "r_linear": pearson(predicted[usable], measured[usable]),
        "median_error": finite(np.median(np.abs(ratio - 1))) if ratio.size else None,
        "scale": finite(np.median(ratio)) if ratio.size else None,
        "nulls": _null_correlations(used, grid[usable], measured[usable]),
        "lambda_max": float(np.mean(sharpness)),
        "lrs_used": int(usable.sum()),
    }


def hessian_time_prediction(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """E16: how well the Hessian at step t of a run at ``train_lr`` predicts S(η)."""
    started = time.perf_counter()
    config = config_from(protocol)
    steps = config.training.steps
    train_lr = float(protocol["train_lr"])
    seeds = [int(s) for s in protocol["seeds"]]
    at = [int(t) for t in protocol["hessian_steps"] if int(t) <= steps]
    lrs = np.unique(np.append(np.asarray(protocol["lrs"], dtype=float), train_lr))
    result = run_sweep(
        config,
        lrs=lrs,
        seeds=seeds,
        progress=progress_for(progress, "sweep"),
        observe=Observables(checkpoints=tuple(at)),
    )
    grid, measured = mean_imbalance(result)
    by_step: dict = {}
    series = [Series(grid.tolist(), measured.tolist(), "measured S", "points")]
    rng = np.random.default_rng(0)
    for done, t in enumerate(at):
        predictions, sharpness, per_seed_curves = [], [], []
        for seed in seeds:
            data, _ = seed_data(config, seed)
            theta = flat(result.checkpoints[t][0], trial_index(result, train_lr, seed))
            predicted, lam, curves = _predict_with_nulls(config, data, theta, grid, steps, rng=rng)
            predictions.append(predicted)
            sharpness.append(lam)
            per_seed_curves.append(curves)
        predicted = np.mean(predictions, axis=0)
        curves = {k: np.mean([c[k] for c in per_seed_curves], axis=0) for k in per_seed_curves[0]}
        by_step[str(t)] = _step_values(grid, measured, predicted, curves, sharpness)
        usable = grid < 2.0 / max(sharpness)
        series.append(
            Series(
                grid[usable].tolist(), predicted[usable].tolist(), f"Hessian at t={t}", "prediction"
            )
        )
        if progress is not None:
            progress(done + 1, len(at), "Hessians")
    values = {
        "train_lr": train_lr,
        "by_step": by_step,
        **{f"r_at_{t}": by_step[str(t)]["r"] for t in at},
        **{f"nulls_at_{t}": by_step[str(t)]["nulls"] for t in at},
        "best_step": int(max(at, key=lambda t: _nan_low(by_step[str(t)]["r"]))),
    }
    figures = {
        "s_prediction": log_log(
            Figure(
                f"S(η) predicted from the Hessian at step t (run at η = {train_lr:g})",
                "η",
                "S(η)",
                series,
            )
        ),
        "r_by_step": Figure(
            "correlation of predicted and measured ln S(η)",
            "step t of the Hessian",
            "R",
            [
                Series(at, [by_step[str(t)]["r"] for t in at], "R (ln S)", "line"),
                Series(
                    at,
                    [by_step[str(t)]["nulls"]["no_hessian"] for t in at],
                    "null: S ∝ 1/η",
                    "fit",
                ),
            ],
        ),
    }
    notes = [
        "R by step of the Hessian: "
        + ", ".join(
            f"t = {t}: {by_step[str(t)]['r']:.4f} (S_pred/S ≈ {by_step[str(t)]['scale']:.3g})"
            for t in at
        )
        + f" (λ_max {by_step[str(at[0])]['lambda_max']:.3g} → "
        f"{by_step[str(at[-1])]['lambda_max']:.3g})",
        "nulls on the same rates: S ∝ 1/η (no Hessian) R = "
        + ", ".join(f"{by_step[str(t)]['nulls']['no_hessian']:.4f}" for t in at[:1])
        + "; constant spectrum / random directions from the Hessian at t: "
        + ", ".join(
            f"t = {t}: {by_step[str(t)]['nulls']['constant_spectrum']:.4f} / "
            f"{by_step[str(t)]['nulls']['random_directions']:.4f}"
            for t in at
        ),
        "R: Pearson correlation of ln S_pred and ln S_measured over the η grid below 2/λ_max "
        "of the Hessian at t (r_linear: same on a linear scale); c_k from the gradient at t "
        "projected on the Hessian eigenvectors at t, normalised to |δ(t)|; T = "
        f"{steps} steps in the formula",
    ]
    return Outcome(values, figures, notes, time.perf_counter() - started)


def _nan_low(value: float) -> float:
    return -math.inf if value is None or not np.isfinite(value) else value

"""E16 ``hessian_time_prediction``: S(η) predicted from the Hessian at step t of a run."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import Observables, run_sweep
from lradvisor.engine.data import Dataset
from lradvisor.measure.hessian import dense_spectrum, flat_gradient
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
from lradvisor.theory import (
    gradient_imbalance_sum,
    mode_coefficients,
)


def _predict_from(
    config: ModelConfig, data: Dataset, theta: torch.Tensor, lrs: np.ndarray, steps: int
) -> tuple[np.ndarray, float]:
    """S(η) predicted from the Hessian and gradient at ``theta``; and λ_max there."""
    loss_fn = loss_function(config, data)
    spectrum = dense_spectrum(loss_fn, theta)
    gradient = flat_gradient(loss_fn, theta)
    delta = first_law_imbalance(config, data, gradient)
    modes = mode_coefficients(
        gradient.numpy(), spectrum.eigenvectors, spectrum.eigenvalues, delta0=delta
    )
    predicted = gradient_imbalance_sum(lrs, modes.eigenvalues, modes.coefficients, steps=steps)
    return predicted, spectrum.lambda_max


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
    for done, t in enumerate(at):
        predictions, sharpness = [], []
        for seed in seeds:
            data, _ = seed_data(config, seed)
            theta = flat(result.checkpoints[t][0], trial_index(result, train_lr, seed))
            predicted, lam = _predict_from(config, data, theta, grid, steps)
            predictions.append(predicted)
            sharpness.append(lam)
        predicted = np.mean(predictions, axis=0)
        bound = 2.0 / max(sharpness)
        usable = (grid < bound) & np.isfinite(predicted) & (predicted > 0)
        by_step[str(t)] = {
            "r": pearson(np.log(predicted[usable]), np.log(measured[usable])),
            "r_linear": pearson(predicted[usable], measured[usable]),
            "median_error": finite(
                np.median(np.abs(predicted[usable] - measured[usable]) / measured[usable])
            ),
            "lambda_max": float(np.mean(sharpness)),
            "lrs_used": int(usable.sum()),
        }
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
            [Series(at, [by_step[str(t)]["r"] for t in at], "R (ln S)", "line")],
        ),
    }
    notes = [
        "R by step of the Hessian: "
        + ", ".join(f"t = {t}: {by_step[str(t)]['r']:.4f}" for t in at)
        + f" (λ_max {by_step[str(at[0])]['lambda_max']:.3g} → "
        f"{by_step[str(at[-1])]['lambda_max']:.3g})",
        "R: Pearson correlation of ln S_pred and ln S_measured over the η grid below 2/λ_max "
        "of the Hessian at t (r_linear: same on a linear scale); c_k from the gradient at t "
        "projected on the Hessian eigenvectors at t, normalised to |δ(t)|; T = "
        f"{steps} steps in the formula",
    ]
    return Outcome(values, figures, notes, time.perf_counter() - started)


def _nan_low(value: float) -> float:
    return -math.inf if value is None or not np.isfinite(value) else value

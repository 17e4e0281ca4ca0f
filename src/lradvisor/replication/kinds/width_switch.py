"""E15 ``width_switch_rate``: per-neuron switch rate against width, below and at the EoS."""

from __future__ import annotations

import math
import time

import numpy as np

from lradvisor.config import ModelConfig
from lradvisor.engine.batched import Observables, SweepResult, run_sweep
from lradvisor.replication.kinds.common import (
    config_from,
    finite,
    flat,
    loss_function,
    lr_key,
    mean_switch_rate,
    progress_for,
    seed_data,
    sharpness,
    trial_index,
)
from lradvisor.replication.kinds.sweeps import deep_merge
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series


def _width_exponent(widths: np.ndarray, rates: np.ndarray) -> float:
    usable = np.isfinite(rates) & (rates > 0)
    if usable.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(widths[usable]), np.log(rates[usable]), 1)[0])


def _switch_by_width(
    protocol: dict, overrides: dict, progress: Progress | None, label: str
) -> tuple[dict, list[Series], list[str]]:
    """One variant of E15: switch rate per (η, width) and at each width's own EoS rate."""
    widths = np.asarray(protocol["widths"], dtype=int)
    lrs = np.asarray(protocol["lrs"], dtype=float)
    seeds = [int(s) for s in protocol["seeds"]]
    multiplier = float(protocol.get("eos_multiplier", 1.0))
    table = np.full((len(lrs), len(widths)), np.nan)
    at_eos = np.full(len(widths), np.nan)
    initial_sharpness, eos_lrs, final_sharpness = [], [], []
    for j, width in enumerate(widths):
        config = config_from(protocol, **deep_merge(overrides, {"model": {"hidden": [int(width)]}}))
        per_seed = []
        for seed in seeds:
            data, weights = seed_data(config, seed)
            per_seed.append(sharpness(loss_function(config, data), flat(weights)))
        initial_sharpness.append(float(np.mean(per_seed)))
        eos_lr = multiplier * 2.0 / initial_sharpness[-1]
        eos_lrs.append(eos_lr)
        steps = config.training.steps
        result = run_sweep(
            config,
            lrs=[*lrs, eos_lr],
            seeds=seeds,
            progress=progress_for(progress, f"{label} width {width}"),
            observe=Observables(switch_rate=True, checkpoints=(steps,)),
        )
        grid, rates = mean_switch_rate(result)
        table[:, j] = rates[np.searchsorted(grid, lrs)]
        at_eos[j] = rates[np.searchsorted(grid, eos_lr)]
        final_sharpness.append(_final_sharpness(config, result, float(lrs[-1]), seeds))
    sharpness_arr = np.array(initial_sharpness)
    exponents = [_width_exponent(widths, table[i]) for i in range(len(lrs))]
    top = len(lrs) - 1
    values = {
        "switch_rate": {
            lr_key(lr): {str(m): float(r) for m, r in zip(widths, table[i], strict=True)}
            for i, lr in enumerate(lrs)
        },
        "width_exponent": {lr_key(lr): finite(p) for lr, p in zip(lrs, exponents, strict=True)},
        "exponent_at_largest_lr": finite(exponents[top]),
        "cv_at_largest_lr": float(np.std(table[top]) / np.mean(table[top])),
        "largest_lr": float(lrs[top]),
        "switch_rate_at_eos": {str(m): float(r) for m, r in zip(widths, at_eos, strict=True)},
        "eos_lr": {str(m): float(lr) for m, lr in zip(widths, eos_lrs, strict=True)},
        "exponent_at_eos": finite(_width_exponent(widths, at_eos)),
        "cv_at_eos": float(np.std(at_eos) / np.mean(at_eos)),
        "lambda_max": {str(m): float(s) for m, s in zip(widths, sharpness_arr, strict=True)},
        "eos_fraction_at_largest_lr": {
            str(m): float(lrs[top] * s / 2) for m, s in zip(widths, sharpness_arr, strict=True)
        },
        "eos_fraction_final_at_largest_lr": {
            str(m): finite(lrs[top] * s / 2) for m, s in zip(widths, final_sharpness, strict=True)
        },
    }
    series = [
        *(
            Series(widths.tolist(), table[i].tolist(), f"{label}: η = {lr:g}", "line")
            for i, lr in enumerate(lrs)
        ),
        Series(widths.tolist(), at_eos.tolist(), f"{label}: η = {multiplier:g}·2/λ_max(m)", "line"),
    ]
    notes = [
        f"{label}: p = "
        + ", ".join(f"{p:.3f} at η = {lr:g}" for lr, p in zip(lrs, exponents, strict=True))
        + f", {values['exponent_at_eos']:.3f} at η = {multiplier:g}·2/λ_max(θ₀) of each width; "
        f"η·λ_max(θ₀)/2 at η = {lrs[top]:g}: "
        + ", ".join(
            f"m={m}: {lrs[top] * s / 2:.2f}" for m, s in zip(widths, sharpness_arr, strict=True)
        )
        + " at init, "
        + ", ".join(
            f"m={m}: {lrs[top] * s / 2:.2g}" for m, s in zip(widths, final_sharpness, strict=True)
        )
        + " at the last step (1 = at the EoS bound)"
    ]
    return values, series, notes


def _final_sharpness(
    config: ModelConfig, result: SweepResult, lr: float, seeds: list[int]
) -> float:
    """Seed-mean λ_max at the last step of the trials at ``lr`` (NaN if any diverged)."""
    steps = config.training.steps
    per_seed = []
    for seed in seeds:
        trial = trial_index(result, lr, seed)
        if result.diverged[trial]:
            return math.nan
        data, _ = seed_data(config, seed)
        theta = flat(result.checkpoints[steps][0], trial)
        per_seed.append(sharpness(loss_function(config, data), theta))
    return float(np.mean(per_seed))


def width_switch_rate(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """E15: switch rate per width and η; its width exponent p (rate ∝ m^p) at each η.

    Each variant (model overrides, e.g. the loss) runs every width at the protocol's η grid
    and at ``eos_multiplier`` × 2/λ_max(θ₀) of that width (seed-mean λ_max by Lanczos), the
    rate that is at the EoS at init for every width.
    """
    started = time.perf_counter()
    values: dict = {}
    series: list[Series] = []
    notes = [
        "switch rate averaged over the run and the seeds; exponent p of rate ∝ m^p fitted on "
        "log–log axes (docs/theory.md §6: ≈ −1/2 below the EoS, ≈ 0 at it)"
    ]
    for name, overrides in protocol.get("variants", {"default": {}}).items():
        values[name], variant_series, variant_notes = _switch_by_width(
            protocol, overrides or {}, progress, name
        )
        series += variant_series
        notes += variant_notes
    figure = Figure(
        "per-neuron switch rate vs width",
        "width m",
        "mean switch rate",
        series,
        logx=True,
        logy=True,
    )
    return Outcome(values, {"switch_vs_width": figure}, notes, time.perf_counter() - started)

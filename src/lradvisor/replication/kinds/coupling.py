"""E10 ``activation_coupling``: local drift exponent against the activation switch rate."""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import stats

from lradvisor.engine.batched import Observables, run_sweep
from lradvisor.replication.kinds.common import (
    config_from,
    finite,
    lr_key,
    mean_imbalance,
    mean_switch_rate,
    progress_for,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.theory import (
    fit_power_law,
    local_slope,
)


def activation_coupling(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """E10: local drift exponent α(η) against the mean Hamming distance of ReLU patterns.

    Rule for "α changes smoothly with coupling": the coupling (mean switch rate) rises with
    η at every step of the grid, and the local α between neighbouring η moves by at most
    ``max_alpha_step`` from one interval to the next (no jump, no sign of a transition).
    """
    started = time.perf_counter()
    config = config_from(protocol)
    lrs = np.asarray(protocol["lrs"], dtype=float)
    seeds = [int(s) for s in protocol["seeds"]]
    max_step = float(protocol.get("max_alpha_step", 0.25))
    result = run_sweep(
        config,
        lrs=lrs,
        seeds=seeds,
        progress=progress_for(progress, "sweep"),
        observe=Observables(switch_rate=True),
    )
    grid, imbalance = mean_imbalance(result)
    _, hamming = mean_switch_rate(result)
    alpha_local = 2.0 + local_slope(grid, imbalance)
    coupling_mid = np.sqrt(hamming[:-1] * hamming[1:])
    rising = bool(np.all(np.diff(hamming) > 0))
    jumps = np.abs(np.diff(alpha_local))
    largest = float(jumps.max()) if jumps.size else 0.0
    holds = rising and largest <= max_step
    reason = (
        f"switch rate {'rises' if rising else 'does not rise'} with η "
        f"({hamming[0]:.3g} → {hamming[-1]:.3g}); local α {alpha_local[0]:.3f} → "
        f"{alpha_local[-1]:.3f}, largest change between neighbouring intervals {largest:.3f} "
        f"({'≤' if largest <= max_step else '>'} {max_step})"
    )
    spearman = stats.spearmanr(coupling_mid, alpha_local).statistic if len(grid) > 2 else math.nan
    fit = fit_power_law(grid, np.abs(result.grid(result.imbalance_sum[:, 0] * result.lrs**2)[1]))
    values = {
        "hamming": {lr_key(lr): float(h) for lr, h in zip(grid, hamming, strict=True)},
        "imbalance_sum": {lr_key(lr): float(s) for lr, s in zip(grid, imbalance, strict=True)},
        "alpha_local": [float(a) for a in alpha_local],
        "coupling_at_interval": [float(c) for c in coupling_mid],
        "spearman_alpha_coupling": finite(spearman),
        "largest_alpha_step": largest,
        "alpha": fit.alpha,
        "smooth": {"holds": holds, "reason": reason},
    }
    figures = {
        "alpha_vs_coupling": Figure(
            "local drift exponent vs activation coupling",
            "mean switch rate (Hamming distance per step)",
            "local α",
            [Series(coupling_mid.tolist(), alpha_local.tolist(), "local α", "line")],
            logx=True,
        ),
        "switch_over_time": Figure(
            "activation switch rate during training",
            "step",
            "switch rate (seed mean)",
            [
                Series(
                    result.history_steps[:-1].tolist(),
                    np.nanmean(result.switch_rate[:-1, result.lrs == lr], axis=1).tolist(),
                    f"η = {lr:g}",
                    "line",
                )
                for lr in grid
            ],
            logy=True,
        ),
        "switch_vs_lr": Figure(
            "activation switch rate vs η",
            "η",
            "mean switch rate",
            [Series(grid.tolist(), hamming.tolist(), "switch rate", "line")],
            logx=True,
            logy=True,
        ),
    }
    notes = [
        "coupling: the engine's switch rate (fraction of (unit, sample) ReLU states flipping "
        "per step), averaged over the run and the seeds; local α = 2 + Δln S/Δln η between "
        "neighbouring rates, placed at the geometric mean of their switch rates",
        f"rule: coupling rises with η and local α moves ≤ {max_step} between neighbouring intervals",
    ]
    return Outcome(values, figures, notes, time.perf_counter() - started)

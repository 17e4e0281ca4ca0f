"""E18 ``hessian_evolution``: λ_max(t) under CE for several training-set sizes."""

from __future__ import annotations

import math
import time

import numpy as np

from lradvisor.engine.batched import Observables, run_sweep
from lradvisor.replication.kinds.common import (
    config_from,
    finite,
    flat,
    loss_function,
    seed_data,
    sharpness,
    trial_index,
)
from lradvisor.replication.kinds.modes import (
    decay_time,
)
from lradvisor.replication.outcome import Figure, Outcome, Progress, Series
from lradvisor.theory import (
    e_folding_time,
)


def hessian_evolution(protocol: dict, *, quick: bool, progress: Progress | None) -> Outcome:
    """E18: λ_max(t) at checkpoints of CE runs at ``lr`` for each n; fall factor and τ_λ.

    ``fall_factor`` is λ_max(0)/λ_max(fall_step), ``fall_factor_last`` the same to the last
    checkpoint (``fall_factor_range`` both); ``tau_exponent_n`` is the log–log slope of the
    e-folding time τ against n ("does not depend on n": |slope| ≤ 0.1, the rule for every
    "independent of x" claim).
    """
    started = time.perf_counter()
    lr = float(protocol["lr"])
    seeds = [int(s) for s in protocol["seeds"]]
    sizes = [int(n) for n in protocol["ns"]]
    base = config_from(protocol)
    at = sorted({int(t) for t in protocol["checkpoints"] if int(t) <= base.training.steps})
    fall_step = int(protocol.get("fall_step", at[-1]))
    fall_index = at.index(fall_step) if fall_step in at else len(at) - 1
    curves, per_n = {}, {}
    series = []
    for done, n in enumerate(sizes):
        config = config_from(protocol, data={"n": n})
        result = run_sweep(
            config, lrs=[lr], seeds=seeds, observe=Observables(checkpoints=tuple(at))
        )
        trajectory = np.full((len(seeds), len(at)), np.nan)
        for s, seed in enumerate(seeds):
            data, _ = seed_data(config, seed)
            loss_fn = loss_function(config, data)
            for i, t in enumerate(at):
                theta = flat(result.checkpoints[t][0], trial_index(result, lr, seed))
                trajectory[s, i] = sharpness(loss_fn, theta)
        curve = trajectory.mean(axis=0)
        steps_arr = np.array(at, dtype=float)
        curves[n] = curve
        per_n[str(n)] = {
            "lambda_initial": float(curve[0]),
            "lambda_final": float(curve[-1]),
            "fall_factor": float(curve[0] / curve[fall_index]),
            "fall_factor_last": float(curve[0] / curve[-1]),
            "tau_efold": finite(e_folding_time(steps_arr, curve)),
            "tau_fit": finite(decay_time(steps_arr, curve, start=0)),
            "curve": [float(v) for v in curve],
        }
        series.append(Series(at, curve.tolist(), f"n = {n}", "line"))
        if progress is not None:
            progress(done + 1, len(sizes), f"n = {n}")
    taus = np.array([per_n[str(n)]["tau_efold"] or math.nan for n in sizes])
    falls = np.array([per_n[str(n)]["fall_factor"] for n in sizes])
    falls_last = np.array([per_n[str(n)]["fall_factor_last"] for n in sizes])
    values = {
        "by_n": per_n,
        "steps": at,
        "lambda_initial": float(np.mean([per_n[str(n)]["lambda_initial"] for n in sizes])),
        "lambda_final": float(np.mean([per_n[str(n)]["lambda_final"] for n in sizes])),
        "lambda_at_fall_step": float(np.mean([curves[n][fall_index] for n in sizes])),
        "fall_step": at[fall_index],
        "fall_factor": float(np.mean(falls)),
        "fall_factor_last": float(np.mean(falls_last)),
        "tau_spread": finite(taus.max() / taus.min()) if np.isfinite(taus).all() else None,
        "tau_by_n": [finite(t) for t in taus],
        "tau_exponent_n": _log_slope(np.array(sizes, dtype=float), taus),
        "fall_factor_range": [float(np.mean(falls)), float(np.mean(falls_last))],
    }
    figure = Figure(f"λ_max(t) under CE at η = {lr:g}", "step", "λ_max", series, logy=True)
    notes = [
        "λ_max by Lanczos (double-backward HVP, relative residual 1e-5) at each checkpoint, "
        f"averaged over seeds; fall factor = λ_max(0)/λ_max(t = {at[fall_index]}) "
        f"({np.mean(falls):.3g}×; to t = {at[-1]}: {np.mean(falls_last):.3g}×); τ_efold = steps "
        "to fall by a factor e (interpolated); tau_spread = max/min τ_efold over n "
        "(1 = decay rate independent of n)",
    ]
    return Outcome(values, {"lambda_max": figure}, notes, time.perf_counter() - started)


def _log_slope(x: np.ndarray, y: np.ndarray) -> float | None:
    """Slope of ln y against ln x (None with < 2 usable points)."""
    usable = np.isfinite(y) & (y > 0)
    if usable.sum() < 2:
        return None
    return float(np.polyfit(np.log(x[usable]), np.log(y[usable]), 1)[0])

"""E5 sweep: batched engine versus the same trials one at a time in a plain PyTorch loop.

Both sides measure the conservation law (the loop with ConservationMonitor, as a user
would), both run on the same threads, and the ratio is measured in this one run.

    python benchmarks/bench_engine.py            # full E5: 10 η × 5 seeds × 2000 steps
    python benchmarks/bench_engine.py --json     # one JSON line as well
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lradvisor.config import load_config
from lradvisor.engine.batched import run_sweep
from lradvisor.engine.reference import run_reference_trial
from lradvisor.theory import fit_power_law


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="examples/e5.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="batched runs (the median is reported)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.model)

    run_sweep(config, steps=20)  # warm-up: allocator, kernels
    batched_times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = run_sweep(config)
        batched_times.append(time.perf_counter() - started)
    batched = float(np.median(batched_times))

    started = time.perf_counter()
    loop_drift = []
    for lr in config.sweep.lrs:
        for seed in config.sweep.seeds:
            loop_drift.append(run_reference_trial(config, lr, seed).drift_identity[0])
    loop = time.perf_counter() - started

    lrs, table = result.grid(np.abs(result.drift(0)))
    fit = fit_power_law(lrs, table)
    loop_table = np.abs(np.array(loop_drift)).reshape(
        len(config.sweep.lrs), len(config.sweep.seeds)
    )
    agreement = float(np.max(np.abs(loop_table - table) / np.abs(table)))
    summary = {
        "benchmark": "engine_e5",
        "trials": result.n_trials,
        "steps": result.steps,
        "threads": args.threads,
        "batched_s": batched,
        "batched_runs_s": batched_times,
        "loop_s": loop,
        "speedup": loop / batched,
        "alpha": fit.alpha,
        "r2": fit.r2,
        "max_rel_drift_diff_loop_vs_batched": agreement,
    }
    print(f"E5 sweep, {result.n_trials} trials × {result.steps} steps, {args.threads} threads")
    print(f"  per-trial PyTorch loop + monitor : {loop:8.2f} s")
    print(f"  batched engine (median of {args.repeats})  : {batched:8.2f} s   {batched_times}")
    print(f"  speed-up                         : {loop / batched:8.1f}×   (target ≥ 10×, aim 15×)")
    print(
        f"  α = {fit.alpha:.4f}, R² = {fit.r2:.4f}; loop vs batched drift max rel diff {agreement:.1e} (float32)"
    )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

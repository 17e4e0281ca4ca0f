"""CPU cost of the Optuna plugin (TrialMonitor + ConservationPruner) on a digits CNN study.

The same study twice, in one process, alternating which goes first over ``--repeats``
rounds: 16 trials of a small CNN on scikit-learn's digits (SGD momentum 0.9, batch 64,
300 steps, the validation loss reported every 30 steps) with the learning rates and channel
counts fixed in advance (enqueued), on SQLite storage in a temporary folder as a user would:

* ``plain``: ``trial.report`` / ``trial.should_prune`` under ``NopPruner``;
* ``monitored``: ``TrialMonitor(data=…)`` + ``monitor.observe()`` every step +
  ``monitor.report`` under ``ConservationPruner(NopPruner())``.

Both prune nothing (rates below the bound, no divergence), so they train exactly the same
steps and the difference is the plugin: λ_max(θ₀) once per channel count, the per-step
gradient sums, the user_attrs written at each report. Reported: process CPU seconds per
study (median over rounds) and their ratio (target ≤ 1.10).

    python benchmarks/bench_plugin_overhead.py [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_study import SmallCNN, dataset, validation_loss

STEPS = 300
REPORT_EVERY = 30
BATCH = 64
TRIALS = [{"lr": lr, "width": width} for width in (4, 8, 16, 32) for lr in (0.003, 0.01, 0.03, 0.1)]
TARGET = 1.10


def objective(trial: optuna.Trial, monitored: bool) -> float:
    X, y, X_val, y_val = dataset("digits")
    params = {
        "lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
        "width": trial.suggest_int("width", 2, 64),
    }
    torch.manual_seed(trial.number)
    model = SmallCNN(params["width"])
    optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=0.9)
    monitor = None
    if monitored:
        from lradvisor.optuna import TrialMonitor

        monitor = TrialMonitor(trial, model, optimizer, data=(X, y))
        if monitor.should_prune():
            raise optuna.TrialPruned()
    batches = torch.Generator().manual_seed(trial.number)
    for step in range(STEPS):
        if step and step % REPORT_EVERY == 0:
            value = validation_loss(model, X_val, y_val)
            if monitor is not None:
                monitor.report(value, step)
            else:
                trial.report(value, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        rows = torch.randint(len(X), (BATCH,), generator=batches)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X[rows]), y[rows]).backward()
        if monitor is not None:
            monitor.observe()
        optimizer.step()
    if monitor is not None:
        monitor.finish()
    return validation_loss(model, X_val, y_val)


def study_cpu(monitored: bool, folder: Path, name: str) -> tuple[float, int]:
    """(process CPU seconds, pruned trials) of one whole study."""
    if monitored:
        from lradvisor.optuna import ConservationPruner

        pruner = ConservationPruner(optuna.pruners.NopPruner())
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{folder / (name + '.db')}", pruner=pruner
    )
    for params in TRIALS:
        study.enqueue_trial(params)
    started = time.process_time()
    study.optimize(lambda trial: objective(trial, monitored), n_trials=len(TRIALS))
    cpu = time.process_time() - started
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return cpu, pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    dataset("digits")
    cpu: dict[str, list[float]] = {"plain": [], "monitored": []}
    pruned = {"plain": 0, "monitored": 0}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):
            order = ("plain", "monitored") if round_ % 2 == 0 else ("monitored", "plain")
            for kind in order:
                seconds, count = study_cpu(kind == "monitored", Path(folder), f"{kind}-{round_}")
                cpu[kind].append(seconds)
                pruned[kind] += count
    plain, monitored = statistics.median(cpu["plain"]), statistics.median(cpu["monitored"])
    ratios = [m / p for m, p in zip(cpu["monitored"], cpu["plain"], strict=True)]
    result = {
        "trials": len(TRIALS),
        "steps": STEPS,
        "plain_cpu_s": cpu["plain"],
        "monitored_cpu_s": cpu["monitored"],
        "ratio_median": monitored / plain,
        "ratio_per_round": ratios,
        "pruned": pruned,
        "target": TARGET,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"digits CNN study, {len(TRIALS)} trials × {STEPS} steps, SQLite storage, {args.repeats} rounds"
    )
    print(
        f"  plain      CPU {plain:7.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in cpu['plain'])})"
    )
    print(
        f"  monitored  CPU {monitored:7.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in cpu['monitored'])})"
    )
    print(
        f"  ratio {monitored / plain:.3f} (per round {', '.join(f'{r:.3f}' for r in ratios)}); pruned {pruned}"
    )
    print(f"  target ≤ {TARGET}: {'met' if monitored / plain <= TARGET else 'not met'}")


if __name__ == "__main__":
    main()

"""CPU cost of the Optuna plugin (TrialMonitor + ConservationPruner) on a digits CNN study.

The same study twice, in one process, alternating which goes first over ``--repeats``
rounds: 16 trials of a small CNN on scikit-learn's digits (SGD momentum 0.9, batch 64,
300 steps, the validation loss reported every 30 steps) with the learning rates and channel
counts fixed in advance (enqueued), on SQLite storage in a temporary folder as a user would:

* ``plain``: ``trial.report`` / ``trial.should_prune`` under ``NopPruner``;
* ``monitored``: ``TrialMonitor(data=…)`` + ``monitor.observe()`` every step +
  ``monitor.report`` under ``ConservationPruner(NopPruner())``;
* ``width-law``: the same with ``TrialMonitor(…, width=width)``, as the README asks of a
  study that searches width: once three channel counts are measured, λ_max(θ₀) of a new one
  is predicted by the width law (here the 4th, 32 channels; every 3rd prediction is
  measured anyway to check it).

Both prune nothing (rates below the bound, no divergence), so they train exactly the same
steps and the difference is the plugin: λ_max(θ₀) once per channel count (or its width-law
prediction), the per-step call, the user_attrs written at reports 1, 2, 4, 8 and at the end.
Reported: process CPU seconds per study (median over rounds) and each monitored kind's
ratio to ``plain`` (target ≤ 1.10).

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


#: CPU seconds spent in the calls that differ between the kinds, per study: every
#: TrialMonitor call for the monitored kinds; ``trial.report`` + ``trial.should_prune`` for
#: ``plain`` (what ``monitor.report`` does for it). Their difference is the plugin's own CPU,
#: read without the noise of the whole study's CPU (±15 % between rounds on this machine).
SEGMENTS = [0.0]


def _timed(call, *args, **kwargs):
    started = time.process_time()
    try:
        return call(*args, **kwargs)
    finally:
        SEGMENTS[0] += time.process_time() - started


def _plain_report(trial: optuna.Trial, value: float, step: int) -> None:
    trial.report(value, step)
    if trial.should_prune():
        raise optuna.TrialPruned()


def _start_monitor(trial, model, optimizer, data, width):
    from lradvisor.optuna import TrialMonitor

    monitor = TrialMonitor(trial, model, optimizer, data=data, width=width)
    if monitor.should_prune():
        raise optuna.TrialPruned()
    return monitor


def objective(trial: optuna.Trial, kind: str) -> float:
    X, y, X_val, y_val = dataset("digits")
    params = {
        "lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
        "width": trial.suggest_int("width", 2, 64),
    }
    torch.manual_seed(trial.number)
    model = SmallCNN(params["width"])
    optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=0.9)
    monitor = None
    if kind != "plain":
        width = params["width"] if kind == "width-law" else None
        monitor = _timed(_start_monitor, trial, model, optimizer, (X, y), width)
    batches = torch.Generator().manual_seed(trial.number)
    for step in range(STEPS):
        if step and step % REPORT_EVERY == 0:
            value = validation_loss(model, X_val, y_val)
            if monitor is not None:
                _timed(monitor.report, value, step)
            else:
                _timed(_plain_report, trial, value, step)
        rows = torch.randint(len(X), (BATCH,), generator=batches)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X[rows]), y[rows]).backward()
        if monitor is not None:
            _timed(monitor.observe)
        optimizer.step()
    if monitor is not None:
        _timed(monitor.finish)
    return validation_loss(model, X_val, y_val)


KINDS = ("plain", "monitored", "width-law")


def study_cpu(kind: str, folder: Path, name: str) -> tuple[float, float, int]:
    """(process CPU seconds, of them in SEGMENTS, pruned trials) of one whole study."""
    if kind != "plain":
        from lradvisor.optuna import ConservationPruner

        pruner = ConservationPruner(optuna.pruners.NopPruner())
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{folder / (name + '.db')}", pruner=pruner
    )
    for params in TRIALS:
        study.enqueue_trial(params)
    SEGMENTS[0] = 0.0
    started = time.process_time()
    study.optimize(lambda trial: objective(trial, kind), n_trials=len(TRIALS))
    cpu = time.process_time() - started
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return cpu, SEGMENTS[0], pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    dataset("digits")
    cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
    segments: dict[str, list[float]] = {kind: [] for kind in KINDS}
    pruned = dict.fromkeys(KINDS, 0)
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):
            shift = round_ % len(KINDS)  # each kind goes first, second and last in turn
            for kind in KINDS[shift:] + KINDS[:shift]:
                seconds, inside, count = study_cpu(kind, Path(folder), f"{kind}-{round_}")
                cpu[kind].append(seconds)
                segments[kind].append(inside)
                pruned[kind] += count
    median = {kind: statistics.median(values) for kind, values in cpu.items()}
    ratios = {
        kind: [m / p for m, p in zip(cpu[kind], cpu["plain"], strict=True)] for kind in KINDS[1:]
    }
    # The plugin's own CPU, paired within a round, over that round's plain study.
    attributed = {
        kind: [
            (p + m - q) / p
            for p, m, q in zip(cpu["plain"], segments[kind], segments["plain"], strict=True)
        ]
        for kind in KINDS[1:]
    }
    result = {
        "trials": len(TRIALS),
        "steps": STEPS,
        **{f"{kind}_cpu_s": cpu[kind] for kind in KINDS},
        **{f"ratio_median_{kind}": median[kind] / median["plain"] for kind in KINDS[1:]},
        **{f"ratio_per_round_{kind}": ratios[kind] for kind in KINDS[1:]},
        **{f"segments_cpu_s_{kind}": segments[kind] for kind in KINDS},
        **{
            f"attributed_ratio_median_{kind}": statistics.median(attributed[kind])
            for kind in KINDS[1:]
        },
        "pruned": pruned,
        "target": TARGET,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"digits CNN study, {len(TRIALS)} trials × {STEPS} steps, SQLite storage, {args.repeats} rounds"
    )
    for kind in KINDS:
        rounds = ", ".join(f"{v:.2f}" for v in cpu[kind])
        print(f"  {kind:<10} CPU {median[kind]:7.2f} s  (rounds: {rounds})")
    for kind in KINDS[1:]:
        ratio = median[kind] / median["plain"]
        per_round = ", ".join(f"{r:.3f}" for r in ratios[kind])
        verdict = "met" if ratio <= TARGET else "not met"
        print(
            f"  {kind:<10} ratio {ratio:.3f} (per round {per_round}); target ≤ {TARGET}: {verdict}"
        )
        own = statistics.median(attributed[kind])
        spread = f"{min(attributed[kind]):.3f}–{max(attributed[kind]):.3f}"
        verdict = "met" if own <= TARGET else "not met"
        print(
            f"  {kind:<10} plugin's own CPU: ratio {own:.3f} (rounds {spread}; "
            f"{statistics.median(segments[kind]):.2f} s in its calls vs "
            f"{statistics.median(segments['plain']):.2f} s in plain report/should_prune); "
            f"target: {verdict}"
        )
    print(f"  pruned {pruned}")


if __name__ == "__main__":
    main()

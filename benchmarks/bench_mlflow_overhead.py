"""Overhead of MLflow logging on 2000-step trials, with MLflow's default local store (SQLite).

The same study-file trials (digits MLP 64-128-128-10, mini-batch 64, 2000 steps, a report
every 25 steps: 80 reports, each with loss, drift per law, prediction and S partial sums)
run twice per repeat in alternating order: plainly, and with
:class:`~lradvisor.integrations.mlflow.MLflowCallback` logging into a
``sqlite:///…/mlflow.db`` in a temp folder (experiment, parent run, one nested run per trial
with every step metric). The ratio is over runs into an existing store (a project's second
study onwards); the first use of a new store, which creates its tables, is reported apart. The logged time includes waiting, after the last trial, until
every payload is in the store (``callback.flush()``), and the first-use cost of the store
(creating its tables) — nothing is left to happen after the clock stops. Sending runs in
a child process, so what a trial pays is its callback (~3 ms: the payload written to the
spool) and, once per study, the wait for the last trial's run to reach the store (~50 ms
for ~900 metric points); the fewer the trials, the more that wait weighs. The parent run's
summary (α fit, figures) is a per-study cost and is timed separately.

    python benchmarks/bench_mlflow_overhead.py [--json] [--repeats 3] [--trials 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch

from lradvisor.studies.objective import StudyObjective
from lradvisor.studies.schema import parse_study

TARGET_RATIO = 1.05
STEPS = 2000
STUDY = {
    "name": "mlflow-overhead",
    "model": {
        "model": {"hidden": [128, 128]},
        "data": {"source": "sklearn", "name": "digits", "validation_fraction": 0.2},
        "training": {"loss": "ce", "batch_size": 64, "dtype": "float32"},
    },
    "search_space": {"lr": {"type": "float", "low": 0.02, "high": 0.2, "log": True}},
    "metric": "val_loss",
    "budget": {"n_trials": 2, "steps": STEPS, "report_every": 25, "seed": 0},
    "sampler": {"type": "random"},
    "pruner": {"type": "none"},
}


def _run(trials: int, *, logged: bool, folder: Path) -> dict[str, float]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_study(STUDY, file="<benchmark>")
    objective = StudyObjective(spec)
    study = optuna.create_study(
        study_name=f"overhead-{time.time_ns()}",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.NopPruner(),
    )
    callbacks = []
    if logged:
        from lradvisor.integrations.mlflow import MLflowCallback

        store = folder / "store"
        store.mkdir(exist_ok=True)
        callback = MLflowCallback(f"sqlite:///{store / 'mlflow.db'}", spool=store / "spool")
        callbacks.append(callback)
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials, callbacks=callbacks)
    numbers = {}
    if logged:
        result = callback.flush()
        assert result.pending == 0, result.errors
    numbers["trials"] = time.perf_counter() - started
    if logged:
        summary_started = time.perf_counter()
        callback.finish(study)
        numbers["summary"] = time.perf_counter() - summary_started
        numbers["points"] = _points(store / "mlflow.db", study.study_name)
    return numbers


def _points(database: Path, experiment: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{database}")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    return sum(
        len(client.get_metric_history(run.info.run_id, key))
        for run in runs
        for key in run.data.metrics
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the logging thread gets the other core, as on a 2-core laptop
    plain, logged, summaries, points = [], [], [], 0
    with tempfile.TemporaryDirectory() as folder:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        # First use of a new store (tables created), then the store as every later study
        # of a project finds it.
        cold = _run(args.trials, logged=True, folder=Path(folder))["trials"]
        cold_plain = _run(args.trials, logged=False, folder=Path(folder))["trials"]
        for repeat in range(args.repeats):
            order = (False, True) if repeat % 2 == 0 else (True, False)
            for with_logging in order:
                numbers = _run(args.trials, logged=with_logging, folder=Path(folder))
                (logged if with_logging else plain).append(numbers["trials"])
                if with_logging:
                    summaries.append(numbers["summary"])
                    points = int(numbers["points"])
    ratio = statistics.median(logged) / statistics.median(plain)
    report = {
        "trials_per_run": args.trials,
        "steps_per_trial": STEPS,
        "metric_points_logged": points,
        "plain_seconds": plain,
        "logged_seconds": logged,
        "summary_seconds": summaries,
        "ratio": ratio,
        "cold_store_seconds": cold,
        "cold_plain_seconds": cold_plain,
        "cold_ratio": cold / cold_plain,
        "target": TARGET_RATIO,
        "pass": ratio <= TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.trials} trials × {STEPS} steps, {points} metric points logged per run\n"
        f"plain  {statistics.median(plain):7.2f} s (median of {args.repeats}: "
        + ", ".join(f"{t:.2f}" for t in plain)
        + ")\n"
        f"MLflow {statistics.median(logged):7.2f} s (median of {args.repeats}: "
        + ", ".join(f"{t:.2f}" for t in logged)
        + ")\n"
        f"ratio  {ratio:.3f} (target ≤ {TARGET_RATIO}: {'PASS' if ratio <= TARGET_RATIO else 'FAIL'})\n"
        f"first use of a new store (creates its tables): {cold:.2f} s vs {cold_plain:.2f} s "
        f"plain = {cold / cold_plain:.3f}\n"
        f"study summary (α fit, 4 figures; once per study): "
        f"{statistics.median(summaries):.2f} s"
    )


if __name__ == "__main__":
    main()

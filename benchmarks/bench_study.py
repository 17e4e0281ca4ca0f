"""Study efficiency: training steps an Optuna study needs, with and without lradvisor.

Three tasks (scikit-learn digits, the Gaussian mixture of ``lradvisor.engine.data``,
scikit-learn breast_cancer), each an MLP d → hidden → K (ReLU, biases) trained by mini-batch
SGD (batch 64, ``STEPS`` steps) to minimise the validation cross-entropy, searching the
learning rate (log 1e-3 … 10), the hidden width (log 16 … 256) and the momentum (0, 0.5,
0.9), the validation loss reported every ``REPORT_EVERY`` steps from step 0 on. Every
method gets the same trial budget per study and the same TPE sampler seed:

=====================  ================================================================
``tpe``                TPESampler, no pruning (the reference)
``median``             TPE + MedianPruner(n_warmup_steps=REPORT_EVERY)
``hyperband``          TPE + HyperbandPruner(min_resource=REPORT_EVERY,
                       max_resource=STEPS, reduction_factor=3)
``prior+median``       TheoryPriorSampler + MedianPruner, no monitor (ablation: the
                       prior alone)
``lradvisor``          TheoryPriorSampler.from_advice(advise(task config)) + TrialMonitor
                       + ConservationPruner(MedianPruner(n_warmup_steps=REPORT_EVERY))
``lradvisor-nodrift``  the same with ``drift_factor=None`` (no drift check)
=====================  ================================================================

The mixture (n = 1000, d = 20, K = 5) uses separation 0.6 rather than the paper's 2: its
classes overlap, so the validation loss has an optimum inside the learning-rate range as on
real data (at separation 2 every stable run drives it towards 0). ``advise`` runs once per
task, on a config with the searched model at width 64 and plain SGD (momentum 0, the
setting the theory covers); the prior it gives is for the learning rate alone. The median
rule never prunes on the step-0 (untrained) loss: every trial starts near ln K, and pruning
there would be a coin toss that costs nothing.

Cost is counted in training steps: a completed or failed (NaN) trial costs ``STEPS``, a
pruned one the steps it ran before the report that pruned it (0 when pruned at step 0,
e.g. beyond the stability bound). For every study the curve is the best completed value
against cumulative steps. Headline, per task and seed: plain TPE's best value after all its
trials is the target, and each method's cost is the fraction of plain TPE's total steps
it spent until its own best first reached the target (inf if never). A task PASSes when
lradvisor's median fraction over seeds is at most ``TARGET_FRACTION`` and its median curve
is nowhere worse than MedianPruner's and Hyperband's by more than ``CURVE_TOLERANCE`` at
the printed budgets. Trials the drift check pruned are retrained to the end with the same
initialisation and batches, to show what it threw away.

    python benchmarks/bench_study.py [--quick] [--seeds 5] [--n-trials 64] [--workers 2]
        [--json FILE]

``--quick``: 3 seeds, 32 trials per study; its numbers are not comparable with a full run.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import platform
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from lradvisor.advisor import advise
from lradvisor.config import ModelConfig, parse_config
from lradvisor.engine.data import Dataset, load_shared_dataset, mixture_dataset
from lradvisor.integrations.optuna import ConservationPruner, TheoryPriorSampler, TrialMonitor
from lradvisor.records import Advice

TASKS: dict[str, dict[str, Any]] = {
    "digits": {"source": "sklearn", "name": "digits"},
    "gaussian_mixture": {
        "source": "gaussian_mixture",
        "n": 1000,
        "dim": 20,
        "classes": 5,
        "separation": 0.6,
    },
    "breast_cancer": {"source": "sklearn", "name": "breast_cancer"},
}
VALIDATION_FRACTION = 0.2
MIXTURE_SEED = 0
STEPS = 300
REPORT_EVERY = 30
BATCH_SIZE = 64
LR_RANGE = (1e-3, 10.0)
HIDDEN_RANGE = (16, 256)
MOMENTA = (0.0, 0.5, 0.9)
ADVICE_WIDTH = 64
N_PRIOR_TRIALS = 10
PRIOR_SIGMA = 0.5
HYPERBAND_REDUCTION = 3

METHODS = ("tpe", "median", "hyperband", "prior+median", "lradvisor", "lradvisor-nodrift")
PRIOR_METHODS = frozenset({"prior+median", "lradvisor", "lradvisor-nodrift"})
MONITORED_METHODS = frozenset({"lradvisor", "lradvisor-nodrift"})
LRADVISOR_METHODS = ("lradvisor", "lradvisor-nodrift")
CURVE_RIVALS = ("median", "hyperband")
BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # fractions of plain TPE's total steps
TARGET_FRACTION = 0.30
CURVE_TOLERANCE = 0.02
RUNS = {"full": {"seeds": 5, "n_trials": 64}, "quick": {"seeds": 3, "n_trials": 32}}
KEY_PRUNE_REASON = "lradvisor.prune_reason"
KEY_PRIOR = "lradvisor.prior"


# ------------------------------------------------------------------------------- tasks


def task_config(task: str) -> ModelConfig:
    """The task as a model file: what ``advise`` is asked about (width 64, plain SGD)."""
    return parse_config(
        {
            "name": task,
            "model": {"hidden": [ADVICE_WIDTH], "activation": "relu", "bias": True},
            "data": {**TASKS[task], "validation_fraction": VALIDATION_FRACTION},
            "training": {"loss": "ce", "batch_size": BATCH_SIZE, "steps": STEPS},
            "sweep": {"seeds": [0, 1]},
        },
        file=f"<bench_study:{task}>",
    )


@functools.cache
def task_data(task: str) -> Dataset:
    """Standardised sklearn sets / the mixture drawn after ``torch.manual_seed``; 80/20 split."""
    config = task_config(task)
    if config.data.source == "gaussian_mixture":
        torch.manual_seed(MIXTURE_SEED)
        return mixture_dataset(config.data, dtype=torch.float32)
    return load_shared_dataset(config, dtype=torch.float32)


def validation_loss(model: nn.Module, data: Dataset) -> float:
    with torch.no_grad():
        return nn.functional.cross_entropy(model(data.X_val), data.y_val).item()


def train(
    data: Dataset,
    params: dict[str, Any],
    *,
    init_seed: int,
    trial: optuna.Trial | None = None,
    monitored: bool = False,
) -> float:
    """Train one MLP; with ``trial``, report every REPORT_EVERY steps (may raise TrialPruned)."""
    torch.manual_seed(init_seed)
    model = nn.Sequential(
        nn.Linear(data.dim, params["hidden"]), nn.ReLU(), nn.Linear(params["hidden"], data.classes)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])
    monitor = TrialMonitor(trial, model, optimizer, data=(data.X, data.y)) if monitored else None
    batches = torch.Generator().manual_seed(init_seed)
    for step in range(STEPS):
        if trial is not None and step % REPORT_EVERY == 0:
            _report(trial, monitor, step, validation_loss(model, data))
        rows = torch.randint(data.n, (BATCH_SIZE,), generator=batches)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.X[rows]), data.y[rows]).backward()
        if monitor is not None:
            monitor.observe()
        optimizer.step()
    return validation_loss(model, data)


def _report(trial: optuna.Trial, monitor: TrialMonitor | None, step: int, value: float) -> None:
    if monitor is not None:
        monitor.report(step, value)
        return
    trial.report(value, step)
    if trial.should_prune():
        raise optuna.TrialPruned()


def _init_seed(study_seed: int, trial_number: int) -> int:
    return 10_000 * study_seed + trial_number


# ------------------------------------------------------------------------------ studies


def _sampler(method: str, seed: int, advice: Advice) -> optuna.samplers.BaseSampler:
    tpe = optuna.samplers.TPESampler(seed=seed)
    if method not in PRIOR_METHODS:
        return tpe
    return TheoryPriorSampler.from_advice(
        advice, base=tpe, n_prior_trials=N_PRIOR_TRIALS, sigma=PRIOR_SIGMA, seed=seed
    )


def _pruner(method: str) -> optuna.pruners.BasePruner:
    if method == "tpe":
        return optuna.pruners.NopPruner()
    if method == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=REPORT_EVERY, max_resource=STEPS, reduction_factor=HYPERBAND_REDUCTION
        )
    median = optuna.pruners.MedianPruner(n_warmup_steps=REPORT_EVERY)
    if method == "lradvisor":
        return ConservationPruner(median)
    if method == "lradvisor-nodrift":
        return ConservationPruner(median, drift_factor=None)
    return median


def _steps_spent(trial: optuna.trial.FrozenTrial) -> int:
    if trial.state == optuna.trial.TrialState.PRUNED:
        return int(trial.last_step or 0)
    return STEPS


def _trial_record(trial: optuna.trial.FrozenTrial, method: str) -> dict[str, Any]:
    pruned = trial.state == optuna.trial.TrialState.PRUNED
    reason = trial.user_attrs.get(KEY_PRUNE_REASON)
    if pruned and reason is None:
        reason = method
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "steps": _steps_spent(trial),
        "params": trial.params,
        "prune_reason": reason if pruned else None,
        "pruned_value": trial.intermediate_values.get(trial.last_step) if pruned else None,
        "prior": bool(trial.user_attrs.get(KEY_PRIOR, False)),
    }


def curve(trials: list[dict[str, Any]]) -> list[list[float]]:
    """[cumulative steps, best completed value so far] after every trial, in trial order."""
    points, spent, best = [], 0, math.inf
    for trial in trials:
        spent += trial["steps"]
        if trial["state"] == "COMPLETE" and trial["value"] is not None:
            best = min(best, trial["value"])
        points.append([spent, best])
    return points


def run_study(task: str, seed: int, method: str, advice: Advice, n_trials: int) -> dict:
    """One study; returns its trials, curve and wall time (run in a worker process)."""
    _quiet_worker()
    data = task_data(task)
    monitored = method in MONITORED_METHODS

    def objective(trial: optuna.Trial) -> float:
        params = {
            "lr": trial.suggest_float("lr", *LR_RANGE, log=True),
            "hidden": trial.suggest_int("hidden", *HIDDEN_RANGE, log=True),
            "momentum": trial.suggest_categorical("momentum", MOMENTA),
        }
        init_seed = _init_seed(seed, trial.number)
        return train(data, params, init_seed=init_seed, trial=trial, monitored=monitored)

    study = optuna.create_study(
        study_name=f"{task}-{seed}-{method}",
        sampler=_sampler(method, seed, advice),
        pruner=_pruner(method),
    )
    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    wall = time.perf_counter() - start
    trials = [_trial_record(trial, method) for trial in study.trials]
    for trial in trials:
        if trial["prune_reason"] == "drift_off_prediction":
            # What the drift check threw away: the same run, trained to the end.
            trial["value_if_trained"] = train(
                data, trial["params"], init_seed=_init_seed(seed, trial["number"])
            )
    return {
        "task": task,
        "seed": seed,
        "method": method,
        "trials": trials,
        "curve": curve(trials),
        "wall_s": wall,
    }


def run_advice(task: str) -> tuple[str, Advice, float]:
    _quiet_worker()
    start = time.perf_counter()
    advice = advise(task_config(task))
    return task, advice, time.perf_counter() - start


def _quiet_worker() -> None:
    torch.set_num_threads(1)  # tiny models: a second thread only adds OpenMP barriers
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", message=".*breaks the η²·S identity.*")


# ---------------------------------------------------------------------------- analysis


def steps_to_reach(points: list[list[float]], target: float) -> float:
    """Cumulative steps at which the best value first reaches ``target`` (inf if never)."""
    for spent, best in points:
        if best <= target:
            return float(spent)
    return math.inf


def best_within(points: list[list[float]], budget: float) -> float:
    """Best completed value of the trials finished within ``budget`` cumulative steps."""
    values = [best for spent, best in points if spent <= budget]
    return values[-1] if values else math.inf


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def analyse(task: str, studies: dict[tuple[int, str], dict], seeds: list[int]) -> dict:
    """Headline fractions, budget curves and verdicts of one task."""
    fractions: dict[str, list[float]] = {method: [] for method in METHODS}
    targets, budget_bests = [], {method: {b: [] for b in BUDGETS} for method in METHODS}
    for seed in seeds:
        reference = studies[(seed, "tpe")]["curve"]
        total, target = reference[-1][0], reference[-1][1]
        targets.append(target)
        for method in METHODS:
            points = studies[(seed, method)]["curve"]
            fractions[method].append(steps_to_reach(points, target) / total)
            for budget in BUDGETS:
                budget_bests[method][budget].append(best_within(points, budget * total))
    medians = {m: _median(fractions[m]) for m in METHODS}
    median_curves = {m: {b: _median(budget_bests[m][b]) for b in BUDGETS} for m in METHODS}
    verdicts = {m: _verdict(m, medians, median_curves) for m in LRADVISOR_METHODS}
    return {
        "task": task,
        "targets": targets,
        "fractions": fractions,
        "median_fraction": medians,
        "median_best_at_budget": {
            m: {str(b): v for b, v in c.items()} for m, c in median_curves.items()
        },
        "verdicts": verdicts,
        "diagnostics": _diagnostics(studies, seeds, targets),
    }


def _verdict(method: str, medians: dict[str, float], curves: dict[str, dict]) -> dict:
    fast = medians[method] <= TARGET_FRACTION
    worse = [
        f"{rival}@{budget:g}"
        for rival in CURVE_RIVALS
        for budget in BUDGETS
        if curves[method][budget] > curves[rival][budget] * (1 + CURVE_TOLERANCE)
    ]
    return {"fast_enough": fast, "curve_worse_than": worse, "pass": fast and not worse}


def _diagnostics(
    studies: dict[tuple[int, str], dict], seeds: list[int], targets: list[float]
) -> dict:
    """Why a method wins or loses: early placement, pruning, drift prunes, wall time."""
    out: dict[str, Any] = {}
    for method in METHODS:
        runs = [studies[(seed, method)] for seed in seeds]
        first = [_best_completed(run["trials"][:N_PRIOR_TRIALS]) for run in runs]
        reasons: dict[str, int] = {}
        for run in runs:
            for trial in run["trials"]:
                if trial["prune_reason"] is not None:
                    key = trial["prune_reason"]
                    reasons[key] = reasons.get(key, 0) + 1
        drift = [t for run in runs for t in run["trials"] if "value_if_trained" in t]
        drift_winners = sum(
            t["value_if_trained"] < _best_completed(run["trials"])
            for run in runs
            for t in run["trials"]
            if "value_if_trained" in t
        )
        drift_on_target = sum(
            t["value_if_trained"] <= target
            for run, target in zip(runs, targets, strict=True)
            for t in run["trials"]
            if "value_if_trained" in t
        )
        out[method] = {
            "median_best_of_first_trials": _median(first),
            "median_steps_per_trial": _median(
                [run["curve"][-1][0] / len(run["trials"]) for run in runs]
            ),
            "prune_reasons_per_study": {k: v / len(runs) for k, v in sorted(reasons.items())},
            "failed_per_study": sum(t["state"] == "FAIL" for r in runs for t in r["trials"])
            / len(runs),
            "median_wall_s": _median([run["wall_s"] for run in runs]),
            "best_trial_from_prior": sum(_best_is_prior(run["trials"]) for run in runs),
            "drift_pruned": len(drift),
            "drift_pruned_median_value_if_trained": _median([t["value_if_trained"] for t in drift]),
            "drift_pruned_better_than_study_best": drift_winners,
            "drift_pruned_reaching_target": drift_on_target,
        }
    return out


def _best_completed(trials: list[dict[str, Any]]) -> float:
    values = [t["value"] for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    return min(values) if values else math.inf


def _best_is_prior(trials: list[dict[str, Any]]) -> bool:
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    return bool(complete) and min(complete, key=lambda t: t["value"])["prior"]


# ------------------------------------------------------------------------------- report


def _fmt(value: float, digits: int = 2) -> str:
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def print_task(result: dict, advice: Advice, advice_s: float) -> None:
    task = result["task"]
    low, high = advice.lr_range
    print(f"\n=== {task} ===")
    print(
        f"advice ({advice_s:.1f} s): recommended lr {advice.recommended_lr:.3g}, range "
        f"[{low:.3g}, {high:.3g}], full-batch 2/λ_max {advice.eos_lr:.3g}"
    )
    targets = ", ".join(f"{t:.4f}" for t in result["targets"])
    print(f"plain TPE's best value per seed (the target): {targets}")
    print("\nmedian best validation loss within a step budget (fraction of plain TPE's steps):")
    header = "".join(f"{b:>9.0%}" for b in BUDGETS)
    print(f"  {'method':<18}{header}")
    for method in METHODS:
        row = result["median_best_at_budget"][method]
        print(f"  {method:<18}" + "".join(f"{_fmt(row[str(b)], 4):>9}" for b in BUDGETS))
    print("\nfraction of plain TPE's steps needed to reach its best (per seed; median):")
    for method in METHODS:
        per_seed = " ".join(f"{_fmt(f):>5}" for f in result["fractions"][method])
        print(f"  {method:<18}{per_seed}   median {_fmt(result['median_fraction'][method])}")
    print(
        "\ndiagnostics per study (medians over seeds; best@10: best of the first "
        f"{N_PRIOR_TRIALS} trials; best<-prior: studies whose best trial drew lr from the prior):"
    )
    print(
        f"  {'method':<18}{'best@10':>8}{'steps/tr':>9}{'fail':>6}{'wall s':>8}"
        f"{'best<-prior':>12}  prune reasons"
    )
    for method in METHODS:
        d = result["diagnostics"][method]
        reasons = ", ".join(f"{k} {v:.1f}" for k, v in d["prune_reasons_per_study"].items())
        print(
            f"  {method:<18}{_fmt(d['median_best_of_first_trials'], 3):>8}"
            f"{d['median_steps_per_trial']:>9.0f}{d['failed_per_study']:>6.1f}"
            f"{d['median_wall_s']:>8.1f}{d['best_trial_from_prior']:>12}  {reasons or '-'}"
        )
    drift = result["diagnostics"]["lradvisor"]
    if drift["drift_pruned"]:
        print(
            f"  drift check (lradvisor): {drift['drift_pruned']} trials pruned; trained to the "
            "end their median loss would be "
            f"{_fmt(drift['drift_pruned_median_value_if_trained'], 4)}"
            f"; {drift['drift_pruned_better_than_study_best']} would have beaten their study's "
            f"best, {drift['drift_pruned_reaching_target']} would have reached plain TPE's best"
        )
    for method, verdict in result["verdicts"].items():
        status = "PASS" if verdict["pass"] else "FAIL"
        reasons = []
        if not verdict["fast_enough"]:
            reasons.append(
                f"median fraction {_fmt(result['median_fraction'][method])} > {TARGET_FRACTION}"
            )
        if verdict["curve_worse_than"]:
            reasons.append("curve worse than " + ", ".join(verdict["curve_worse_than"]))
        print(f"  {status} {method}" + (f": {'; '.join(reasons)}" if reasons else ""))


def print_summary(results: list[dict]) -> None:
    print("\n=== summary: median fraction of plain TPE's steps to reach its best ===")
    print(f"  {'task':<18}" + "".join(f"{m:>19}" for m in METHODS))
    for result in results:
        row = "".join(f"{_fmt(result['median_fraction'][m]):>19}" for m in METHODS)
        print(f"  {result['task']:<18}{row}")
    pooled = {m: _median([f for r in results for f in r["fractions"][m]]) for m in METHODS}
    print(f"  {'all (task, seed)':<18}" + "".join(f"{_fmt(pooled[m]):>19}" for m in METHODS))
    for method in LRADVISOR_METHODS:
        verdicts = " ".join(
            f"{r['task']}={'PASS' if r['verdicts'][method]['pass'] else 'FAIL'}" for r in results
        )
        print(f"  {method}: {verdicts}")


# --------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Run:
    seeds: list[int]
    n_trials: int
    workers: int
    quick: bool


def run(settings: Run) -> tuple[list[dict], dict[str, tuple[Advice, float]], list[dict]]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=settings.workers, mp_context=context) as pool:
        advices = {
            task: (advice, seconds) for task, advice, seconds in pool.map(run_advice, list(TASKS))
        }
        jobs = [
            (task, seed, method)
            for method in sorted(METHODS, key=lambda m: m not in MONITORED_METHODS)
            for task in TASKS
            for seed in settings.seeds
        ]
        futures = {
            job: pool.submit(run_study, *job, advices[job[0]][0], settings.n_trials) for job in jobs
        }
        studies = [future.result() for future in futures.values()]
    results = []
    for task in TASKS:
        by_key = {(s["seed"], s["method"]): s for s in studies if s["task"] == task}
        results.append(analyse(task, by_key, settings.seeds))
    return results, advices, studies


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, 32 trials per study")
    parser.add_argument("--seeds", type=int, default=None, help="study seeds 0 … N-1")
    parser.add_argument("--n-trials", type=int, default=None, help="trials per study")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None, help="write every trial and curve here")
    args = parser.parse_args()
    mode = RUNS["quick" if args.quick else "full"]
    settings = Run(
        seeds=list(range(args.seeds or mode["seeds"])),
        n_trials=args.n_trials or mode["n_trials"],
        workers=args.workers,
        quick=args.quick,
    )
    print(
        f"bench_study: {len(TASKS)} tasks × {len(settings.seeds)} seeds × {len(METHODS)} methods,"
        f" {settings.n_trials} trials per study, {STEPS} steps per trial, report every "
        f"{REPORT_EVERY}; {settings.workers} worker(s), 1 thread each"
        + (" (--quick: not comparable with a full run)" if settings.quick else "")
    )
    start = time.perf_counter()
    results, advices, studies = run(settings)
    elapsed = time.perf_counter() - start
    for result in results:
        print_task(result, *advices[result["task"]])
    print_summary(results)
    print(f"\nwall time {elapsed:.0f} s")
    if args.json:
        payload = {
            "settings": {
                **settings.__dict__,
                "steps": STEPS,
                "report_every": REPORT_EVERY,
                "batch_size": BATCH_SIZE,
                "target_fraction": TARGET_FRACTION,
                "curve_tolerance": CURVE_TOLERANCE,
                "budgets": BUDGETS,
                "tasks": TASKS,
            },
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "optuna": optuna.__version__,
                "machine": platform.machine(),
            },
            "advice": {
                task: {
                    "recommended_lr": advice.recommended_lr,
                    "lr_range": list(advice.lr_range),
                    "eos_lr": advice.eos_lr,
                    "batch_eos_lr": advice.batch_eos_lr,
                    "seconds": seconds,
                }
                for task, (advice, seconds) in advices.items()
            },
            "results": results,
            "studies": studies,
            "wall_s": elapsed,
        }
        with open(args.json, "w") as handle:
            json.dump(_json_safe(payload), handle, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Study efficiency at an equal training-step budget: lradvisor against what users run instead.

Every method gets the same **budget of training steps** per study (``BUDGET_TRIALS`` full
trials' worth); a method that prunes runs more trials until its budget is spent, so the
compute it saves is compute it can use. Five tasks, each a study over the learning rate and
one or two other parameters, minimising the validation loss reported every
``REPORT_EVERY`` steps, trained by a plain PyTorch loop written here:

================================  ==========================================================
``digits_mlp_sgd_mb64``           MLP 64→width→10 on digits, SGD (momentum searched), batch 64
``digits_cnn_momentum_mb64``      small CNN on digits, SGD momentum 0.9, batch 64, channels searched
``digits_cnn_adamw_mb64``         the same CNN with AdamW, weight decay searched
``mixture_mlp_sgd_full``          MLP on an overlapping 5-class Gaussian mixture, full batch
``breast_cancer_mlp_sgd_mb32``    MLP on breast cancer, SGD, batch 32, width searched
================================  ==========================================================

Methods (all TPE with the study seed):

====================  =====================================================================
``tpe``               no pruning (the reference)
``median``            + ``MedianPruner(n_startup_trials=5, n_warmup_steps=REPORT_EVERY)``
``hyperband``         + ``HyperbandPruner(min_resource=REPORT_EVERY, max_resource=STEPS, 3)``
``wilcoxon``          + ``WilcoxonPruner(p_threshold=0.1)`` (Optuna's)
``prior``             ``TheoryPriorSampler.from_advice(advice)`` for the first 10 trials, no pruning
``lradvisor``         prior + ``TrialMonitor`` + ``ConservationPruner.from_advice(advice, median)``,
                      defaults (prior follows the bound per width where width is searched;
                      the median's prunes of trials that could still win are refused)
``lradvisor-notau``   the same without the compression-time grace period (ablation)
``lradvisor-nowidth`` the same without the width-dependent prior (ablation, width tasks)
``lradvisor-nocontender`` the same without the contender rule (ablation)
====================  =====================================================================

The advice is ``lradvisor.suggest`` once per task on the template model (one probe seed,
the task's steps), and **its probe's training steps are charged** to every method that uses
it (prior and lradvisor): they start with that much budget spent. Cost: a trial costs the
steps it trained (a prune before training costs 0). Per task and study seed: the best
completed value within 25 %, 50 % and 100 % of the budget, and the budget fraction a method
needed to reach plain TPE's final best (inf if never), with the median over seeds and a
bootstrap 90 % interval. Every trial lradvisor pruned is trained again to the end with the
same initialisation and batches, to count prunes of a trial that would have been the study's
best. A plot of the median best-so-far against the budget is written per task.

    python benchmarks/bench_study.py [--seeds 5] [--budget-trials 40] [--tasks a,b] [--workers 2]
        [--json FILE] [--plot-dir DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

STEPS = 300
REPORT_EVERY = 30
BUDGET_TRIALS = 40
N_PRIOR_TRIALS = 10
BUDGETS = (0.25, 0.5, 1.0)
TARGET_FRACTION = 0.30
METHODS = (
    "tpe",
    "median",
    "hyperband",
    "wilcoxon",
    "prior",
    "lradvisor",
    "lradvisor-notau",
    "lradvisor-nowidth",
    "lradvisor-nocontender",
)
MONITORED = frozenset(
    {"lradvisor", "lradvisor-notau", "lradvisor-nowidth", "lradvisor-nocontender"}
)
ADVISED = MONITORED | {"prior"}
RETRAINED = MONITORED | {"median"}  # pruned trials retrained to the end, to count lost bests
OWN_CHECKS = frozenset({"beyond_stability_bound", "diverged", "drift_off_prediction"})
GRACE_FACTOR = 10.0
MAX_TRIALS_FACTOR = 4  # at most this many × BUDGET_TRIALS trials, whatever the pruning


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    name: str
    data: str
    model: str  # "mlp" or "cnn"
    optimizer: str  # "sgd" or "adamw"
    batch_size: int | None
    lr_range: tuple[float, float]
    width_choices: tuple[int, ...] | None  # hidden width or CNN channels, searched
    reference_width: int
    momenta: tuple[float, ...] = (0.0,)
    weight_decays: tuple[float, ...] = (0.0,)


TASKS = (
    Task("digits_mlp_sgd_mb64", "digits", "mlp", "sgd", 64, (1e-3, 10.0), (32, 64, 128, 256), 64, momenta=(0.0, 0.9)),
    Task("digits_cnn_momentum_mb64", "digits", "cnn", "sgd", 64, (1e-3, 10.0), (4, 8, 16), 8, momenta=(0.9,)),
    Task("digits_cnn_adamw_mb64", "digits", "cnn", "adamw", 64, (1e-5, 1.0), None, 8, weight_decays=(0.0, 0.01, 0.1)),
    Task("mixture_mlp_sgd_full", "mixture", "mlp", "sgd", None, (1e-3, 30.0), (16, 32, 64, 128), 64),
    Task("breast_cancer_mlp_sgd_mb32", "breast_cancer", "mlp", "sgd", 32, (1e-3, 10.0), (16, 64, 256), 64),
)  # fmt: skip


@functools.cache
def dataset(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised features, 80 / 20 train / validation split with a fixed seed."""
    rng = np.random.default_rng(0)
    if name == "mixture":
        k, d, n = 5, 20, 1000
        centres = rng.standard_normal((k, d))
        centres *= 0.6 * math.sqrt(d) / np.linalg.norm(centres, axis=1, keepdims=True)
        y = np.arange(n) % k
        X = centres[y] + rng.standard_normal((n, d))
    else:
        from sklearn import datasets

        loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}
        X, y = loader[name](return_X_y=True)
        std = X.std(0)
        X = (X - X.mean(0)) / np.where(std > 0, std, 1.0)
    order = rng.permutation(len(X))
    X, y = X[order].astype(np.float32), y[order].astype(np.int64)
    split = int(0.8 * len(X))
    return (
        torch.from_numpy(X[:split]),
        torch.from_numpy(y[:split]),
        torch.from_numpy(X[split:]),
        torch.from_numpy(y[split:]),
    )


class SmallCNN(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.fc1 = nn.Linear(channels * 64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.view(-1, 1, 8, 8))).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def build(task: Task, width: int, classes: int, features: int) -> nn.Module:
    if task.model == "cnn":
        return SmallCNN(width)
    return nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, classes))


def make_optimizer(task: Task, model: nn.Module, params: dict[str, Any]) -> torch.optim.Optimizer:
    if task.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"]
        )
    return torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=params["momentum"])


def suggest_params(trial: optuna.Trial, task: Task) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if task.width_choices is not None:  # sampled first: the width prior needs it
        params["width"] = trial.suggest_categorical("width", list(task.width_choices))
    params["lr"] = trial.suggest_float("lr", *task.lr_range, log=True)
    params["momentum"] = trial.suggest_categorical("momentum", list(task.momenta))
    params["weight_decay"] = trial.suggest_categorical("weight_decay", list(task.weight_decays))
    return params


def train(
    task: Task,
    params: dict[str, Any],
    seed: int,
    *,
    trial: optuna.Trial | None = None,
    monitored: bool = False,
    curve: dict[int, float] | None = None,
) -> tuple[float, int]:
    """(final validation loss, steps trained); with ``trial``, reports and may raise TrialPruned;
    with ``curve``, the validation loss at every report step is stored in it."""
    X, y, X_val, y_val = dataset(task.data)
    torch.manual_seed(seed)
    width = params.get("width", task.reference_width)
    model = build(task, width, int(y.max()) + 1, X.shape[1])
    optimizer = make_optimizer(task, model, params)
    monitor = None
    if monitored:
        from lradvisor.optuna import TrialMonitor

        monitor = TrialMonitor(
            trial, model, optimizer, data=(X, y), width=width if task.width_choices else None
        )
        if monitor.should_prune():
            raise optuna.TrialPruned()
    batches = torch.Generator().manual_seed(seed)
    steps = 0
    try:
        for step in range(STEPS):
            if step % REPORT_EVERY == 0 and step and (trial is not None or curve is not None):
                value = validation_loss(model, X_val, y_val)
                if curve is not None:
                    curve[step] = value
            if trial is not None and step % REPORT_EVERY == 0 and step:
                trial.set_user_attr("bench.steps", step)
                if monitor is not None:
                    monitor.report(value, step)
                else:
                    trial.report(value, step)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
            rows = (
                slice(None)
                if task.batch_size is None
                else torch.randint(len(X), (task.batch_size,), generator=batches)
            )
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(X[rows]), y[rows]).backward()
            if monitor is not None:
                monitor.observe()
            optimizer.step()
            steps += 1
    finally:
        if monitor is not None:
            monitor.finish()
    value = validation_loss(model, X_val, y_val)
    return (value if math.isfinite(value) else math.inf), steps


def validation_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), y))


def trial_seed(study_seed: int, number: int) -> int:
    return 10_000 * study_seed + number


# --------------------------------------------------------------------------- studies


def _sampler(
    method: str, seed: int, task: Task, advice: dict | None
) -> optuna.samplers.BaseSampler:
    tpe = optuna.samplers.TPESampler(seed=seed)
    if method not in ADVISED or advice is None:
        return tpe
    from lradvisor.optuna import TheoryPriorSampler

    width = {}
    if task.width_choices is not None and method != "lradvisor-nowidth" and method != "prior":
        width = {"width_param": "width", "reference_width": task.reference_width}
    low, high = advice["lr_range"]
    return TheoryPriorSampler(
        tpe,
        center=advice["recommended_lr"],
        low=low,
        high=high,
        n_prior_trials=N_PRIOR_TRIALS,
        seed=seed,
        **width,
    )


def _pruner(
    method: str, advice: dict | None, grace_factor: float = GRACE_FACTOR
) -> optuna.pruners.BasePruner:
    median = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=REPORT_EVERY)
    if method in ("tpe", "prior"):
        return optuna.pruners.NopPruner()
    if method == "median":
        return median
    if method == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=REPORT_EVERY, max_resource=STEPS, reduction_factor=3
        )
    if method == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    from lradvisor.optuna import ConservationPruner

    tau = (advice or {}).get("tau") or {}
    options: dict[str, Any] = {"protect_contenders": method != "lradvisor-nocontender"}
    if method != "lradvisor-notau" and tau.get("a") is not None:
        options.update(tau=(tau["a"], tau["b"]), grace_factor=grace_factor)
    return ConservationPruner(median, **options)


def run_study(
    task: Task,
    seed: int,
    method: str,
    advice: dict | None,
    budget_trials: int,
    grace_factor: float = GRACE_FACTOR,
) -> dict:
    """One study on one budget; its trials and best-so-far curve (in a worker process)."""
    _quiet_worker()
    monitored = method in MONITORED
    spent_start = advice["probe_steps"] if method in ADVISED and advice else 0
    budget = budget_trials * STEPS
    study = optuna.create_study(
        sampler=_sampler(method, seed, task, advice), pruner=_pruner(method, advice)
    )
    spent = spent_start
    records = []
    started = time.process_time()
    while spent < budget and len(study.trials) < MAX_TRIALS_FACTOR * budget_trials:
        trial = study.ask()
        params = suggest_params(trial, task)
        try:
            value, steps = train(
                task, params, trial_seed(seed, trial.number), trial=trial, monitored=monitored
            )
        except optuna.TrialPruned:
            frozen = study._storage.get_trial(trial._trial_id)
            steps = int(frozen.user_attrs.get("bench.steps", 0))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            frozen = study.trials[-1]
            records.append(
                {
                    "number": trial.number,
                    "state": "PRUNED",
                    "value": None,
                    "steps": steps,
                    "params": params,
                    "reason": frozen.user_attrs.get("lradvisor.prune_reason", method),
                    "values": dict(frozen.intermediate_values),
                    "refused": _refused(frozen),
                    "prior": bool(frozen.user_attrs.get("lradvisor.prior", False)),
                }
            )
            spent += steps
            continue
        study.tell(trial, value if math.isfinite(value) else float("nan"))
        spent += steps
        records.append(
            {
                "number": trial.number,
                "state": "COMPLETE",
                "value": value,
                "steps": steps,
                "params": params,
                "reason": None,
                "values": dict(study.trials[-1].intermediate_values),
                "refused": _refused(study.trials[-1]),
                "prior": bool(study.trials[-1].user_attrs.get("lradvisor.prior", False)),
            }
        )
    cpu = time.process_time() - started
    best = min((r["value"] for r in records if r["state"] == "COMPLETE"), default=math.inf)
    if method in RETRAINED:  # retrain every pruned trial to the end: would it have been the best?
        for record in records:
            if record["state"] == "PRUNED":
                record["values_if_trained"] = {}
                record["value_if_trained"], _ = train(
                    task,
                    record["params"],
                    trial_seed(seed, record["number"]),
                    curve=record["values_if_trained"],
                )
                record["would_be_best"] = bool(record["value_if_trained"] < best)
    return {
        "task": task.name,
        "seed": seed,
        "method": method,
        "trials": records,
        "curve": curve(records, spent_start),
        "budget": budget,
        "cpu_s": cpu,
    }


def _refused(frozen: optuna.trial.FrozenTrial) -> int:
    """How many of the base pruner's prunes the contender rule refused in this trial."""
    refused = frozen.user_attrs.get("lradvisor.prune_refused")
    return int(json.loads(refused)["count"]) if refused else 0


def curve(records: list[dict], start: int) -> list[list[float]]:
    """[cumulative steps, best completed value so far] after every trial (from ``start``)."""
    points, spent, best = [[start, math.inf]], start, math.inf
    for record in records:
        spent += record["steps"]
        if record["state"] == "COMPLETE" and record["value"] is not None:
            best = min(best, record["value"])
        points.append([spent, best])
    return points


def run_advice(task: Task) -> tuple[str, dict, float]:
    """``lradvisor.suggest`` on the template model (one probe seed, the task's steps)."""
    _quiet_worker()
    import lradvisor

    X, y, X_val, y_val = dataset(task.data)
    torch.manual_seed(0)
    model = build(task, task.reference_width, int(y.max()) + 1, X.shape[1])
    optimizer: Any
    if task.optimizer == "adamw":
        optimizer = functools.partial(torch.optim.AdamW, weight_decay=0.01)
    else:
        optimizer = functools.partial(
            torch.optim.SGD, momentum=max(task.momenta) if len(task.momenta) == 1 else 0.0
        )
    started = time.perf_counter()
    advice = lradvisor.suggest(
        model, (X, y), nn.CrossEntropyLoss(), optimizer, val_data=(X_val, y_val),
        batch_size=task.batch_size, steps=STEPS, seeds=(0,), name=task.name,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return (
        task.name,
        {
            "recommended_lr": advice.recommended_lr,
            "lr_range": list(advice.lr_range),
            "tau": advice.tau and {k: advice.tau.get(k) for k in ("a", "b", "r2")},
            "probe_steps": int(advice.probe["trial_steps"]),
            "bound": advice.bound["value"],
        },
        seconds,
    )


def _quiet_worker() -> None:
    torch.set_num_threads(1)  # tiny models: a second thread only adds OpenMP barriers
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")


# -------------------------------------------------------------------------- analysis


def steps_to_reach(points: list[list[float]], target: float) -> float:
    for spent, best in points:
        if best <= target:
            return float(spent)
    return math.inf


def best_within(points: list[list[float]], budget: float) -> float:
    values = [best for spent, best in points if spent <= budget]
    return values[-1] if values else math.inf


def bootstrap_median(
    values: list[float], *, seed: int = 0, draws: int = 2000
) -> tuple[float, float]:
    """90 % bootstrap interval of the median (inf-aware: inf sorts last)."""
    if not values:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    array = np.array(values, dtype=float)
    medians = np.median(rng.choice(array, size=(draws, len(array)), replace=True), axis=1)
    return float(np.percentile(medians, 5)), float(np.percentile(medians, 95))


def analyse(
    task: Task, studies: dict[tuple[int, str], dict], seeds: list[int], methods: list[str]
) -> dict:
    fractions: dict[str, list[float]] = {m: [] for m in methods}
    free_fractions: dict[str, list[float]] = {m: [] for m in methods}
    free_25: dict[str, list[float]] = {m: [] for m in methods}
    bests: dict[str, dict[float, list[float]]] = {m: {b: [] for b in BUDGETS} for m in methods}
    for seed in seeds:
        reference = studies[(seed, "tpe")]
        target = best_within(reference["curve"], reference["budget"])
        for method in methods:
            study = studies[(seed, method)]
            fractions[method].append(steps_to_reach(study["curve"], target) / study["budget"])
            for share in BUDGETS:
                bests[method][share].append(best_within(study["curve"], share * study["budget"]))
            # the same study with the advice's probe not charged (advice reused across studies)
            start = study["curve"][0][0]
            free = [[spent - start, best] for spent, best in study["curve"]]
            free_fractions[method].append(steps_to_reach(free, target) / study["budget"])
            free_25[method].append(best_within(free, 0.25 * study["budget"]))
    rows = {}
    for method in methods:
        final = bests[method][1.0]
        rows[method] = {
            "median_fraction": float(np.median(fractions[method])),
            "fraction_ci": bootstrap_median(fractions[method]),
            "fractions": fractions[method],
            **{f"median_best_{int(100 * b)}": float(np.median(bests[method][b])) for b in BUDGETS},
            "best_100_ci": bootstrap_median(final),
            "bests": {str(b): bests[method][b] for b in BUDGETS},
            "median_fraction_advice_free": float(np.median(free_fractions[method])),
            "median_best_25_advice_free": float(np.median(free_25[method])),
        }

    def lost(method: str) -> tuple[int, int, int, int]:
        """(prunes, prunes of a would-be best by lradvisor's own checks, … by the base pruner,
        trials in which the contender rule refused a prune)."""
        trials = [r for s in seeds for r in studies[(s, method)]["trials"]]
        pruned = [r for r in trials if r["state"] == "PRUNED"]
        own = [r for r in pruned if r.get("would_be_best") and r["reason"] in OWN_CHECKS]
        base = [r for r in pruned if r.get("would_be_best") and r["reason"] not in OWN_CHECKS]
        return len(pruned), len(own), len(base), sum(r.get("refused", 0) > 0 for r in trials)

    losses = {m: lost(m) for m in methods if m in RETRAINED}
    ours, median = rows.get("lradvisor"), rows.get("median")
    verdicts = {}
    if ours and median:
        verdicts["no_worse_than_median"] = (
            ours["median_best_100"] <= median["median_best_100"]
            or ours["best_100_ci"][0] <= median["best_100_ci"][1]
        )
        verdicts["reaches_tpe_best_within_30pct"] = ours["median_fraction"] <= TARGET_FRACTION
        others = [rows[m]["median_best_25"] for m in methods if m not in MONITORED]
        verdicts["ahead_at_25pct"] = all(ours["median_best_25"] <= other for other in others)
        verdicts["reaches_tpe_best_within_30pct_advice_free"] = (
            ours["median_fraction_advice_free"] <= TARGET_FRACTION
        )
        verdicts["ahead_at_25pct_advice_free"] = all(
            ours["median_best_25_advice_free"] <= other for other in others
        )
    return {
        "task": task.name,
        "rows": rows,
        "lost_bests": {
            m: {"pruned": v[0], "own_checks": v[1], "base_pruner": v[2], "refused_in": v[3]}
            for m, v in losses.items()
        },
        "verdicts": verdicts,
    }


def plot(
    task: Task,
    studies: dict[tuple[int, str], dict],
    seeds: list[int],
    methods: list[str],
    folder: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.5))
    grid = np.linspace(0, 1, 101)
    for method in methods:
        curves = [
            [
                best_within(studies[(s, method)]["curve"], g * studies[(s, method)]["budget"])
                for g in grid
            ]
            for s in seeds
        ]
        median = np.median(np.array(curves), axis=0)
        style = "-" if method in ("lradvisor", "tpe") else "--"
        ax.plot(
            grid,
            np.where(np.isfinite(median), median, np.nan),
            style,
            label=method,
            lw=2 if method == "lradvisor" else 1.2,
        )
    ax.set_xlabel("share of the training-step budget")
    ax.set_ylabel("median best validation loss so far")
    ax.set_yscale("log")
    ax.set_title(f"{task.name}: best-so-far vs budget ({len(seeds)} seeds)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    figure.tight_layout()
    path = folder / f"bench_study_{task.name}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _fmt(value: float, spec: str = ".3f") -> str:
    return "inf" if isinstance(value, float) and math.isinf(value) else format(value, spec)


def print_task(result: dict, advice: dict, seconds: float, methods: list[str]) -> None:
    print(f"\n{result['task']}: advice {advice['recommended_lr']:.3g} in [{advice['lr_range'][0]:.3g}, {advice['lr_range'][1]:.3g}], "
          f"τ {advice['tau']}, probe {advice['probe_steps']} steps charged (= {advice['probe_steps'] / STEPS:.1f} trials), {seconds:.1f} s")  # fmt: skip
    print(
        f"  {'method':<18} {'best@25%':>9} {'best@50%':>9} {'best@100%':>10} {'100% CI':>17} {'to TPE best':>12} {'CI':>15}"
        f" {'advice free: to TPE best':>25} {'best@25%':>9}"
    )
    for method in methods:
        row = result["rows"][method]
        ci = row["best_100_ci"]
        fci = row["fraction_ci"]
        print(
            f"  {method:<18} {_fmt(row['median_best_25']):>9} {_fmt(row['median_best_50']):>9} {_fmt(row['median_best_100']):>10} "
            f"{'[' + _fmt(ci[0]) + ', ' + _fmt(ci[1]) + ']':>17} {_fmt(row['median_fraction'], '.2f'):>12} "
            f"{'[' + _fmt(fci[0], '.2f') + ', ' + _fmt(fci[1], '.2f') + ']':>15}"
            f" {_fmt(row['median_fraction_advice_free'], '.2f'):>25} {_fmt(row['median_best_25_advice_free']):>9}"
        )
    for method, lost in result["lost_bests"].items():
        print(
            f"  {method}: {lost['pruned']} trials pruned; would-be bests among them: "
            f"{lost['own_checks']} by lradvisor's own checks, {lost['base_pruner']} by the median rule"
            + (
                f"; median prunes refused in {lost['refused_in']} trials"
                if lost["refused_in"]
                else ""
            )
        )
    for name, ok in result["verdicts"].items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-trials", type=int, default=BUDGET_TRIALS)
    parser.add_argument("--tasks", help="comma-separated task names")
    parser.add_argument("--methods", help="comma-separated methods (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--plot-dir", default="docs")
    parser.add_argument("--seed-offset", type=int, default=0, help="first study seed")
    parser.add_argument("--grace-factor", type=float, default=GRACE_FACTOR)
    parser.add_argument(
        "--reanalyse", metavar="FILE", help="analyse the raw JSON of an earlier run"
    )
    args = parser.parse_args()
    budget_trials = args.budget_trials
    tasks = [t for t in TASKS if not args.tasks or t.name in args.tasks.split(",")]
    methods = list(METHODS if not args.methods else args.methods.split(","))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or "tpe" not in methods:
        parser.error(
            f"--methods: expected a comma-separated subset of {', '.join(METHODS)} that "
            f"includes tpe (the reference), got {args.methods!r}"
        )
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    started = time.perf_counter()
    print(
        f"Study benchmark: {len(tasks)} tasks × {len(seeds)} seeds × {len(methods)} methods; budget {budget_trials} × {STEPS} steps per study; torch {torch.__version__}"
    )
    if args.reanalyse:
        raw = json.loads(Path(args.reanalyse).read_text())
        advices = {name: tuple(value) for name, value in raw["advices"].items()}
        studies = {tuple(_key(k)): v for k, v in raw["studies"].items()}
        seeds = sorted({key[1] for key in studies})
        tasks = [t for t in tasks if t.name in advices]
    else:
        advices, studies = _run(tasks, seeds, methods, budget_trials, args)
        if args.json:  # the raw studies first: an analysis can be redone from them
            raw = {
                "advices": advices,
                "studies": {"|".join(map(str, k)): v for k, v in studies.items()},
            }
            _write(args.json, raw)
    _report(tasks, seeds, methods, advices, studies, budget_trials, args, started)


def _run(
    tasks: list[Task], seeds: list[int], methods: list[str], budget_trials: int, args
) -> tuple[dict, dict]:
    """The advice per task, then every (task, seed, method) study, in worker processes."""
    advices: dict[str, tuple[dict, float]] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for name, advice, seconds in pool.map(run_advice, tasks):
            advices[name] = (advice, seconds)
        jobs: dict[tuple[str, int, str], Any] = {}
        for task in tasks:
            for seed in seeds:
                for method in methods:
                    if method == "lradvisor-nowidth" and task.width_choices is None:
                        continue
                    jobs[(task.name, seed, method)] = pool.submit(
                        run_study,
                        task,
                        seed,
                        method,
                        advices[task.name][0],
                        budget_trials,
                        args.grace_factor,
                    )
        studies = _collect(jobs, advices, args)
    return advices, studies


def _collect(jobs: dict, advices: dict, args) -> dict:
    """Every study's result, with a progress line per study on stderr and, with --json, the
    raw results so far rewritten every ten studies (a killed run can be --reanalysed)."""
    started = time.perf_counter()
    keys = {future: key for key, future in jobs.items()}
    studies: dict = {}
    for done, future in enumerate(as_completed(keys), start=1):
        studies[keys[future]] = future.result()
        elapsed = time.perf_counter() - started
        print(
            f"  [{done}/{len(jobs)}] {'/'.join(map(str, keys[future]))}  {elapsed:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        if args.json and (done % 10 == 0 or done == len(jobs)):
            raw = {
                "advices": advices,
                "studies": {"|".join(map(str, k)): v for k, v in studies.items()},
            }
            _write(args.json, raw)
    return {key: studies[key] for key in jobs}


def _key(text: str) -> list:
    task, seed, method = text.split("|")
    return [task, int(seed), method]


def _write(path: str, data: dict) -> None:
    Path(path).write_text(json.dumps(data, default=str) + "\n")


def _report(tasks, seeds, methods, advices, studies, budget_trials, args, started) -> None:
    """Per-task tables, plots and verdicts; the summary; the full JSON."""
    results = []
    folder = Path(args.plot_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        task_methods = [m for m in methods if (task.name, seeds[0], m) in studies]
        by_seed = {(s, m): studies[(task.name, s, m)] for s in seeds for m in task_methods}
        result = analyse(task, by_seed, seeds, task_methods)
        result["plot"] = str(plot(task, by_seed, seeds, task_methods, folder))
        result["advice"], result["advice_seconds"] = advices[task.name]
        print_task(result, *advices[task.name], task_methods)
        results.append(result)
    summary = {
        "tasks_reaching_tpe_best_within_30pct": sum(
            r["verdicts"].get("reaches_tpe_best_within_30pct", False) for r in results
        ),
        "tasks_no_worse_than_median": sum(
            r["verdicts"].get("no_worse_than_median", False) for r in results
        ),
        "tasks_ahead_at_25pct": sum(r["verdicts"].get("ahead_at_25pct", False) for r in results),
        "tasks_within_30pct_advice_free": sum(
            r["verdicts"].get("reaches_tpe_best_within_30pct_advice_free", False) for r in results
        ),
        "tasks_ahead_at_25pct_advice_free": sum(
            r["verdicts"].get("ahead_at_25pct_advice_free", False) for r in results
        ),
        "lradvisor_own_checks_lost_bests": sum(
            r["lost_bests"].get("lradvisor", {}).get("own_checks", 0) for r in results
        ),
        "lradvisor_base_lost_bests": sum(
            r["lost_bests"].get("lradvisor", {}).get("base_pruner", 0) for r in results
        ),
        "median_lost_bests": sum(
            r["lost_bests"].get("median", {}).get("base_pruner", 0) for r in results
        ),
    }
    print(f"\nSummary over {len(results)} tasks: {json.dumps(summary)}")
    print(f"Total wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        _write(
            args.json,
            {
                "benchmark": "study",
                "python": platform.python_version(),
                "torch": torch.__version__,
                "budget_trials": budget_trials,
                "steps": STEPS,
                "results": results,
                "summary": summary,
                "advices": advices,
                "studies": {"|".join(map(str, k)): v for k, v in studies.items()},
            },
        )
        print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()

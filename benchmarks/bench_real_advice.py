"""Advice on real models: lradvisor.suggest against a range test, a dense grid and two nulls.

For every task of ``benchmarks/real_models.py`` (CNN, CNN + BatchNorm, LayerNorm + GELU MLP,
self-attention, residual MLP, plain MLP, regression; SGD, momentum, Nesterov, Adam, AdamW;
mini-batch and full batch), in one run:

* ground truth: a dense grid of rates (4 per decade, widened by 4 rates past an edge that
  holds the best), each trained at the task's steps from 3 evaluation seeds by a plain PyTorch
  loop written here (no lradvisor code). Per rate: mean final training loss (whole training
  split, eval mode), mean held-out loss on the test split (data neither the probe nor anyone's
  tuning saw), and whether any seed diverged (non-finite loss, or above 1000× its start);
* methods, each asked once as a user would ask it, then trained at exactly its rate from the
  same 3 evaluation seeds:
  - ``lradvisor``: ``lradvisor.suggest(model, train, loss, optimizer, val_data=val, …)`` with
    the model built from seed 0 (the evaluation seeds are 100–102, so it never saw them);
  - ``range_test``: torch-lr-finder's ``LRFinder.range_test`` (1e-7 → 10, 100 iterations) on
    the same model, optimizer and batches, with its steepest-slope suggestion;
  - ``bound/2`` (null: the theory without the probe): half the optimizer-aware stability
    bound lradvisor measured (Adam: the optimizer's default rate);
  - ``default`` (null): 0.1 for SGD, 1e-3 for Adam/AdamW;
* regret = the method's mean loss / the grid's best mean loss, for training loss and held-out
  loss; a recommendation where any seed diverges has regret inf and is flagged;
* wall time of ``suggest`` and of the range test, in this process, with the same threads.

    python benchmarks/bench_real_advice.py [--tasks a,b] [--json FILE] [--workers 2]

The grid trains in ``--workers`` processes with one thread each; the methods' own timing
runs in this process with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import Task, batch_schedule, tasks

EVAL_SEEDS = (100, 101, 102)
ADVICE_SEED = 0
GRID = {"sgd": (1e-3, 10**1.5), "adam": (1e-5, 1.0)}
POINTS_PER_DECADE = 4
WIDEN = 4
DIVERGENCE_FACTOR = 1e3
METHODS = ("lradvisor", "range_test", "bound/2", "default")
TARGET_MEDIAN, TARGET_WORST = 1.15, 2.0


def family(task: Task) -> str:
    return "adam" if "Adam" in task.optimizer_name else "sgd"


def train(task: Task, lr: float, seed: int) -> dict:
    """The plain loop: build from ``seed``, train ``task.steps`` steps, evaluate."""
    torch.manual_seed(seed)
    model = task.make_model()
    optimizer = task.optimizer(model.parameters(), lr=lr)
    X, y = task.train
    schedule = batch_schedule(len(X), task.batch_size, task.steps, seed)
    initial = None
    diverged = False
    for step in range(task.steps):
        xb, yb = (X, y) if schedule is None else (X[schedule[step]], y[schedule[step]])
        optimizer.zero_grad()
        loss = task.loss_fn(model(xb), yb)
        value = float(loss)
        initial = value if initial is None else initial
        if not np.isfinite(value) or value > DIVERGENCE_FACTOR * initial:
            diverged = True
            break
        loss.backward()
        optimizer.step()
    record = {"lr": lr, "seed": seed, "diverged": diverged}
    model.eval()
    with torch.no_grad():
        for split, (Xs, ys) in (("train", task.train), ("val", task.val), ("test", task.test)):
            value = float(task.loss_fn(model(Xs), ys)) if not diverged else float("inf")
            record[split] = value if np.isfinite(value) else float("inf")
    if not np.isfinite(record["train"]):
        record["diverged"] = True
    return record


def _job(args: tuple[str, float, int]) -> dict:
    name, lr, seed = args
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    task = next(t for t in tasks() if t.name == name)
    return train(task, lr, seed)


def per_rate(records: list[dict]) -> dict[float, dict]:
    table: dict[float, dict] = {}
    for r in records:
        row = table.setdefault(r["lr"], {"train": [], "val": [], "test": [], "diverged": 0})
        for key in ("train", "val", "test"):
            row[key].append(r[key])
        row["diverged"] += int(r["diverged"])
    return {
        lr: {
            "train": float(np.mean(v["train"])) if not v["diverged"] else float("inf"),
            "val": float(np.mean(v["val"])) if not v["diverged"] else float("inf"),
            "test": float(np.mean(v["test"])) if not v["diverged"] else float("inf"),
            "diverged_seeds": v["diverged"],
        }
        for lr, v in sorted(table.items())
    }


def ground_truth(task: Task, pool) -> dict[float, dict]:
    lo, hi = GRID[family(task)]
    decades = np.log10(hi / lo)
    rates = np.logspace(np.log10(lo), np.log10(hi), int(np.rint(decades * POINTS_PER_DECADE)) + 1)
    jobs = [(task.name, float(r), s) for r in rates for s in EVAL_SEEDS]
    grid = per_rate(pool.map(_job, jobs))
    for key in ("train", "test"):
        best = min(grid, key=lambda r: grid[r][key])
        edge = best in (min(grid), max(grid))
        if edge and np.isfinite(grid[best][key]):
            step = 10 ** (1 / POINTS_PER_DECADE)
            sign = -1 if best == min(grid) else 1
            extra = [best * step ** (sign * k) for k in range(1, WIDEN + 1)]
            jobs = [(task.name, float(r), s) for r in extra for s in EVAL_SEEDS]
            grid.update(per_rate(pool.map(_job, jobs)))
            grid = dict(sorted(grid.items()))
    return grid


def range_test_rate(task: Task) -> tuple[float, float]:
    """torch-lr-finder on the seed-0 model; (suggested rate, wall seconds)."""
    from torch_lr_finder import LRFinder

    from lradvisor.rangetest import steepest_point

    started = time.perf_counter()
    torch.manual_seed(ADVICE_SEED)
    model = task.make_model()
    optimizer = task.optimizer(model.parameters(), lr=1e-7)
    X, y = task.train
    batch = task.batch_size or len(X)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=batch, shuffle=True, drop_last=True
    )
    finder = LRFinder(model, optimizer, task.loss_fn, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finder.range_test(loader, end_lr=10, num_iter=100)
    lrs, losses = finder.history["lr"], finder.history["loss"]
    rate, _ = steepest_point(lrs, losses, skip_start=10, skip_end=5)
    finder.reset()
    return rate, time.perf_counter() - started


def suggest_rate(task: Task) -> tuple[dict, float]:
    import lradvisor

    started = time.perf_counter()
    torch.manual_seed(ADVICE_SEED)
    model = task.make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        advice = lradvisor.suggest(
            model,
            task.train,
            task.loss_fn,
            task.optimizer,
            val_data=task.val,
            batch_size=task.batch_size,
            steps=task.steps,
            name=task.name,
        )
    return advice.as_dict(), time.perf_counter() - started


def evaluate(task: Task, rate: float, grid: dict, pool) -> dict:
    rows = per_rate(pool.map(_job, [(task.name, float(rate), s) for s in EVAL_SEEDS]))
    row = rows[float(rate)]
    best_train = min(v["train"] for v in grid.values())
    best_test = min(v["test"] for v in grid.values())
    return {
        "rate": float(rate),
        **row,
        "divergent": row["diverged_seeds"] > 0,
        "train_regret": _ratio(row["train"], best_train),
        "heldout_regret": _ratio(row["test"], best_test),
    }


def _ratio(value: float, best: float) -> float:
    return float("inf") if not np.isfinite(value) else value / best


def run_task(task: Task, pool, threads: int) -> dict:
    started = time.perf_counter()
    grid = ground_truth(task, pool)
    best_train = min(grid, key=lambda r: grid[r]["train"])
    best_test = min(grid, key=lambda r: grid[r]["test"])
    record = {
        "name": task.name,
        "description": task.description,
        "grid": {str(k): v for k, v in grid.items()},
        "best_train_lr": best_train,
        "best_heldout_lr": best_test,
        "grid_seconds": time.perf_counter() - started,
        "methods": {},
    }
    torch.set_num_threads(threads)
    rates: dict[str, float] = {}
    try:
        advice, seconds = suggest_rate(task)
        rates["lradvisor"] = advice["recommended_lr"]
        bound = advice["bound"]["value"]
        rates["bound/2"] = 0.5 * bound if bound else task.default_lr
        record["advice"] = {
            key: advice[key]
            for key in ("lr_range", "bound", "regime", "warnings", "timings", "score", "adaptive")
        }
        record["methods"]["lradvisor"] = {"seconds": seconds}
        record["methods"]["bound/2"] = {"seconds": 0.0}
    except Exception as exc:  # recorded, and it fails the hard criterion
        record["methods"]["lradvisor"] = {
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=6),
        }
    try:
        rates["range_test"], seconds = range_test_rate(task)
        record["methods"]["range_test"] = {"seconds": seconds}
    except Exception as exc:  # the peer can fail too (too few points, …)
        record["methods"]["range_test"] = {"error": f"{type(exc).__name__}: {exc}"}
    rates["default"] = task.default_lr
    record["methods"].setdefault("default", {"seconds": 0.0})
    for name, rate in rates.items():
        record["methods"].setdefault(name, {}).update(evaluate(task, rate, grid, pool))
    record["wall_seconds"] = time.perf_counter() - started
    return record


def _fmt(value, spec=".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and np.isinf(value):
        return "inf"
    return format(value, spec)


def print_task(index: int, total: int, record: dict) -> None:
    print(f"\n[{index}/{total}] {record['name']}: {record['description']}")
    grid = {float(k): v for k, v in record["grid"].items()}
    print(
        f"  grid {len(grid)} rates × {len(EVAL_SEEDS)} seeds: best train rate "
        f"{_fmt(record['best_train_lr'])} (loss {_fmt(grid[record['best_train_lr']]['train'], '.3e')}), "
        f"best held-out rate {_fmt(record['best_heldout_lr'])} (loss {_fmt(grid[record['best_heldout_lr']]['test'], '.3e')})"
    )
    advice = record.get("advice")
    if advice:
        bound = advice["bound"]
        print(
            f"  lradvisor: bound {bound['kind']} = {_fmt(bound['value'])}, range "
            f"{_fmt(advice['lr_range'][0])} … {_fmt(advice['lr_range'][1])}, {advice['regime']}"
        )
    print(f"  {'method':<11} {'rate':>9} {'train regret':>13} {'held-out regret':>16} {'time':>8}")
    for name in METHODS:
        method = record["methods"].get(name, {})
        if "rate" not in method:
            print(f"  {name:<11} {method.get('error', 'not run')}")
            continue
        flag = "  DIVERGED" if method["divergent"] else ""
        print(
            f"  {name:<11} {_fmt(method['rate']):>9} {_fmt(method['train_regret'], '.2f'):>13} "
            f"{_fmt(method['heldout_regret'], '.2f'):>16} {method.get('seconds', 0.0):7.1f}s{flag}"
        )


def summarize(records: list[dict]) -> dict:
    summary = {}
    for name in METHODS:
        rated = [r["methods"][name] for r in records if "rate" in r["methods"].get(name, {})]
        train = np.array([m["train_regret"] for m in rated], dtype=float)
        held = np.array([m["heldout_regret"] for m in rated], dtype=float)
        summary[name] = {
            "tasks": len(rated),
            "errors": len(records) - len(rated),
            "median_train_regret": float(np.median(train)) if rated else None,
            "worst_train_regret": float(np.max(train)) if rated else None,
            "median_heldout_regret": float(np.median(held)) if rated else None,
            "worst_heldout_regret": float(np.max(held)) if rated else None,
            "divergent": int(sum(m["divergent"] for m in rated)),
        }
    times = [
        (r["methods"]["lradvisor"].get("seconds"), r["methods"]["range_test"].get("seconds"))
        for r in records
        if "seconds" in r["methods"].get("lradvisor", {})
        and "seconds" in r["methods"].get("range_test", {})
    ]
    summary["timing"] = {
        "suggest_seconds": [t[0] for t in times],
        "range_test_seconds": [t[1] for t in times],
        "ratios": [t[0] / t[1] for t in times],
    }
    return summary


def targets(summary: dict, n_tasks: int) -> list[dict]:
    ours, peer = summary["lradvisor"], summary["range_test"]
    complete = ours["tasks"] == n_tasks
    timing = summary["timing"]
    checks = [
        ("hard: no suggestion diverges, no error on any task", complete and ours["divergent"] == 0),
        (
            f"median held-out regret ≤ {TARGET_MEDIAN}",
            complete and ours["median_heldout_regret"] <= TARGET_MEDIAN,
        ),
        (
            f"worst held-out regret ≤ {TARGET_WORST}",
            complete and ours["worst_heldout_regret"] <= TARGET_WORST,
        ),
        (
            "better than the range test on median and worst held-out regret",
            complete
            and peer["tasks"] > 0
            and ours["median_heldout_regret"] < peer["median_heldout_regret"]
            and ours["worst_heldout_regret"] < peer["worst_heldout_regret"],
        ),
        (
            "suggest ≤ 30 s on every task",
            bool(timing["suggest_seconds"]) and max(timing["suggest_seconds"]) <= 30,
        ),
        (
            "suggest ≤ 10× the range test's wall time on every task",
            bool(timing["ratios"]) and max(timing["ratios"]) <= 10,
        ),
    ]
    return [{"target": name, "pass": bool(ok)} for name, ok in checks]


def print_summary(summary: dict, goals: list[dict], n: int) -> None:
    print(
        f"\nSummary over {n} tasks (regret = mean loss at the rate / best grid mean loss; held-out = test split)"
    )
    print(
        f"  {'method':<11} {'median train':>13} {'worst train':>12} {'median held-out':>16} {'worst held-out':>15} {'divergent':>10}"
    )
    for name in METHODS:
        row = summary[name]
        if not row["tasks"]:
            print(f"  {name:<11} no rate on any task")
            continue
        print(
            f"  {name:<11} {_fmt(row['median_train_regret'], '.2f'):>13} {_fmt(row['worst_train_regret'], '.2f'):>12} "
            f"{_fmt(row['median_heldout_regret'], '.2f'):>16} {_fmt(row['worst_heldout_regret'], '.2f'):>15} {row['divergent']:>10}"
        )
    timing = summary["timing"]
    if timing["ratios"]:
        print(
            f"  suggest wall time: median {np.median(timing['suggest_seconds']):.1f} s, worst "
            f"{max(timing['suggest_seconds']):.1f} s; range test median {np.median(timing['range_test_seconds']):.2f} s; "
            f"ratio median {np.median(timing['ratios']):.0f}×, worst {max(timing['ratios']):.0f}×"
        )
    for goal in goals:
        print(f"  {'PASS' if goal['pass'] else 'FAIL':<4} {goal['target']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", help="comma-separated task names (default: all)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    chosen = tasks()
    if args.tasks:
        wanted = set(args.tasks.split(","))
        chosen = [t for t in chosen if t.name in wanted]
    started = time.perf_counter()
    print(
        f"Real-model advice benchmark: {len(chosen)} tasks; evaluation seeds {list(EVAL_SEEDS)}; grid "
        f"{POINTS_PER_DECADE}/decade (SGD {GRID['sgd'][0]:g}…{GRID['sgd'][1]:.3g}, Adam {GRID['adam'][0]:g}…{GRID['adam'][1]:g}); "
        f"torch {torch.__version__}, {args.threads} threads"
    )
    records = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        for index, task in enumerate(chosen, start=1):
            records.append(run_task(task, pool, args.threads))
            print_task(index, len(chosen), records[-1])
    summary = summarize(records)
    goals = targets(summary, len(records))
    print_summary(summary, goals, len(records))
    total = time.perf_counter() - started
    print(f"Total wall time {total:.0f} s")
    if args.json:
        report = {
            "benchmark": "real_advice",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "tasks": records,
            "summary": summary,
            "targets": goals,
            "total_seconds": total,
        }
        Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()

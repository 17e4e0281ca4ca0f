"""Regret of learning-rate advice on a suite of models, measured against a dense η grid.

For every model file in the suite:

* a dense grid of log-spaced rates × 3 seeds in one batched ``run_sweep`` call (widened by
  one more call when the best rate sits at an edge): the mean final training and validation
  loss over seeds per rate (a diverged trial counts as +inf), and the best of each;
* three methods, each trained at exactly its rate with the same 3 seeds:
  ``lradvisor`` (``advise(config).recommended_lr``, asked once per objective: its training
  regret is that of ``advise(config, score="train")``, the advice for a user who minimises the
  training loss, and its validation regret that of ``advise(config)``, which ranks the probe by
  the file's validation split), ``range_test`` (Smith's test with
  torch-lr-finder's steepest-slope rule, :func:`lradvisor.rangetest.range_test`, seed 0)
  and ``default`` (0.1 for SGD, 1e-3 for Adam);
* regret = the method's mean final loss / the grid's best mean loss, for training and
  validation loss; a recommendation where any seed diverges has regret inf and is flagged;
* 2/λ_max(θ₀), the full-batch stability bound at seed 0's initialisation (Lanczos on exact
  Hessian-vector products), to place the best rate relative to it (docs/theory.md §6, §8).

``advise`` runs in a spawned process with a time limit and an address-space cap, so advice
that raises, hangs or runs out of memory is recorded as an error for that config (and fails
lradvisor's targets) while the benchmark goes on; if ``lradvisor.advisor`` cannot be imported
the other methods still run and the lradvisor column says why.

    python benchmarks/bench_advice.py [--suite benchmarks/advice_suite] [--quick] [--json FILE]
        [--threads 2] [--advise-timeout 600] [--advise-memory-gb 8]

``--quick`` uses 12 grid rates instead of 23 and a third of each model's steps; the output
says so, and its regrets are not comparable with a full run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lradvisor.config import ModelConfig, load_config
from lradvisor.engine.batched import run_sweep
from lradvisor.engine.data import load_shared_dataset
from lradvisor.engine.models import initial_state
from lradvisor.measure.hessian import mlp_loss_function
from lradvisor.rangetest import range_test

SEEDS = (0, 1, 2)
GRID_LOW, GRID_HIGH = 1e-4, 10**1.5
GRID_POINTS = {"full": 23, "quick": 12}  # 4 per decade; ~2 per decade
QUICK_STEP_DIVISOR = 3
WIDEN_POINTS = 4
DEFAULT_RATE = {"sgd": 0.1, "adam": 1e-3}
METHODS = ("lradvisor", "range_test", "default")
TARGET_MEDIAN_REGRET = 1.2
TARGET_MAX_REGRET = 3.0

ADVICE_FIELDS = ("lr_range", "rules", "lambda_max", "eos_lr", "batch_eos_lr", "regime")


@dataclass(frozen=True)
class AdviseLimits:
    """How ``advise`` is run: its own process, with these limits; ``missing`` = why the
    advisor cannot be imported (None when it can)."""

    timeout: float
    memory_gb: float
    threads: int
    missing: str | None


def grid_rates(points: int) -> np.ndarray:
    return np.logspace(np.log10(GRID_LOW), np.log10(GRID_HIGH), points)


def with_steps(config: ModelConfig, steps: int) -> ModelConfig:
    return config.model_copy(
        update={"training": config.training.model_copy(update={"steps": steps})}
    )


def describe(config: ModelConfig) -> str:
    training, model = config.training, config.model
    data = config.data.name if config.data.source == "sklearn" else config.data.source
    batch = "full batch" if training.batch_size is None else f"batch {training.batch_size}"
    return (
        f"{data}, hidden {model.hidden} {model.activation}"
        f"{' +bias' if model.bias else ''}, {training.loss.upper()}, {training.optimizer}, "
        f"{batch}, {training.steps} steps"
    )


def per_rate_means(result) -> dict[str, np.ndarray]:
    """Mean over seeds of the final losses per distinct rate; a diverged trial is +inf."""
    train = np.where(result.diverged, np.inf, result.final_loss)
    val = np.where(result.diverged, np.inf, result.final_val_loss)
    lrs, train_table = result.grid(train)
    _, val_table = result.grid(val)
    _, diverged_table = result.grid(result.diverged.astype(float))
    return {
        "lrs": lrs,
        "train": train_table.mean(axis=1),
        "val": val_table.mean(axis=1),
        "diverged_seeds": diverged_table.sum(axis=1).astype(int),
    }


def merge_grids(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict:
    order = np.argsort(np.concatenate([first["lrs"], second["lrs"]]))
    return {key: np.concatenate([first[key], second[key]])[order] for key in first}


def dense_grid(config: ModelConfig, points: int) -> dict:
    """The grid sweep, widened once by WIDEN_POINTS rates beyond an edge holding the best."""
    rates = grid_rates(points)
    grid = per_rate_means(run_sweep(config, lrs=rates, seeds=SEEDS))
    widened = None
    best = int(np.argmin(grid["train"]))
    if np.isfinite(grid["train"][best]) and best in (0, len(rates) - 1):
        spacing = np.log10(rates[1] / rates[0])
        sign = -1 if best == 0 else 1
        edge = np.log10(rates[best])
        extra = 10 ** (edge + sign * spacing * np.arange(1, WIDEN_POINTS + 1))
        widened = "below" if best == 0 else "above"
        grid = merge_grids(grid, per_rate_means(run_sweep(config, lrs=extra, seeds=SEEDS)))
    grid["widened"] = widened
    return grid


def grid_summary(grid: dict) -> dict:
    best_train = int(np.argmin(grid["train"]))
    best_val = int(np.argmin(grid["val"]))
    return {
        "best_train_lr": float(grid["lrs"][best_train]),
        "best_train_loss": float(grid["train"][best_train]),
        "best_val_lr": float(grid["lrs"][best_val]),
        "best_val_loss": float(grid["val"][best_val]),
        "largest_stable_lr": _largest_stable(grid),
    }


def _largest_stable(grid: dict) -> float | None:
    stable = grid["lrs"][grid["diverged_seeds"] == 0]
    return float(stable.max()) if stable.size else None


def evaluate_rate(config: ModelConfig, rate: float, grid_best: dict) -> dict:
    """Train the seeds at exactly ``rate``; regrets against the grid's best mean losses."""
    result = run_sweep(config, lrs=[rate], seeds=SEEDS)
    means = per_rate_means(result)
    train, val = float(means["train"][0]), float(means["val"][0])
    divergent = bool(result.diverged.any())
    return {
        "train_loss_per_seed": [float(v) for v in result.final_loss],
        "val_loss_per_seed": [float(v) for v in result.final_val_loss],
        "mean_train_loss": train,
        "mean_val_loss": val,
        "diverged_seeds": int(result.diverged.sum()),
        "divergent": divergent,
        "train_regret": _ratio(train, grid_best["best_train_loss"]),
        "val_regret": _ratio(val, grid_best["best_val_loss"]),
    }


def _ratio(value: float, best: float) -> float:
    if not np.isfinite(value):
        return float("inf")
    if not np.isfinite(best) or best <= 0.0:
        return float("nan")
    return value / best


def stability_bound(config: ModelConfig, seed: int = 0) -> dict:
    """2/λ_max of the full-batch training loss at seed ``seed``'s initialisation (float64)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    shared = None if config.data.source == "gaussian_mixture" else load_shared_dataset(config)
    state = initial_state(config, seed, shared, dtype=torch.float64)
    params = state.weights + (state.biases or [])
    loss_fn = mlp_loss_function(
        [p.shape for p in params],
        state.data.X.to(torch.float64),
        state.data.y,
        classes=state.data.classes,
        activation=config.model.activation,
        negative_slope=config.model.negative_slope,
        loss=config.training.loss,
        has_bias=config.model.bias,
    )
    theta = torch.cat([p.reshape(-1) for p in params])
    gradient = torch.func.grad(loss_fn)

    def hvp(vector: np.ndarray) -> np.ndarray:
        tangent = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64).ravel())
        return torch.func.jvp(gradient, (theta,), (tangent,))[1].numpy()

    operator = LinearOperator((theta.numel(), theta.numel()), matvec=hvp, dtype=np.float64)
    lambda_max = float(eigsh(operator, k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0])
    return {"lambda_max": lambda_max, "bound": 2.0 / lambda_max, "parameters": theta.numel()}


def load_advise() -> str | None:
    """None when ``lradvisor.advisor.advise`` imports, else the reason it does not."""
    try:
        from lradvisor.advisor import advise  # noqa: F401
    except Exception as exc:  # the advisor is optional here: any import failure is reported
        return f"{type(exc).__name__}: {exc}"
    return None


def advise_in_child(
    connection, config: ModelConfig, threads: int, memory_bytes: int, score: str
) -> None:
    """Child process: cap the address space, run ``advise``, send back plain fields or the error.

    The cap turns an out-of-memory into an exception here instead of the kernel killing the
    whole benchmark (observed once: advise grew past 23 GB on a 38k-parameter model).
    """
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    torch.set_num_threads(threads)
    try:
        from lradvisor.advisor import advise

        started = time.perf_counter()
        advice = advise(config, score=score)
        reply = {"rate": float(advice.recommended_lr), "seconds": time.perf_counter() - started}
        for key in ADVICE_FIELDS:
            reply[key] = _plain(getattr(advice, key, None))
    except Exception as exc:  # reported to the parent, which records it and goes on
        reply = {
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=4),
        }
    connection.send(reply)
    connection.close()


def advise_isolated(config: ModelConfig, limits: AdviseLimits, score: str = "auto") -> dict:
    """``advise(config, score=score)`` in a spawned process under a time and memory limit."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    memory_bytes = int(limits.memory_gb * 2**30)
    process = context.Process(
        target=advise_in_child, args=(sender, config, limits.threads, memory_bytes, score)
    )
    started = time.perf_counter()
    process.start()
    sender.close()
    reply = None
    try:
        if receiver.poll(limits.timeout):
            reply = receiver.recv()
        else:
            reply = {"error": f"advise exceeded the {limits.timeout:g} s time limit"}
    except EOFError:
        pass
    finally:
        if process.is_alive():
            process.kill()
        process.join()
    if reply is None:
        code = process.exitcode
        how = (
            f"killed by signal {-code} (9: e.g. the out-of-memory killer)"
            if code < 0
            else f"exited with code {code}"
        )
        reply = {"error": f"advise process {how} before replying"}
    reply["process_seconds"] = time.perf_counter() - started
    return reply


def recommend(name: str, config: ModelConfig, limits: AdviseLimits) -> dict:
    """One method's rate, how long it took, and what it said; errors are recorded, not raised."""
    if name == "lradvisor":
        if limits.missing is not None:
            return {"rate": None, "error": f"lradvisor advisor unavailable: {limits.missing}"}
        record = {"rate": None, "error": None, **advise_isolated(config, limits)}
        for_training = advise_isolated(config, limits, score="train")
        record["train_rate"] = for_training.get("rate")
        record["train_error"] = for_training.get("error")
        return record
    started = time.perf_counter()
    record: dict = {"rate": None, "error": None}
    try:
        if name == "range_test":
            result = range_test(config, seed=0)
            record["rate"] = float(result.suggested_lr)
            record["stopped_early"] = result.stopped_early
            record["iterations"] = result.n_iterations
            record["rule"] = result.suggestion_rule
        else:
            record["rate"] = DEFAULT_RATE[config.training.optimizer]
    except Exception as exc:  # one failing method must not stop the benchmark
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=4)
    record["seconds"] = time.perf_counter() - started
    return record


def run_config(path: Path, *, quick: bool, limits: AdviseLimits) -> dict:
    started = time.perf_counter()
    config = load_config(path)
    if quick:
        config = with_steps(config, max(1, config.training.steps // QUICK_STEP_DIVISOR))
    grid = dense_grid(config, GRID_POINTS["quick" if quick else "full"])
    best = grid_summary(grid)
    record: dict = {
        "name": config.name,
        "file": str(path),
        "description": describe(config),
        "steps": config.training.steps,
        "full_batch": config.training.batch_size is None,
        "grid": grid,
        **best,
        "grid_seconds": time.perf_counter() - started,
    }
    try:
        record["stability"] = stability_bound(config)
    except Exception as exc:  # an optional diagnostic
        record["stability"] = {"error": f"{type(exc).__name__}: {exc}"}
    record["methods"] = {}
    for name in METHODS:
        method = recommend(name, config, limits)
        if method["rate"] is not None:
            method.update(evaluate_rate(config, method["rate"], best))
        if method.get("train_rate") is not None:  # lradvisor's advice for the training loss
            for_training = evaluate_rate(config, method["train_rate"], best)
            method["train_regret"] = for_training["train_regret"]
            method["mean_train_loss"] = for_training["mean_train_loss"]
            method["divergent"] = method["divergent"] or for_training["divergent"]
        elif name == "lradvisor" and method["rate"] is not None:
            method["train_regret"] = float("inf")  # the training-loss advice failed
        record["methods"][name] = method
    record["wall_seconds"] = time.perf_counter() - started
    return record


def _fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if np.isinf(value):
        return "inf"
    return format(value, spec)


def print_config(index: int, total: int, record: dict) -> None:
    print(f"\n[{index}/{total}] {record['name']}: {record['description']}")
    widened = f", widened {record['grid']['widened']}" if record["grid"]["widened"] else ""
    print(
        f"  grid {len(record['grid']['lrs'])} rates × {len(SEEDS)} seeds{widened}: best train "
        f"rate {_fmt(record['best_train_lr'])} (loss {_fmt(record['best_train_loss'], '.3e')}), "
        f"best val rate {_fmt(record['best_val_lr'])} (loss {_fmt(record['best_val_loss'], '.3e')}), "
        f"largest stable {_fmt(record['largest_stable_lr'])}"
    )
    stability = record["stability"]
    if "bound" in stability:
        print(
            f"  2/λ_max(θ₀) = {_fmt(stability['bound'])} (λ_max {_fmt(stability['lambda_max'])}, "
            f"full batch, seed 0): best train rate = "
            f"{_fmt(record['best_train_lr'] / stability['bound'], '.2f')} × bound"
        )
    else:
        print(f"  2/λ_max(θ₀) unavailable: {stability['error']}")
    print(f"  {'method':<11} {'rate':>9} {'train regret':>13} {'val regret':>11} {'time':>8}")
    for name, method in record["methods"].items():
        if method["rate"] is None:
            print(f"  {name:<11} {method['error']}")
            continue
        flag = "  DIVERGED" if method["divergent"] else ""
        if method.get("train_rate") is not None:
            flag += f"  (training-loss advice: {_fmt(method['train_rate'])})"
        print(
            f"  {name:<11} {_fmt(method['rate']):>9} {_fmt(method['train_regret'], '.2f'):>13} "
            f"{_fmt(method['val_regret'], '.2f'):>11} {method['seconds']:7.2f}s{flag}"
        )
    print(f"  wall time {record['wall_seconds']:.1f} s")


def print_overview(records: list[dict]) -> None:
    """One row per config: the grid's best rate, where it sits against 2/λ_max(θ₀), and
    every method's rate with its training regret (D = a seed diverged)."""
    print("\nOverview (rate / training regret per method; × bound = best rate · λ_max(θ₀) / 2)")
    header = f"  {'config':<30} {'best η':>7} {'× bound':>8}"
    for name in METHODS:
        header += f" {name:>19}"
    print(header)
    for record in records:
        bound = record["stability"].get("bound")
        ratio = record["best_train_lr"] / bound if bound else None
        row = f"  {record['name']:<30} {_fmt(record['best_train_lr']):>7} {_fmt(ratio, '.2f'):>8}"
        for name in METHODS:
            method = record["methods"][name]
            if method["rate"] is None:
                row += f" {'error':>19}"
                continue
            mark = " D" if method["divergent"] else ""
            cell = f"{_fmt(method['rate'])} / {_fmt(method['train_regret'], '.3g')}{mark}"
            row += f" {cell:>19}"
        print(row)


def summarize(records: list[dict]) -> dict:
    summary = {}
    for name in METHODS:
        methods = [r["methods"][name] for r in records]
        rated = [m for m in methods if m["rate"] is not None]
        train = np.array([m["train_regret"] for m in rated], dtype=float)
        val = np.array([m["val_regret"] for m in rated], dtype=float)
        summary[name] = {
            "configs": len(rated),
            "errors": len(methods) - len(rated),
            "median_train_regret": float(np.median(train)) if rated else None,
            "max_train_regret": float(np.max(train)) if rated else None,
            "median_val_regret": float(np.median(val)) if rated else None,
            "divergent": sum(m["divergent"] for m in rated),
        }
    return summary


def targets(summary: dict, n_configs: int, *, available: bool) -> list[dict]:
    """lradvisor's four targets: n/a when the advisor cannot be imported; a config where
    ``advise`` raised fails them all."""
    ours, peer = summary["lradvisor"], summary["range_test"]
    names = [
        f"median training regret ≤ {TARGET_MEDIAN_REGRET}",
        f"no training regret above {TARGET_MAX_REGRET}",
        "median validation regret below the range test's",
        "no divergent recommendation",
    ]
    if not available:
        return [{"target": name, "pass": None} for name in names]
    if ours["configs"] == 0:
        return [{"target": name, "pass": False} for name in names]
    complete = ours["configs"] == n_configs
    peer_val = peer["median_val_regret"]
    checks = [
        ours["median_train_regret"] <= TARGET_MEDIAN_REGRET,
        ours["max_train_regret"] <= TARGET_MAX_REGRET,
        peer_val is not None and ours["median_val_regret"] < peer_val,
        ours["divergent"] == 0,
    ]
    return [
        {"target": name, "pass": bool(check and complete)}
        for name, check in zip(names, checks, strict=True)
    ]


def print_summary(summary: dict, goals: list[dict], n_configs: int, missing: str | None) -> None:
    print(f"\nSummary over {n_configs} configs (regret = mean final loss / best grid mean loss)")
    print(
        f"  {'method':<11} {'median train':>13} {'max train':>10} {'median val':>11} "
        f"{'divergent':>10} {'errors':>7}"
    )
    for name, row in summary.items():
        if row["configs"] == 0:
            reason = f"lradvisor advisor unavailable: {missing}" if missing else "raised everywhere"
            print(f"  {name:<11} {reason}")
            continue
        print(
            f"  {name:<11} {_fmt(row['median_train_regret'], '.2f'):>13} "
            f"{_fmt(row['max_train_regret'], '.2f'):>10} {_fmt(row['median_val_regret'], '.2f'):>11} "
            f"{row['divergent']:>10} {row['errors']:>7}"
        )
    errors = summary["lradvisor"]["errors"]
    note = (
        f" ({errors} config(s) where advise raised count as failures)"
        if errors and not missing
        else ""
    )
    print(
        f"Targets — lradvisor: median training regret ≤ {TARGET_MEDIAN_REGRET}, none above "
        f"{TARGET_MAX_REGRET}, median validation regret below the range test's, no divergent "
        f"recommendation{note}"
    )
    for goal in goals:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[goal["pass"]]
        print(f"  {verdict:<4} {goal['target']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="benchmarks/advice_suite")
    parser.add_argument("--quick", action="store_true", help="12 grid rates, a third of the steps")
    parser.add_argument("--json", metavar="FILE", help="write every number to FILE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--advise-timeout", type=float, default=600.0, help="seconds per advise call (default 600)"
    )
    parser.add_argument(
        "--advise-memory-gb",
        type=float,
        default=8.0,
        help="address-space cap of the advise process in GiB, 0 = none (default 8)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    files = sorted(Path(args.suite).glob("*.yaml"))
    if not files:
        raise SystemExit(f"no *.yaml model files in {args.suite}")
    mode = "quick" if args.quick else "full"
    if args.quick:
        print(
            f"QUICK MODE: {GRID_POINTS['quick']} grid rates instead of {GRID_POINTS['full']} and "
            f"1/{QUICK_STEP_DIVISOR} of each model's steps; regrets are indicative only."
        )
    print(
        f"Advice benchmark: {len(files)} configs from {args.suite}; grid {GRID_POINTS[mode]} rates "
        f"{GRID_LOW:g} … {GRID_HIGH:.3g} × seeds {list(SEEDS)}; {args.threads} threads"
    )
    missing = load_advise()
    if missing:
        print(f"lradvisor advisor unavailable: {missing}")
    else:
        print(
            f"advise runs in its own process: ≤ {args.advise_timeout:g} s and "
            f"{args.advise_memory_gb:g} GiB per call (0 = no cap); its time excludes the start-up"
        )
    limits = AdviseLimits(args.advise_timeout, args.advise_memory_gb, args.threads, missing)
    records = []
    for index, path in enumerate(files, start=1):
        record = run_config(path, quick=args.quick, limits=limits)
        records.append(record)
        print_config(index, len(files), record)
    print_overview(records)
    summary = summarize(records)
    goals = targets(summary, len(records), available=missing is None)
    print_summary(summary, goals, len(records), missing)
    total = time.perf_counter() - started
    print(f"Total wall time {total:.1f} s ({mode} mode)")
    if args.json:
        report = {
            "benchmark": "advice",
            "mode": mode,
            "suite": args.suite,
            "seeds": list(SEEDS),
            "grid_points": GRID_POINTS[mode],
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "advisor_error": missing,
            "advise_timeout_s": args.advise_timeout,
            "advise_memory_gb": args.advise_memory_gb,
            "configs": records,
            "summary": summary,
            "targets": goals,
            "total_seconds": total,
        }
        Path(args.json).write_text(json.dumps(_plain(report), indent=2, allow_nan=False) + "\n")
        print(f"JSON written to {args.json}")


def _plain(value: object) -> object:
    """JSON-ready copy: arrays to lists, numpy scalars to Python, inf/NaN to strings."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


if __name__ == "__main__":
    main()

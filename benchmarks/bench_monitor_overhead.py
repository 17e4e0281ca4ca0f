"""Overhead of ConservationMonitor.observe() on one SGD step of an MLP 784-1024-1024-10.

Two identical models (same initialisation, default biased nn.Linear, ReLU) train on the
same random batches (256 × 784, float32, SGD lr 0.01, cross-entropy); one of them calls
``monitor.observe()`` between ``backward()`` and ``step()``. Blocks of steps alternate
between the two (and which goes first) so drifts in machine speed hit both alike; the
reported figure is the median over repeats of the mean step time of a block, in wall-clock
time and in process CPU time (the latter is steadier on a shared machine).

    python benchmarks/bench_monitor_overhead.py [--json] [--repeats 7] [--steps 30]
        [--delta-dtype float32|float64]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch
from torch import nn

from lradvisor.measure.monitor import ConservationMonitor

WIDTHS = (784, 1024, 1024, 10)
BATCH = 256
LEARNING_RATE = 0.01
TARGET_RATIO = 1.05


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(WIDTHS)):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def _block_time(model, optimizer, monitor, batches) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds per step over one block of steps."""
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(inputs), targets).backward()
        if monitor is not None:
            monitor.observe()
        optimizer.step()
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    return wall / len(batches), cpu / len(batches)


def run(
    *,
    repeats: int,
    steps: int,
    warmup: int,
    threads: int,
    delta_dtype: torch.dtype | None = None,
    seed: int = 0,
) -> dict:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    batches = [
        (
            torch.randn(BATCH, WIDTHS[0], generator=generator),
            torch.randint(0, WIDTHS[-1], (BATCH,), generator=generator),
        )
        for _ in range(steps)
    ]
    plain_model, watched_model = _mlp(seed), _mlp(seed)
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=LEARNING_RATE)
    watched_optimizer = torch.optim.SGD(watched_model.parameters(), lr=LEARNING_RATE)
    monitor = ConservationMonitor(
        watched_model, optimizer=watched_optimizer, delta_dtype=delta_dtype
    )
    runs = {
        "plain": (plain_model, plain_optimizer, None),
        "monitored": (watched_model, watched_optimizer, monitor),
    }

    for model, optimizer, watcher in runs.values():
        _block_time(model, optimizer, watcher, batches[:warmup])
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for repeat in range(repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in order:
            times[name].append(_block_time(*runs[name], batches))

    plain = statistics.median(wall for wall, _ in times["plain"])
    monitored = statistics.median(wall for wall, _ in times["monitored"])
    plain_cpu = statistics.median(cpu for _, cpu in times["plain"])
    monitored_cpu = statistics.median(cpu for _, cpu in times["monitored"])
    return {
        "benchmark": "monitor_overhead",
        "widths": list(WIDTHS),
        "batch": BATCH,
        "threads": threads,
        "repeats": repeats,
        "steps_per_repeat": steps,
        "plain_step_s": plain,
        "monitored_step_s": monitored,
        "ratio": monitored / plain,
        "plain_step_cpu_s": plain_cpu,
        "monitored_step_cpu_s": monitored_cpu,
        "cpu_ratio": monitored_cpu / plain_cpu,
        "delta_dtype": str(monitor.delta_dtype or "default"),
        "target_ratio": TARGET_RATIO,
        "torch": torch.__version__,
        "laws": [law.name for law in monitor.report()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--delta-dtype", choices=("float32", "float64"), default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    result = run(
        repeats=args.repeats,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        delta_dtype=getattr(torch, args.delta_dtype) if args.delta_dtype else None,
    )
    if args.json:
        print(json.dumps(result))
        return
    print(f"median of {args.repeats} blocks × {args.steps} steps, {args.threads} threads")
    print("                      wall ms    CPU ms")
    for label, key in (("plain SGD step", "plain_step"), ("monitored SGD step", "monitored_step")):
        print(f"{label:<20} {result[key + '_s'] * 1e3:9.3f} {result[key + '_cpu_s'] * 1e3:9.3f}")
    verdict = "ok" if result["ratio"] <= TARGET_RATIO else "above target"
    print(f"{'ratio':<20} {result['ratio']:9.4f} {result['cpu_ratio']:9.4f}")
    print(f"target ≤ {TARGET_RATIO} (wall): {verdict}")


if __name__ == "__main__":
    main()

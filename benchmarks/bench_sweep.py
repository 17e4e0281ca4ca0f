"""`lradvisor sweep --model examples/e5.yaml` end to end against a plain research script.

Both run as fresh processes (imports included) in one paired run: the CLI sweep with its
spectral prediction, then `benchmarks/research_e5_sweep.py` (10 rates × 5 seeds × 2000 steps,
one nn.Module + torch.optim loop per trial, float32 direct drift), then the CLI again; the
sweep's time is the median of its runs. Peak memory is each process's maximum resident set.

    python benchmarks/bench_sweep.py            # targets: ≤ 3 s, ≤ 400 MB, ≥ 10× the script
    python benchmarks/bench_sweep.py --json     # one JSON line as well
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    out = child.stdout.read().decode() if child.stdout else ""
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed (status {status})")
    return wall, usage.ru_maxrss / 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2, help="sweep runs around the script")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "sweep.json"
        sweep = [sys.executable, "-m", "lradvisor.cli", "sweep", "--model", "examples/e5.yaml"]
        sweep += ["--json", str(report)]
        research = [sys.executable, "benchmarks/research_e5_sweep.py"]
        runs = [timed(sweep)]
        script_wall, script_memory, script_out = timed(research)
        for _ in range(max(0, args.repeats - 1)):
            runs.append(timed(sweep))
        data = json.loads(report.read_text())
    walls = sorted(wall for wall, _, _ in runs)
    sweep_wall = walls[len(walls) // 2]
    sweep_memory = max(memory for _, memory, _ in runs)
    found = re.search(r"alpha = ([0-9.]+)\s+R2 = ([0-9.]+)", script_out)
    script_alpha, script_r2 = (
        (float(found.group(1)), float(found.group(2))) if found else (None, None)
    )
    summary = {
        "benchmark": "sweep_e5_end_to_end",
        "cpus": os.cpu_count(),
        "sweep_s": sweep_wall,
        "sweep_runs_s": [wall for wall, _, _ in runs],
        "sweep_peak_mb": sweep_memory,
        "engine_s": data["wall_time_s"],
        "research_script_s": script_wall,
        "research_script_peak_mb": script_memory,
        "speedup": script_wall / sweep_wall,
        "alpha": data["alpha"],
        "r2": data["r2"],
        "research_alpha": script_alpha,
        "research_r2": script_r2,
        "prediction_method": (data.get("prediction") or {}).get("method"),
    }
    print(f"E5 sweep end to end, {os.cpu_count()} CPUs, one paired run")
    print(
        f"  lradvisor sweep (prediction included): {sweep_wall:6.2f} s (runs "
        f"{', '.join(f'{w:.2f}' for w, _, _ in runs)}; engine {data['wall_time_s']:.2f} s), "
        f"peak {sweep_memory:.0f} MB   (targets ≤ 3 s, ≤ 400 MB)"
    )
    print(
        f"  research script (per-trial loop):     {script_wall:6.2f} s, peak {script_memory:.0f} MB"
    )
    print(f"  speed-up: {script_wall / sweep_wall:.1f}×   (target ≥ 10×)")
    print(
        f"  α = {data['alpha']:.4f}, R² = {data['r2']:.4f} (exact η²·S); research script "
        f"(float32 C(T) − C(0)): α = {script_alpha}, R² = {script_r2}"
    )
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

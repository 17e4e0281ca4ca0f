#!/usr/bin/env python3
"""Regenerate the README's example outputs from the current code, or check that they match.

    python scripts/readme_examples.py --list               # the examples and their cost
    python scripts/readme_examples.py --write [ID ...]     # run them, rewrite their blocks
    python scripts/readme_examples.py --check [ID ...]     # run them, compare (exit 1)
    python scripts/readme_examples.py --check --max-seconds 30   # the quick ones (CI)
    python scripts/readme_examples.py --print ID ...       # run them, print the blocks

A README code block is an example when the line right before its opening fence is
``<!-- example: ID -->``; :data:`EXAMPLES` says how each one is produced (a command, or a
few commands and files in a scratch folder). ``--check`` compares the structure exactly
(the number of lines, and every line with its numbers taken out) and the numbers within
the example's relative tolerance, after masking what differs between runs by nature:
wall times, commits, temporary folders. Examples marked ``check=False`` are measurements
(benchmarks) that ``--write`` can refresh but CI does not rerun. ``--check`` without IDs
runs every checked example: a few minutes on two cores, plus 10–20 for the full replication.
CI checks those estimated at half a minute or less (``--max-seconds 30``: the sweep, suggest,
factory-error and Optuna-diff outputs); the study, MLflow and replication outputs are checked
by hand before a release with ``--check`` (their code paths have their own tests).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- example: ([a-z0-9-]+) -->$")
#: What a scratch folder is called in the README (outputs print absolute paths).
SCRATCH_NAME = "/tmp/readme"

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
MASKS = [
    (re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?s\b"), "<time>"),  # 1.62 s, 7.4s
    (re.compile(r"\bcommit [0-9a-f]{7,40}(?: \+ local changes)?"), "commit <commit>"),
    (re.compile(r"\b(?:about|roughly) [\d.]+ (?:s|seconds|minutes|hours)\b"), "<duration>"),
]


@dataclass(frozen=True)
class Example:
    """How one README block is produced: ``make(scratch) -> text``."""

    id: str
    section: str
    make: Callable[[Path], str]
    seconds: int
    tolerance: float = 0.02
    check: bool = True


# --------------------------------------------------------------------------- helpers


def _environment(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LRADVISOR_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    env["LRADVISOR_MLFLOW_SPOOL"] = str(scratch / "spool")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _streams(
    args: list[str],
    *,
    cwd: Path,
    scratch: Path,
    code: int | None = 0,
    env: dict[str, str] | None = None,
) -> tuple[str, str]:
    """(stdout, stderr) of a command; the scratch folder's path shows as SCRATCH_NAME."""
    done = subprocess.run(
        args,
        cwd=cwd,
        env={**_environment(scratch), **(env or {})},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if code is not None and done.returncode != code:
        raise RuntimeError(
            f"{' '.join(args)} exited {done.returncode} (expected {code}):\n{done.stderr[-3000:]}"
        )
    out, err = (
        s.replace(str(scratch), SCRATCH_NAME).rstrip("\n") for s in (done.stdout, done.stderr)
    )
    return out, err


def _run(args: list[str], *, stderr: bool = False, **options) -> str:
    """stdout (or stderr) of a command (options as for :func:`_streams`)."""
    return _streams(args, **options)[1 if stderr else 0]


def lradvisor(*args: str, cwd: Path, scratch: Path, **options) -> str:
    return _run([sys.executable, "-m", "lradvisor", *args], cwd=cwd, scratch=scratch, **options)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------- the examples


def sweep_e5(scratch: Path) -> str:
    return lradvisor("sweep", "--model", "examples/e5.yaml", cwd=ROOT, scratch=scratch)


def sweep_bad_yaml(scratch: Path) -> str:
    text = (ROOT / "examples" / "e5.yaml").read_text()
    (scratch / "bad.yaml").write_text(text.replace("activation: relu", "activation: gelu", 1))
    error = lradvisor(
        "sweep", "--model", "bad.yaml", cwd=scratch, scratch=scratch, code=2, stderr=True
    )
    return f"$ lradvisor sweep --model bad.yaml\n{error}\n$ echo $?\n2"


def suggest_cnn(scratch: Path) -> str:
    return _run([sys.executable, "examples/suggest_cnn.py"], cwd=ROOT, scratch=scratch)


def suggest_e5(scratch: Path, *, write: bool) -> str:
    plot = "docs/suggest_e5.png" if write else str(scratch / "suggest_e5.png")
    text = lradvisor(
        "suggest",
        "--model",
        "examples/e5.yaml",
        "--probe",
        "--plot",
        plot,
        cwd=ROOT,
        scratch=scratch,
    )
    return text.replace(f"{SCRATCH_NAME}/suggest_e5.png", "docs/suggest_e5.png")


def suggest_residual(scratch: Path) -> str:
    return lradvisor(
        "suggest",
        "--model",
        "examples/residual_mlp.yaml",
        "--optimizer",
        "momentum",
        "--widths",
        cwd=ROOT,
        scratch=scratch,
    )


def factory_error(scratch: Path) -> str:
    (scratch / "shapes.py").write_text(
        "from torch import nn\n\n\ndef fixed(in_features, num_classes):\n"
        "    return nn.Linear(11, num_classes)\n"
    )
    (scratch / "m.yaml").write_text(
        "model: {factory: 'shapes:fixed'}\ndata: {n: 40, dim: 8, classes: 3}\n"
    )
    return lradvisor(
        "sweep", "--model", "m.yaml", cwd=scratch, scratch=scratch, code=2, stderr=True
    )


def existing_study_diff(scratch: Path) -> str:
    text = _run(
        ["diff", "-u", "examples/existing_study_plain.py", "examples/existing_study.py"],
        cwd=ROOT,
        scratch=scratch,
        code=1,
    )
    return "\n".join(text.splitlines()[2:])  # without the two file-name lines


def study_digits(scratch: Path) -> str:
    text = lradvisor(
        "study",
        "run",
        str(ROOT / "examples" / "digits_study.yaml"),
        cwd=scratch,
        scratch=scratch,
    )
    return text.replace(f"sqlite:///{SCRATCH_NAME}", "sqlite:///…")


#: The study run's metrics in the README, in this order, each with what it is read with.
PARENT_METRICS = (
    ("alpha_fitted", "95% CI [{alpha_ci_low:.3f}, {alpha_ci_high:.3f}], R² {alpha_r2:.3f}"),
    (
        "alpha_fitted_below_half_bound",
        "95% CI [{alpha_below_half_bound_ci_low:.3f}, {alpha_below_half_bound_ci_high:.3f}]",
    ),
    ("alpha_predicted", ""),
    ("drift_correlation", ""),
    ("drift_median_relative_error", ""),
    ("template_eos_lr", "2/λ_max(θ₀) of the template, full data"),
    ("tau_a", "τ = a/η + b, R² {tau_r2:.3f}"),
    ("trials_complete", ""),
    ("trials_pruned", ""),
)


def mlflow_study_run(scratch: Path) -> str:
    lradvisor(
        "study", "run", str(ROOT / "examples" / "e5_study.yaml"), cwd=scratch, scratch=scratch
    )
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{scratch / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e5-lr")
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`lradvisor.role` = 'study'"
    )
    metrics = parent.data.metrics
    lines = []
    for name, note in PARENT_METRICS:
        if name not in metrics:
            continue
        value = metrics[name]
        shown = f"{value:g}" if not float(value).is_integer() else f"{int(value)}"
        try:
            note = note.format(**metrics)
        except (KeyError, ValueError):
            note = ""
        lines.append(f"{name:<32} {shown:<11} {f'({note})' if note else ''}".rstrip())
    return "\n".join(lines)


def mlflow_offline(scratch: Path) -> str:
    """The README's outage session: a study against a server that is not there yet, then the
    server, then ``lradvisor mlflow sync``; the port is shown as 5999."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    study = str(ROOT / "examples" / "e5_study.yaml")
    spool = {"LRADVISOR_MLFLOW_SPOOL": str(scratch / "runs" / "mlflow-spool")}
    run = [sys.executable, "-m", "lradvisor", "study", "run", study, "--n-trials", "6"]
    summary, errors = _streams(
        [*run, "--tracking-uri", uri], cwd=scratch, scratch=scratch, env=spool
    )
    warning = next(line for line in errors.splitlines() if "MLflow unreachable" in line)
    note = next(line for line in summary.splitlines() if line.startswith("note: MLflow"))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{scratch / 'server.db'}",
        ],
        cwd=scratch,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(uri)
        sent = lradvisor("mlflow", "sync", cwd=scratch, scratch=scratch, env=spool)
    finally:
        server.terminate()
        server.wait(30)
    session = [
        "$ lradvisor study run examples/e5_study.yaml --n-trials 6 --tracking-uri "
        "http://127.0.0.1:5999",
        warning,
        "…",
        note,
        "$ mlflow server --host 127.0.0.1 --port 5999 --backend-store-uri sqlite:///server.db &",
        "$ lradvisor mlflow sync",
        sent,
    ]
    return "\n".join(session).replace(uri, "http://127.0.0.1:5999")


def _wait_for(uri: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {uri} did not start")


def reproduce_all(scratch: Path) -> str:
    """The first lines, the blocks of E5, E7 and E23, and the last line of the full run."""
    text = lradvisor("reproduce", "all", "--no-mlflow", cwd=scratch, scratch=scratch)
    lines = text.splitlines()
    keep, block = [], None
    for line in lines:
        head = line.split(" ", 1)[0]
        if re.fullmatch(r"E\d+", head):
            block = head
        if line.startswith("verdicts:"):
            block = None
            keep.extend(["…", line])
            continue
        if block is None and not keep[-1:] == ["…"] and not re.fullmatch(r"E\d+", head):
            if not any(re.fullmatch(r"E\d+", x.split(" ", 1)[0]) for x in keep):
                keep.append(line)  # the header before the first experiment
            continue
        if block in ("E5", "E7", "E23"):
            keep.append(line)
    return "\n".join(keep)


def bench_real_advice(scratch: Path) -> str:
    return _run(
        [sys.executable, "benchmarks/bench_real_advice.py", "--json", str(scratch / "b.json")],
        cwd=ROOT,
        scratch=scratch,
    )


EXAMPLES = {
    example.id: example
    for example in (
        Example("sweep-e5", "lradvisor sweep", sweep_e5, 15),
        Example("sweep-bad-yaml", "lradvisor sweep", sweep_bad_yaml, 5),
        Example("suggest-cnn", "suggest (Python)", suggest_cnn, 30),
        Example("suggest-e5", "suggest (CLI)", lambda s: suggest_e5(s, write=False), 20),
        Example("suggest-residual", "suggest: your own model", suggest_residual, 20),
        Example("factory-error", "suggest: your own model", factory_error, 5),
        Example("existing-study-diff", "Optuna", existing_study_diff, 1, tolerance=0.0),
        Example("study-digits", "lradvisor study run", study_digits, 40),
        Example("mlflow-study-run", "MLflow", mlflow_study_run, 60),
        Example("mlflow-offline", "MLflow", mlflow_offline, 60),
        Example("reproduce-all", "Reproducing the paper", reproduce_all, 300),
        Example("bench-real-advice", "How good the advice is", bench_real_advice, 300, check=False),
    )
}
#: --write runs these instead (they also refresh a file the README shows).
WRITERS = {"suggest-e5": lambda scratch: suggest_e5(scratch, write=True)}


# ------------------------------------------------------------------ README blocks


def blocks(text: str) -> dict[str, tuple[int, int]]:
    """ID → (first, end) line indexes of the block's content (between its fences)."""
    lines = text.splitlines()
    found: dict[str, tuple[int, int]] = {}
    for index, line in enumerate(lines):
        marker = MARKER.match(line.strip())
        if not marker:
            continue
        fence = index + 1
        if fence >= len(lines) or not lines[fence].startswith("```"):
            raise SystemExit(f"README line {index + 1}: {marker[1]} is not followed by a ``` fence")
        end = next((i for i in range(fence + 1, len(lines)) if lines[i].startswith("```")), None)
        if end is None:
            raise SystemExit(f"README: the block of {marker[1]} is not closed")
        found[marker[1]] = (fence + 1, end)
    return found


def _masked(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def differences(expected: str, actual: str, tolerance: float) -> list[str]:
    """Where ``actual`` departs from ``expected``: structure exactly, numbers within tolerance."""
    old, new = _masked(expected).splitlines(), _masked(actual).splitlines()
    problems = []
    if len(old) != len(new):
        problems.append(f"{len(old)} lines in the README, {len(new)} from the code")
    for number, (a, b) in enumerate(zip(old, new, strict=False), start=1):
        if NUMBER.sub("#", a).split() != NUMBER.sub("#", b).split():
            problems.append(f"line {number}: README {a.strip()!r} / code {b.strip()!r}")
            continue
        for x, y in zip(NUMBER.findall(a), NUMBER.findall(b), strict=False):
            u, v = float(x), float(y)
            if abs(u - v) > tolerance * max(abs(u), abs(v)) + 1e-12:
                problems.append(f"line {number}: {x} in the README, {y} from the code")
    return problems


def produce(example: Example, *, write: bool) -> str:
    scratch = Path(tempfile.mkdtemp(prefix="lradvisor-readme-"))
    try:
        maker = WRITERS.get(example.id, example.make) if write else example.make
        return maker(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="list the examples")
    mode.add_argument("--write", action="store_true", help="rerun and rewrite README blocks")
    mode.add_argument("--check", action="store_true", help="rerun and compare (exit 1 on drift)")
    mode.add_argument("--print", action="store_true", help="rerun and print, README untouched")
    parser.add_argument("ids", nargs="*", help="examples (default: all; --check: all checked)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="without IDs: only the examples estimated to take at most this long (CI)",
    )
    args = parser.parse_args()

    text = README.read_text()
    marked = blocks(text)
    if args.list:
        for example in EXAMPLES.values():
            where = "in README" if example.id in marked else "NOT MARKED in README"
            kind = "checked" if example.check else "measurement, --write only"
            print(
                f"{example.id:<22} ~{example.seconds:>4} s  {example.section:<26} {kind}, {where}"
            )
        return 0
    unknown = [i for i in args.ids if i not in EXAMPLES]
    if unknown:
        parser.error(f"unknown example(s): {', '.join(unknown)}; see --list")
    chosen = args.ids or [i for i, e in EXAMPLES.items() if e.check or args.write]
    if args.max_seconds is not None and not args.ids:
        longer = [i for i in chosen if EXAMPLES[i].seconds > args.max_seconds]
        if longer:
            print(f"left out, estimated over {args.max_seconds:g} s: {', '.join(longer)}")
        chosen = [i for i in chosen if i not in longer]
    if args.print and not args.ids:
        parser.error("--print needs the IDs to run")
    missing = [i for i in chosen if i not in marked]
    if missing and args.check:
        if args.ids:
            print(f"not marked in README (<!-- example: ID --> before the block): {missing}")
            return 1
        print(f"skipped, no block marked for them in the README: {', '.join(missing)}")
        chosen = [i for i in chosen if i in marked]

    drifted = 0
    for identifier in chosen:
        example = EXAMPLES[identifier]
        started = time.perf_counter()
        output = produce(example, write=args.write)
        took = time.perf_counter() - started
        if args.print:
            print(f"<!-- example: {identifier} -->  ({took:.0f} s)\n```\n{output}\n```")
            continue
        if args.write:
            if identifier not in marked:
                print(f"{identifier}: produced in {took:.0f} s, but the README has no marker")
                continue
            lines = text.splitlines()
            first, end = blocks(text)[identifier]
            text = "\n".join([*lines[:first], *output.splitlines(), *lines[end:]]) + "\n"
            README.write_text(text)
            print(f"{identifier}: rewritten ({took:.0f} s)")
            continue
        first, end = marked[identifier]
        expected = "\n".join(text.splitlines()[first:end])
        problems = differences(expected, output, example.tolerance)
        if problems:
            drifted += 1
            print(f"{identifier}: DRIFTED from the code ({took:.0f} s)")
            for problem in problems[:20]:
                print(f"  {problem}")
            diff = difflib.unified_diff(
                expected.splitlines(), output.splitlines(), "README", "code", lineterm="", n=1
            )
            print(textwrap.indent("\n".join(list(diff)[:60]), "    "))
            print(f"  regenerate with: python scripts/readme_examples.py --write {identifier}")
        else:
            print(f"{identifier}: matches ({took:.0f} s)")
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())

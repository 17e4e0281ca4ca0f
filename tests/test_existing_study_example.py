"""examples/existing_study*.py: both studies run, and lradvisor costs at most five lines."""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PLAIN = EXAMPLES / "existing_study_plain.py"
WITH_LRADVISOR = EXAMPLES / "existing_study.py"
MAX_CHANGED_LINES = 5
BEST_VALUE = re.compile(r"^best validation loss: (\d+\.\d+)$", re.MULTILINE)


def changed_lines(before: Path, after: Path, sign: str) -> list[str]:
    """Non-blank lines ``diff`` marks as added or changed (``sign="+"``) or removed ("-")."""
    diff = difflib.unified_diff(
        before.read_text().splitlines(), after.read_text().splitlines(), lineterm="", n=0
    )
    return [
        line[1:].strip()
        for line in diff
        if line.startswith(sign) and not line.startswith(sign * 3) and line[1:].strip()
    ]


def run_example(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(path), "--n-trials", "6"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_lradvisor_adds_at_most_five_lines():
    added = changed_lines(PLAIN, WITH_LRADVISOR, "+")
    assert 0 < len(added) <= MAX_CHANGED_LINES, "\n".join(added)
    assert any("TrialMonitor(" in line for line in added)
    assert any("ConservationPruner(" in line for line in added)


def test_removed_lines_are_only_the_report_and_prune_calls():
    assert changed_lines(PLAIN, WITH_LRADVISOR, "-") == [
        "trial.report(val_loss, step)",
        "if trial.should_prune():",
        "raise optuna.TrialPruned()",
        "pruner=optuna.pruners.MedianPruner(n_warmup_steps=REPORT_EVERY),",
    ]


@pytest.mark.parametrize("path", [PLAIN, WITH_LRADVISOR], ids=["plain", "lradvisor"])
def test_example_runs_and_prints_a_best_value(path):
    proc = run_example(path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = BEST_VALUE.search(proc.stdout)
    assert match is not None, proc.stdout
    assert 0.0 < float(match.group(1)) < 2.5  # below ln(10), the loss of a uniform guess
    assert "best params: {" in proc.stdout
    if path == WITH_LRADVISOR:
        assert "user_attrs_lradvisor.prune_reason" in proc.stdout or "PRUNED" not in proc.stdout

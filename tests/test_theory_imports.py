"""``lradvisor.theory`` stays numpy + scipy only (docs/theory.md is checked against it in isolation)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lradvisor.theory

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "optuna", "mlflow")


def test_importing_theory_loads_no_heavy_framework():
    # A fresh interpreter: this test session's conftest has already imported torch.
    probe = f"import lradvisor.theory, sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "[]"


def test_public_api_is_declared():
    assert sorted(lradvisor.theory.__all__) == sorted(
        name
        for name in dir(lradvisor.theory)
        if not name.startswith("_") and callable(getattr(lradvisor.theory, name))
    )

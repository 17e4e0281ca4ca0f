"""A non-editable install works on its own: package data, entry points, version, typing.

The package is built from a copy of the working tree (so the test sees what a clean clone
would ship) and installed without dependencies into a virtual environment that reuses this
interpreter's packages (torch, Optuna, MLflow). ``scripts/check_install`` does the same
from a fresh environment with every dependency from the package index (CI runs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import lradvisor

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = ("build", "dist", "runs", "mlruns", "mlflow.db", ".git", "*.egg-info", "__pycache__")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment with lradvisor installed from a copy of the tree (not editable)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_OUT))
    environment = base / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(environment)
    python = environment / "bin" / "python"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "-q",
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 and "no such option: --python" in done.stderr:
        pytest.skip("pip too old for --python")
    assert done.returncode == 0, done.stderr
    return environment


def _run(environment: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_the_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "bin" / "python")
    code = (
        "import json, importlib.metadata as m, importlib.resources as r, lradvisor;"
        "print(json.dumps({'file': lradvisor.__file__, 'version': lradvisor.__version__,"
        "'metadata': m.version('lradvisor'),"
        "'typed': r.files('lradvisor').joinpath('py.typed').is_file()}))"
    )
    done = _run(installed, python, "-c", code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert str(installed) in facts["file"], facts
    assert facts["version"] == facts["metadata"] == lradvisor.__version__
    assert facts["typed"], "py.typed ships with the package"


def test_version_and_python_m(installed: Path, tmp_path: Path) -> None:
    expected = f"lradvisor, version {lradvisor.__version__}"
    for command in (
        [str(installed / "bin" / "lradvisor"), "--version"],
        [str(installed / "bin" / "python"), "-m", "lradvisor", "--version"],
    ):
        done = _run(installed, *command, cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.strip() == expected, done


def test_reproduce_finds_the_packaged_study_files(installed: Path, tmp_path: Path) -> None:
    done = _run(
        installed,
        str(installed / "bin" / "lradvisor"),
        "reproduce",
        "E5",
        "--quick",
        "--no-mlflow",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "E5" in done.stdout and "QUICK" in done.stdout
    assert "verdicts:" in done.stdout

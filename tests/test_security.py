"""Code lying in the working folder never runs, and every child process starts isolated.

The regression: ``lradvisor study run`` started its MLflow sender with ``python -m``, which
puts the current folder first on the import path, so a ``json.py`` there ran. Here the
working folder holds modules named like the ones lradvisor and its children import; each
one, if imported, leaves a marker file. A study with MLflow logging, two worker processes
and a sweep must leave none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lradvisor.integrations.mlflow import sender_command

pytestmark = pytest.mark.slow

#: Names a child would import early: the sender's own (json, mlflow), multiprocessing's
#: spawn start (socket, pickle, selectors), and lradvisor's (yaml, optuna, torch).
BAIT = ("json", "mlflow", "socket", "pickle", "selectors", "yaml", "optuna", "torch", "numpy")


def _lradvisor() -> str:
    script = Path(sys.executable).parent / "lradvisor"
    found = str(script) if script.exists() else shutil.which("lradvisor")
    if found is None:
        pytest.skip("the lradvisor console script is not installed")
    return found


def _bait(folder: Path) -> Path:
    marker = folder / "ran.txt"
    for name in BAIT:
        (folder / f"{name}.py").write_text(
            f"import os\nopen({str(marker)!r}, 'a').write(f'{name}.py ran in {{os.getpid()}}\\n')\n"
        )
    return marker


def _study(folder: Path) -> Path:
    (folder / "m.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"hidden": [4]},
                "data": {"n": 40, "dim": 3, "classes": 2},
                "training": {"steps": 5, "dtype": "float64"},
            }
        )
    )
    study = {
        "name": "bait",
        "model": "m.yaml",
        "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
        "metric": "train_loss",
        "budget": {"n_trials": 2, "steps": 5},
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
    }
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    env["LRADVISOR_MLFLOW_SPOOL"] = str(folder / "spool")
    return env


@pytest.mark.parametrize("workers", [1, 2])
def test_a_json_py_and_an_mlflow_py_in_the_working_folder_run_nothing(
    tmp_path: Path, workers: int
) -> None:
    marker = _bait(tmp_path)
    study = _study(tmp_path)
    done = subprocess.run(
        [_lradvisor(), "study", "run", study.name, "--no-predict", "--workers", str(workers)],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "MLflow: experiment 'bait'" in done.stdout
    assert not marker.exists(), marker.read_text()
    assert not list((tmp_path / "spool").glob("*.json")), "the sender child did its work"


def test_sweep_and_sync_in_a_baited_folder(tmp_path: Path) -> None:
    marker = _bait(tmp_path)
    _study(tmp_path)
    for args in (
        ["sweep", "--model", "m.yaml", "--lrs", "0.01,0.1", "--seeds", "1"],
        ["mlflow", "sync", "--spool", str(tmp_path)],
    ):
        done = subprocess.run(
            [_lradvisor(), *args],
            cwd=tmp_path,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
    assert not marker.exists(), marker.read_text()


def test_the_sender_command_leaves_out_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    command = sender_command()
    assert command[:3] == [sys.executable, "-I", "-c"]
    assert repr(str(tmp_path)) not in command[3]
    assert "''" not in command[3]


def test_every_subprocess_start_in_the_package_is_known() -> None:
    """The audit, kept true: the places that start processes, each isolated as stated."""
    package = Path(__file__).resolve().parents[1] / "src" / "lradvisor"
    starts = {}
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        for needle in ("subprocess.", "Popen(", "os.system(", "os.exec", "os.spawn", ".Process("):
            if needle in text:
                starts.setdefault(str(path.relative_to(package)), set()).add(needle)
    assert set(starts) <= {
        "integrations/mlflow.py",  # the sender child: python -I -c, the path minus the cwd
        "studies/runner.py",  # spawn workers: PYTHONSAFEPATH=1, PDEATHSIG, SIGINT ignored
        "replication/reproduce.py",  # git rev-parse / status in the package folder, argv list
    }, starts

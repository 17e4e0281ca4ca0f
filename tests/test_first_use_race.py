"""Two processes started together on a fresh folder: no crash on Optuna's table creation, no
half-migrated MLflow store, and exactly ``n_trials`` finished trials.

Both run ``lradvisor study run`` with the default storage (``runs/studies.db``, created by
whichever comes first) and MLflow's local SQLite store in the same fresh folder; the first
use of each database is serialised by a file lock next to it. Ten repetitions. The two
processes import everything first and then wait for one signal, so that their first uses
of the databases meet (otherwise their import times, seconds apart, hide the race).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

REPETITIONS = int(os.environ.get("LRADVISOR_RACE_REPETITIONS", "10"))
N_TRIALS = 3
ARGUMENTS = ("study", "run", "s.yaml", "--no-predict")


#: A process that imports lradvisor's heavy dependencies, says it is ready, waits for the
#: go signal, then runs ``lradvisor ARGS…`` (the import path as for the installed command).
STARTER = """
import os, sys, time
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]
import mlflow, optuna, torch
from lradvisor.cli import main
open(sys.argv[1], "w").close()
while not os.path.exists("go"):
    time.sleep(0.001)
main(sys.argv[2:], prog_name="lradvisor")
"""


def _fresh_folder(folder: Path) -> None:
    folder.mkdir()
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
        "name": "race",
        "model": "m.yaml",
        "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
        "metric": "train_loss",
        "budget": {"n_trials": N_TRIALS, "steps": 5},
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
    }
    (folder / "s.yaml").write_text(yaml.safe_dump(study))


def test_two_processes_on_a_fresh_folder(tmp_path: Path) -> None:
    crashes = []
    for repetition in range(REPETITIONS):
        folder = tmp_path / f"fresh-{repetition}"
        _fresh_folder(folder)
        env = {k: v for k, v in os.environ.items() if k != "LRADVISOR_MLFLOW_SPOOL"}
        env["MLFLOW_TRACKING_URI"] = "sqlite:///mlflow.db"  # relative: the fresh folder's
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", STARTER, f"ready-{index}", *ARGUMENTS],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for index in range(2)
        ]
        deadline = time.monotonic() + 300
        while not all((folder / f"ready-{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
            time.sleep(0.01)
        (folder / "go").touch()
        outputs = [process.communicate(timeout=600) for process in processes]
        for process, (_, stderr) in zip(processes, outputs, strict=True):
            if process.returncode != 0 or "Traceback" in stderr:
                crashes.append(f"repetition {repetition}: exit {process.returncode}: {stderr}")

        storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'runs' / 'studies.db'}")
        trials = optuna.load_study(study_name="race", storage=storage).get_trials()
        finished = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
        assert len(finished) == N_TRIALS, (repetition, [t.state for t in trials])

        said = "\n".join(stderr for _, stderr in outputs)
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("race")  # a half-migrated store fails here
        assert experiment is not None, (repetition, said)
        runs = client.search_runs([experiment.experiment_id])
        roles = sorted(run.data.tags.get("lradvisor.role", "?") for run in runs)
        assert roles == ["study"] + ["trial"] * N_TRIALS, (repetition, roles, said)
    assert not crashes, "\n".join(crashes)

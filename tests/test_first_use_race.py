"""Two processes started together on a fresh folder: no crash on Optuna's table creation, no
half-migrated MLflow store, and exactly ``n_trials`` finished trials.

Both run ``lradvisor study run`` with the default storage (``runs/studies.db``, created by
whichever comes first) and MLflow's local SQLite store in the same fresh folder; the first
use of each database is serialised by a file lock next to it. Ten repetitions, each in its
own fresh folder. The two processes import everything once, then for every repetition say
they are ready and wait for one signal, so that their first uses of the databases meet
(otherwise their import times, seconds apart, hide the race). Every repetition's databases
are new files, so each is a first use: lradvisor makes the relative default tracking URI
and storage absolute in the folder the process is in, and MLflow and Optuna open a new store
per URI (the sender child, shared by a process's studies like an imported module, opens the
new MLflow store on request). Each process writes a repetition's stderr (file descriptor
2, so child output and tracebacks too) and exit code to files in that folder.
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


#: A process that imports lradvisor's heavy dependencies once, then for each repetition
#: says it is ready in that repetition's folder, waits for the go signal there and runs
#: ``lradvisor ARGS…`` in it (the import path as for the installed command), its stderr
#: (fd 2) in ``stderr-INDEX`` and its exit code in ``exit-INDEX`` (written under another
#: name and renamed, so the test never reads the file between its creation and the write).
STARTER = """
import os, sys, time, traceback
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]
import mlflow, optuna, torch
from lradvisor.cli import main
index, repetitions, root, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
for repetition in range(repetitions):
    folder = os.path.join(root, f"fresh-{repetition}")
    open(os.path.join(folder, f"ready-{index}"), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.001)
    os.chdir(folder)
    sys.stderr.flush()
    log = os.open(f"stderr-{index}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    code = 0
    try:
        main(args, prog_name="lradvisor")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os.close(log)
    with open(f"exit-{index}.part", "w") as done:  # renamed when written: never read empty
        done.write(str(code))
    os.replace(f"exit-{index}.part", f"exit-{index}")
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


def _wait_for(paths: list[Path], processes: list[subprocess.Popen], what: str) -> None:
    deadline = time.monotonic() + 600
    while not all(path.exists() for path in paths):
        alive = all(process.poll() is None for process in processes)
        assert alive and time.monotonic() < deadline, f"{what}: a process ended or hung"
        time.sleep(0.01)


def test_two_processes_on_a_fresh_folder(tmp_path: Path) -> None:
    folders = [tmp_path / f"fresh-{repetition}" for repetition in range(REPETITIONS)]
    for folder in folders:
        _fresh_folder(folder)
    env = {k: v for k, v in os.environ.items() if k != "LRADVISOR_MLFLOW_SPOOL"}
    env["MLFLOW_TRACKING_URI"] = "sqlite:///mlflow.db"  # relative: each fresh folder's
    logs = [(tmp_path / f"process-{index}.err").open("w") for index in range(2)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                STARTER,
                str(index),
                str(REPETITIONS),
                str(tmp_path),
                *ARGUMENTS,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=logs[index],
        )
        for index in range(2)
    ]
    crashes = []
    try:
        for repetition, folder in enumerate(folders):
            _wait_for([folder / f"ready-{i}" for i in range(2)], processes, f"{repetition} ready")
            (folder / "go").touch()
            _wait_for([folder / f"exit-{i}" for i in range(2)], processes, f"{repetition} done")
            said = []
            for index in range(2):
                code = (folder / f"exit-{index}").read_text()
                stderr = (folder / f"stderr-{index}").read_text()
                said.append(stderr)
                if code != "0" or "Traceback" in stderr:
                    crashes.append(f"repetition {repetition}: exit {code}: {stderr}")

            storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'runs' / 'studies.db'}")
            trials = optuna.load_study(study_name="race", storage=storage).get_trials()
            finished = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
            assert len(finished) == N_TRIALS, (repetition, [t.state for t in trials])

            client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
            experiment = client.get_experiment_by_name("race")  # a half-migrated store fails here
            assert experiment is not None, (repetition, "\n".join(said))
            runs = client.search_runs([experiment.experiment_id])
            roles = sorted(run.data.tags.get("lradvisor.role", "?") for run in runs)
            assert roles == ["study"] + ["trial"] * N_TRIALS, (repetition, roles, said)
        for process in processes:
            assert process.wait(timeout=120) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    assert not crashes, "\n".join(crashes)

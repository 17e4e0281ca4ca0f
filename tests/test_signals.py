"""Stopping the CLI stops its worker processes: SIGTERM (exit 143), SIGINT to the command or to
its whole terminal group (Ctrl-C, exit 130), and even SIGKILL (workers die with the parent).
One line on stderr, no traceback from any process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _long_study(folder: Path) -> Path:
    (folder / "m.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"hidden": [16]},
                "data": {"n": 100, "dim": 8, "classes": 2},
                "training": {"steps": 10, "dtype": "float32"},
            }
        )
    )
    study = {
        "name": "long",
        "model": "m.yaml",
        "search_space": {"lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
        "metric": "train_loss",
        "budget": {"n_trials": 8, "steps": 200_000, "report_every": 1000},
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
    }
    (folder / "s.yaml").write_text(yaml.safe_dump(study))
    return folder / "s.yaml"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _workers(pid: int) -> list[int]:
    workers = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"--multiprocessing-fork" in command:
            workers.append(child)
    return workers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(folder: Path, workers: int) -> subprocess.Popen:
    env = {**os.environ, "LRADVISOR_MLFLOW_SPOOL": str(folder / "spool")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lradvisor",
            "study",
            "run",
            "s.yaml",
            "--no-predict",
            "--workers",
            str(workers),
            "--storage",
            f"sqlite:///{folder / 'studies.db'}",
        ],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_workers(process: subprocess.Popen, count: int) -> list[int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        workers = _workers(process.pid)
        if len(workers) >= count:
            time.sleep(3)  # they are training
            return workers
        time.sleep(0.3)
    pytest.fail("the workers did not start")


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    ("how", "code", "word"),
    [
        ("sigterm", 143, "terminated"),
        ("sigint", 130, "interrupted"),
        ("ctrl-c-to-the-group", 130, "interrupted"),
    ],
)
def test_stopping_the_command_stops_its_workers(
    tmp_path: Path, how: str, code: int, word: str
) -> None:
    _long_study(tmp_path)
    process = _start(tmp_path, workers=2)
    workers = _wait_for_workers(process, 2)
    if how == "sigterm":
        process.send_signal(signal.SIGTERM)
    elif how == "sigint":
        process.send_signal(signal.SIGINT)
    else:
        os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        for pid in workers:  # never leave a worker behind, whatever the outcome
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"lradvisor: {word}", stderr
    assert "Traceback" not in stderr, stderr
    assert _gone_within(workers, 10), "workers stopped with the command"


def test_sigterm_without_workers(tmp_path: Path) -> None:
    _long_study(tmp_path)
    process = _start(tmp_path, workers=1)
    time.sleep(8)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().endswith("lradvisor: terminated")


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    _long_study(tmp_path)
    process = _start(tmp_path, workers=2)
    workers = _wait_for_workers(process, 2)
    process.kill()
    process.communicate(timeout=60)
    try:
        assert _gone_within(workers, 10), "workers die with their parent (PR_SET_PDEATHSIG)"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

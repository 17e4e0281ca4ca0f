"""A real ``mlflow server`` on loopback for tests: SQLite backend and artifacts in a temp folder.

``MlflowServer.start()`` waits for ``/health``; ``kill()`` stops it hard (SIGKILL, an outage);
``start()`` again brings it back on the same port with the same stores. ``STUDY`` and
``study_file`` are the tiny study the MLflow tests log (a few seconds on one core).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

STARTUP_SECONDS = 120

STUDY = {
    "name": "mlflow-e2e",
    "model": {
        "model": {"hidden": [8]},
        "data": {
            "source": "gaussian_mixture",
            "n": 60,
            "dim": 6,
            "classes": 3,
            "validation_fraction": 0.25,
        },
        "training": {"loss": "ce", "dtype": "float64"},
    },
    # Up to ~1000× the bound: beyond the pruner's 16× margin some trials are pruned before
    # training, others diverge.
    "search_space": {"lr": {"type": "float", "low": 0.01, "high": 600.0, "log": True}},
    "metric": "val_loss",
    "budget": {"n_trials": 8, "steps": 40, "report_every": 10, "seed": 2},
    "sampler": {"type": "random"},
    "pruner": {"type": "lradvisor", "base": "median"},
}


def study_file(folder: Path, **overrides) -> Path:
    """``STUDY`` with top-level keys replaced, written to ``folder/study.yaml``."""
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **overrides}))
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """One throw-away tracking server (``uri`` is ``http://127.0.0.1:<port>``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self) -> MlflowServer:
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.folder / "artifacts"),
        ]
        environment = {**os.environ, "MLFLOW_TRACKING_URI": ""}
        self.process = subprocess.Popen(
            command,
            stdout=open(self.log, "ab"),  # the server process owns it
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.uri}/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer in {STARTUP_SECONDS} s")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the port is free again
            try:
                requests.get(f"{self.uri}/health", timeout=0.5)
            except requests.RequestException:
                return
            time.sleep(0.2)

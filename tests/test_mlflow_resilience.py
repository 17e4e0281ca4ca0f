"""MLflow logging that a bad spool file or a hanging server cannot hold up.

- A poisoned spool: one malformed or foreign file among good payloads is quarantined in
  ``bad/`` and named; the good ones are sent.
- A server that answers ``/health`` but never answers an API call (a loopback fake): a
  two-trial study takes at most a few seconds longer than without MLflow (request timeout
  and circuit breaker), and keeps its payloads for ``lradvisor mlflow sync``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from lradvisor.cli import main
from lradvisor.integrations.mlflow import QUARANTINE, MLflowCallback, sync

pytestmark = pytest.mark.slow


def _spooled_study(spool: Path, name: str = "poison") -> optuna.Study:
    """A two-trial study whose parent, trials and summary wait in ``spool`` (server away)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name)
    warnings: list[str] = []
    callback = MLflowCallback("http://127.0.0.1:9", spool=spool, warn=warnings.append)
    study.optimize(
        lambda t: t.suggest_float("lr", 1e-3, 1.0, log=True), n_trials=2, callbacks=[callback]
    )
    callback.finish(study)
    assert warnings and "unreachable" in warnings[0]
    return study


BAD_FILES = {
    "not-json": "{this is not json",
    "foreign-json": json.dumps({"hello": "world"}),
    "wrong-kind": json.dumps({"kind": "exploit", "experiment": "x", "tracking_uri": "x"}),
    "truncated-trial": json.dumps(
        {"kind": "trial", "experiment": "poison", "tracking_uri": "sqlite:///x.db"}
    ),
    "list": "[1, 2, 3]",
}


@pytest.mark.parametrize("bad", sorted(BAD_FILES))
def test_one_bad_file_four_good_four_sent_one_quarantined(tmp_path: Path, bad: str) -> None:
    spool = tmp_path / "spool"
    _spooled_study(spool)
    good = sorted(spool.glob("*.json"))
    assert len(good) == 4, "parent, two trials, summary"
    # sorts first among the trials: it is met before the good ones that follow it
    poisoned = spool / "1-00000000000000000000-deadbeef.json"
    poisoned.write_text(BAD_FILES[bad])
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    result = CliRunner().invoke(
        main, ["mlflow", "sync", "--spool", str(spool), "--tracking-uri", store]
    )
    assert result.exit_code == 0, result.output
    assert "sent 4 payload(s)" in result.output and "0 still pending" in result.output
    assert poisoned.name in result.output, "the bad file is named"
    assert [p.name for p in (spool / QUARANTINE).iterdir()] == [poisoned.name]
    assert not list(spool.glob("*.json"))

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("poison")
    runs = client.search_runs([experiment.experiment_id])
    roles = sorted(run.data.tags.get("lradvisor.role") for run in runs)
    assert roles == ["study", "trial", "trial"]


def test_the_callback_names_a_quarantined_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "0-00000000000000000000-0badf11e.json").write_text("garbage")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    warnings: list[str] = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="named")
    callback = MLflowCallback(store, spool=spool, warn=warnings.append)
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1.0), n_trials=2, callbacks=[callback])
    sent = callback.finish(study)
    assert sent.pending == 0
    assert any("0-00000000000000000000-0badf11e.json" in w and "bad" in w for w in warnings)
    runs = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name("named").experiment_id]
    )
    assert len(runs) == 3


# --------------------------------------------------------------------- a hanging server


class _Hanging(http.server.BaseHTTPRequestHandler):
    """``/health`` answers OK; every other request is held open until the server stops."""

    release = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        if self.path.rstrip("/").endswith("/health"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
            return
        type(self).requests += 1
        self.release.wait(600)

    requests = 0
    do_GET = do_POST = do_PATCH = do_DELETE = _answer


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture
def hanging_server() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Hanging)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Hanging.release.set()
        server.shutdown()
        server.server_close()


def _study_files(folder: Path) -> Path:
    (folder / "m.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"hidden": [8]},
                "data": {"n": 60, "dim": 4, "classes": 2},
                "training": {"steps": 30, "dtype": "float64"},
            }
        )
    )
    study = {
        "name": "hang",
        "model": "m.yaml",
        "search_space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
        "metric": "train_loss",
        "budget": {"n_trials": 2, "steps": 30},
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
    }
    (folder / "s.yaml").write_text(yaml.safe_dump(study))
    return folder / "s.yaml"


def _timed_study(folder: Path, *options: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "LRADVISOR_MLFLOW_SPOOL": str(folder / "spool")}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lradvisor", "study", "run", "s.yaml", "--no-predict", *options],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return time.perf_counter() - started, done


def test_a_server_that_hangs_adds_seconds_not_minutes(tmp_path: Path, hanging_server: str) -> None:
    """Wall time with MLflow logging to the hanging server minus wall time without MLflow,
    each the faster of two runs (the machine's other load only ever adds time)."""
    _study_files(tmp_path)
    baseline, hanging, logged = [], [], None
    for run in range(2):
        seconds, plain = _timed_study(
            tmp_path, "--no-mlflow", "--storage", f"sqlite:///plain-{run}.db"
        )
        assert plain.returncode == 0, plain.stderr
        baseline.append(seconds)
        seconds, logged = _timed_study(
            tmp_path, "--tracking-uri", hanging_server, "--storage", f"sqlite:///hang-{run}.db"
        )
        assert logged.returncode == 0, logged.stderr
        hanging.append(seconds)
    added = min(hanging) - min(baseline)
    print(
        f"2-trial study: {min(baseline):.1f} s without MLflow, {min(hanging):.1f} s against a "
        f"hanging server: +{added:.1f} s ({_Hanging.requests} request(s) left hanging)"
    )
    assert added <= 10.0, (baseline, hanging, logged.stderr)
    warnings = [line for line in logged.stderr.splitlines() if "MLflow unreachable" in line]
    assert len(warnings) == 1, logged.stderr
    assert "retried after 30 s" in warnings[0], "a timeout opens the circuit breaker"
    assert "finished   2 of 2" in logged.stdout
    kept = list((tmp_path / "spool").glob("*.json"))
    assert len(kept) == 8, "two runs' parent, two trials and summary wait for mlflow sync"


def test_a_server_that_refuses_is_retried_after_each_trial(tmp_path: Path) -> None:
    """A refusal is not a timeout: no breaker, the next trial tries again (warning says so)."""
    _study_files(tmp_path)
    with socket_closed_port() as port:
        _, logged = _timed_study(
            tmp_path, "--tracking-uri", f"http://127.0.0.1:{port}", "--storage", "sqlite:///r.db"
        )
    assert logged.returncode == 0, logged.stderr
    warnings = [line for line in logged.stderr.splitlines() if "MLflow unreachable" in line]
    assert len(warnings) == 1 and "retried after each trial" in warnings[0], logged.stderr


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port with nothing listening (bound, never listened on: connections refused)."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def test_sync_against_a_hanging_server_gives_up_and_keeps_everything(
    tmp_path: Path, hanging_server: str
) -> None:
    spool = tmp_path / "spool"
    _spooled_study(spool, name="hang-sync")
    started = time.perf_counter()
    result = sync(spool, tracking_uri=hanging_server)
    assert time.perf_counter() - started < 20
    assert result.sent == 0 and result.pending == 4 and not result.quarantined
    assert len(list(spool.glob("*.json"))) == 4

"""MLflow logging: predicted versus observed drift for every study, reviewable in the UI.

Layout: one MLflow experiment per Optuna study (named after it), one parent run for the
study and one nested child run per finished trial (``mlflow.parentRunId`` set explicitly,
so worker processes attach to the same parent). Child runs carry the trial's parameters,
per-step metrics (loss, observed and predicted drift per law, S partial sums, sharpness)
and tags (state, regime, prune reason); the parent carries α fitted with its CI, α
predicted, the correlation and median relative error between predicted and observed
drift, the stability bound, τ for cross-entropy, and figures (``log_figure``). Names:
:mod:`lradvisor.integrations._mlflow_payloads`.

Two ways in::

    # an existing study: a callback (with TrialMonitor in the objective)
    from lradvisor.integrations.mlflow import MLflowCallback
    callback = MLflowCallback()                     # MLflow's default store, or tracking_uri=
    study.optimize(objective, n_trials=50, callbacks=[callback])
    callback.finish(study)                          # the parent run's α, figures; waits

    # lradvisor study run / reproduce log automatically (--tracking-uri, --no-mlflow)

Nothing is lost when the tracking server is away: every payload is first written to a
spool folder on disk (``runs/mlflow-spool`` by default), then sent by a background thread;
what cannot be sent stays there (one warning line) and is retried after each later trial,
at ``finish``, and by ``lradvisor mlflow sync``. Delivery is idempotent: a run is found
again by its tags, a half-sent trial run is deleted and sent again whole, so a retry never
duplicates runs or metric points.

A slow or broken server costs a study seconds, not minutes: every HTTP request gives up
after :data:`REQUEST_TIMEOUT` seconds without retries, and after a request that timed out
(a server that accepts requests and never answers) the uploader stops trying (a circuit
breaker) for :data:`RETRY_SECONDS`; a server that refuses at once is simply retried after
the next trial. What was not sent waits in the spool. A payload that is malformed or that the store refuses (a foreign or truncated file)
is moved to ``bad/`` inside the spool, named in the warning, and the rest are sent.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lradvisor.errors import LRAdvisorError
from lradvisor.integrations._mlflow_payloads import (
    COMPLETE_TAG,
    PARENT_KEY_TAG,
    RUN_KEY_TAG,
    SUMMARY_TAG,
    TRIAL_TAG,
    parent_payload,
    replication_payloads,
    summary_payload,
    trial_payload,
)

__all__ = [
    "DEFAULT_SPOOL",
    "MLflowCallback",
    "SyncResult",
    "log_replication",
    "resolve_tracking_uri",
    "sync",
]

DEFAULT_SPOOL = Path("runs") / "mlflow-spool"
SPOOL_ENV = "LRADVISOR_MLFLOW_SPOOL"
#: Where malformed or refused payloads go, inside the spool.
QUARANTINE = "bad"
#: After a request timed out, the uploader leaves the server alone this long (the breaker).
RETRY_SECONDS = 30.0
#: Seconds an HTTP request to the tracking server may take (MLflow's default is 120, with
#: 7 retries and exponential backoff: minutes per request against a server that hangs).
REQUEST_TIMEOUT = 3
#: Seconds the uploader waits for its sender process to answer one flush of the spool.
SENDER_TIMEOUT = 120.0
#: Seconds it waits for the store to open: a new local store imports MLflow and runs its
#: schema migrations, which a busy machine can stretch to minutes; a process killed in the
#: middle of them would leave the store half-migrated.
WARM_TIMEOUT = 600.0
_RANK = {"parent": 0, "run": 0, "trial": 1, "summary": 2}
_BATCH_METRICS = 1000
_BATCH_PARAMS = 100
# A dead server should cost seconds, not MLflow's default minutes of retries with backoff;
# and a study's stdout is its summary, not a "View run" line per trial.
_ENV_DEFAULTS = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow's usage telemetry: a network call per client operation, refused on closed
    # networks; set MLFLOW_DISABLE_TELEMETRY=false yourself to keep it on.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
}
#: The fields every payload kind needs (anything else in the spool is quarantined).
_REQUIRED = {
    "parent": ("parent_key", "run_name"),
    "trial": (
        "parent_key",
        "trial_number",
        "tags",
        "params",
        "metrics",
        "start_time",
        "end_time",
        "status",
        "run_name",
    ),
    "summary": ("parent_key", "digest", "metrics", "tags", "figures", "step"),
    "run": ("run_key", "tags", "run_name", "params", "metrics", "status"),
}


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default local store.

    A relative ``sqlite:///`` path is made absolute, so that every process (and a later
    ``lradvisor mlflow sync``) means the same file.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        import mlflow  # only here: importing MLflow takes seconds

        uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def spool_folder(spool: str | Path | None = None) -> Path:
    """The spool folder: ``spool``, else ``$LRADVISOR_MLFLOW_SPOOL``, else runs/mlflow-spool."""
    return Path(spool or os.environ.get(SPOOL_ENV) or DEFAULT_SPOOL).resolve()


def check_tracking_uri(uri: str) -> None:
    """Refuse, before any work, a tracking URI MLflow has no store for, and a local store
    (SQLite file, file store) or spool whose folder cannot take files."""
    scheme = uri.partition("://")[0].split("+")[0] if "://" in uri else ""
    if uri.startswith("file:"):
        scheme = "file"
    if scheme not in _BUILT_IN_STORES and scheme not in _plugin_stores():
        raise LRAdvisorError(
            f"tracking URI {uri}: MLflow has no store for '{scheme}://'; expected "
            "http(s)://host:port, sqlite:///file.db, postgresql://… or a folder"
        )
    if scheme == "sqlite":
        database = Path(uri.split(":///", 1)[-1]) if ":///" in uri else None
        if database is not None and str(database) not in ("", ":memory:"):
            _check_writable(database, f"MLflow store {uri}")


#: Schemes of MLflow's own tracking stores ("" is a plain folder path).
_BUILT_IN_STORES = frozenset(
    {"", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "uc"}
    | {"databricks-uc"}
)


def _plugin_stores() -> set[str]:
    """Schemes registered by MLflow plugins (MLflow's registry is private API: none if it moved)."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return set(_tracking_store_registry._registry)
    except Exception:  # a private API that moved: accept nothing beyond the built-ins
        return set()


def _check_writable(path: Path, what: str) -> None:
    """``path`` (a file, or a folder with ``folder=True``) can be created or written."""
    if path.is_dir():
        raise LRAdvisorError(f"{what}: {path} is a folder, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise LRAdvisorError(f"{what}: {path} is read-only")
        return
    _check_folder(path.parent, what)


def _check_folder(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LRAdvisorError(f"{what}: {existing} is not a folder")
    try:
        probe = tempfile.NamedTemporaryFile(dir=existing, prefix=".lradvisor-probe-")
    except OSError as exc:
        raise LRAdvisorError(
            f"{what}: cannot create files in {existing} ({exc.strerror}); "
            f"set {SPOOL_ENV} / --tracking-uri elsewhere, or --no-mlflow"
        ) from None
    probe.close()


# ------------------------------------------------------------------------------- spool


def _write(folder: Path, payload: dict[str, Any]) -> Path:
    """Atomically add a payload to the spool (write to a temporary name, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{_RANK[payload['kind']]}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    path = folder / name
    temporary = folder / f".{name}.tmp"
    temporary.write_text(json.dumps(payload))
    temporary.replace(path)
    return path


def _pending(folder: Path, tracking_uri: str | None = None) -> list[Path]:
    if not folder.is_dir():
        return []
    paths = sorted(folder.glob("[0-9]-*.json"))  # rank, then time: parents first
    if tracking_uri is None:
        return paths
    return [p for p in paths if _read(p).get("tracking_uri") == tracking_uri]


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _claimed(path: Path):
    """An exclusive, non-blocking lock on one payload file (None: another process has it)."""
    try:
        handle = open(path)
    except FileNotFoundError:
        yield None
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        yield None
        return
    try:
        yield handle if path.exists() else None
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# ---------------------------------------------------------------------------- delivery


@dataclass
class SyncResult:
    """What one flush of the spool did (``quarantined``: payload files moved to ``bad/``;
    ``timed_out``: the store stopped answering, rather than refusing)."""

    sent: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.pending == 0


class _Delivery:
    """Idempotent upserts of payloads into one tracking store (one client, one thread)."""

    def __init__(self, tracking_uri: str) -> None:
        for name, value in _ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # table creation
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = tracking_uri
        self._experiments: dict[str, str] = {}
        self._parents: dict[tuple[str, str], str] = {}
        self.client = self._open(tracking_uri)

    @staticmethod
    def _open(uri: str):
        """The client, its store opened. A new SQLite store creates and migrates its tables
        when the client is constructed (MLflow 3 opens the store in ``MlflowClient()``); two
        processes doing that together leave it half-migrated, so a local store is opened
        under a lock next to it."""
        from mlflow import MlflowClient

        with _store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            if _local_database(uri) is not None:
                client.search_experiments(max_results=1)
        return client

    def reachable(self) -> str | None:
        """None when the store answers; else why not (HTTP servers only are probed)."""
        if not self.uri.startswith(("http://", "https://")):
            return None
        import requests

        url = self.uri.rstrip("/") + "/health"
        try:
            requests.get(url, timeout=3).raise_for_status()
        except requests.RequestException as exc:
            text = str(exc)
            why = (
                "connection refused"
                if "refused" in text
                else "timed out"
                if isinstance(exc, requests.Timeout)
                else type(exc).__name__
            )
            return f"no answer from {url}: {why}"
        return None

    def send(self, payload: dict[str, Any]) -> None:
        experiment = self._experiment(payload["experiment"])
        if payload["kind"] == "run":
            self._run(experiment, payload)
            return
        parent = self._parent(experiment, payload)
        if payload["kind"] == "trial":
            self._trial(experiment, parent, payload)
        elif payload["kind"] == "summary":
            self._summary(parent, payload)

    def _experiment(self, name: str) -> str:
        if name in self._experiments:
            return self._experiments[name]
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                identifier = self.client.create_experiment(name)
            except MlflowException:  # another process created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
                identifier = found.experiment_id
        else:
            identifier = found.experiment_id
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(identifier)
        self._experiments[name] = identifier
        return identifier

    def _runs(self, experiment: str, filters: dict[str, str]) -> list:
        text = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
        runs = list(self.client.search_runs([experiment], filter_string=text, max_results=1000))
        return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))

    def _parent(self, experiment: str, payload: dict[str, Any]) -> str:
        """The study's parent run: found by its key, else created (the oldest one wins).

        Several processes of one study (workers, or two commands started together) each
        look for the parent and create it when they find none. On a local SQLite store the
        look-and-create holds the lock next to the store, so exactly one is created (a test
        of two processes started on one signal once saw two). Against a server nothing is
        shared: the oldest of the racing runs is kept and the others deleted, which misses a
        run created after this process looked.
        """
        key = payload["parent_key"]
        if (experiment, key) in self._parents:
            return self._parents[(experiment, key)]
        with _store_lock(self.uri):
            return self._find_or_create_parent(experiment, key, payload)

    def _find_or_create_parent(self, experiment: str, key: str, payload: dict[str, Any]) -> str:
        runs = self._runs(experiment, {PARENT_KEY_TAG: key, "lradvisor.role": "study"})
        if not runs:
            tags = {PARENT_KEY_TAG: key, "lradvisor.role": "study"}
            if payload["kind"] == "parent":
                tags.update(payload["tags"])
            run = self.client.create_run(
                experiment,
                start_time=payload.get("start_time"),
                tags=tags,
                run_name=payload["run_name"],
            )
            if payload["kind"] == "parent" and payload.get("params"):
                self._log(run.info.run_id, params=payload["params"])
            runs = self._runs(experiment, {PARENT_KEY_TAG: key, "lradvisor.role": "study"})
            for duplicate in runs[1:]:  # two processes raced: keep the oldest
                if duplicate.info.run_id == run.info.run_id:
                    self.client.delete_run(duplicate.info.run_id)
        identifier = runs[0].info.run_id
        self._parents[(experiment, key)] = identifier
        return identifier

    def _trial(self, experiment: str, parent: str, payload: dict[str, Any]) -> None:
        filters = {PARENT_KEY_TAG: payload["parent_key"], TRIAL_TAG: str(payload["trial_number"])}
        existing = self._runs(experiment, {**filters, "lradvisor.role": "trial"})
        if any(run.data.tags.get(COMPLETE_TAG) == "true" for run in existing):
            return
        for run in existing:  # half sent before an outage: send it again whole
            self.client.delete_run(run.info.run_id)
        tags = {**payload["tags"], PARENT_KEY_TAG: payload["parent_key"]}
        tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(
            experiment, start_time=payload["start_time"], tags=tags, run_name=payload["run_name"]
        )
        run_id = run.info.run_id
        self._log(
            run_id, params=payload["params"], metrics=payload["metrics"], at=payload["end_time"]
        )
        self.client.set_terminated(run_id, status=payload["status"], end_time=payload["end_time"])
        self.client.set_tag(run_id, COMPLETE_TAG, "true")

    def _run(self, experiment: str, payload: dict[str, Any]) -> None:
        """A self-contained run found by its key (nested when ``parent_run_key`` is given)."""
        existing = self._runs(experiment, {RUN_KEY_TAG: payload["run_key"]})
        if any(run.data.tags.get(COMPLETE_TAG) == "true" for run in existing):
            return
        for run in existing:
            self.client.delete_run(run.info.run_id)
        tags = {**payload["tags"], RUN_KEY_TAG: payload["run_key"]}
        if payload.get("parent_run_key"):
            parents = self._runs(experiment, {RUN_KEY_TAG: payload["parent_run_key"]})
            if not parents:
                raise LookupError(f"parent run {payload['parent_run_key']} is not sent yet")
            tags["mlflow.parentRunId"] = parents[0].info.run_id
        run_id = self.client.create_run(
            experiment, tags=tags, run_name=payload["run_name"]
        ).info.run_id
        self._log(run_id, params=payload["params"], metrics=payload["metrics"])
        self._figures(run_id, payload.get("figures") or {})
        for name, text in (payload.get("texts") or {}).items():
            self.client.log_text(run_id, text, name)
        self.client.set_terminated(run_id, status=payload["status"])
        self.client.set_tag(run_id, COMPLETE_TAG, "true")

    def _figures(self, run_id: str, figures: dict[str, dict]) -> None:
        import matplotlib.pyplot as plt

        from lradvisor.plots import draw

        for name, spec in figures.items():
            figure = draw(spec)
            try:
                self.client.log_figure(run_id, figure, f"figures/{name}.png")
            finally:
                plt.close(figure)

    def _summary(self, parent: str, payload: dict[str, Any]) -> None:
        run = self.client.get_run(parent)
        if run.data.tags.get(SUMMARY_TAG) == payload["digest"]:
            return
        metrics = [[key, value, payload["step"]] for key, value, _ in payload["metrics"]]
        self._log(parent, metrics=metrics, at=int(time.time() * 1000))
        for key, value in payload["tags"].items():
            self.client.set_tag(parent, key, value)
        self._figures(parent, payload["figures"])
        self.client.set_terminated(parent, status="FINISHED")
        self.client.set_tag(parent, SUMMARY_TAG, payload["digest"])

    def _log(
        self,
        run_id: str,
        *,
        params: dict[str, str] | None = None,
        metrics: list | None = None,
        at: int | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param

        stamp = at or int(time.time() * 1000)
        params_left = [Param(k, v) for k, v in (params or {}).items()]
        metrics_left = [Metric(key, value, stamp, step) for key, value, step in metrics or []]
        # As few requests as MLflow's limits allow: ≤ 100 params and ≤ 1000 entities each.
        while params_left or metrics_left:
            chunk_params = params_left[:_BATCH_PARAMS]
            chunk_metrics = metrics_left[: _BATCH_METRICS - len(chunk_params)]
            params_left = params_left[len(chunk_params) :]
            metrics_left = metrics_left[len(chunk_metrics) :]
            self.client.log_batch(
                run_id, metrics=chunk_metrics, params=chunk_params, synchronous=True
            )


def _payload_problem(payload: object) -> str | None:
    """Why a spool file is not an lradvisor payload (None when it is one)."""
    if not isinstance(payload, dict) or not payload:
        return "not a JSON object"
    kind = payload.get("kind")
    if kind not in _REQUIRED:
        return f"unknown kind {str(kind)[:40]!r}"
    for key in ("experiment", "tracking_uri"):
        if not isinstance(payload.get(key), str) or not payload.get(key):
            return f"no '{key}'"
    missing = [key for key in _REQUIRED[kind] if key not in payload]
    return f"missing {', '.join(missing)}" if missing else None


def _quarantine(path: Path, reason: str, result: SyncResult) -> None:
    """Move a payload file that can never be sent to ``bad/`` (kept for a human to read)."""
    target = path.parent / QUARANTINE / path.name
    try:
        target.parent.mkdir(exist_ok=True)
        path.replace(target)
    except OSError as exc:
        result.errors.append(f"{path.name}: {reason}; could not move it to {QUARANTINE}/ ({exc})")
        result.pending += 1
        return
    result.quarantined.append(path.name)
    result.errors.append(f"{path.name}: {reason}; moved to {target.parent}")


def _timed_out(exc: BaseException | None) -> bool:
    """True when a request got no answer in time (somewhere in the exception's chain)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower():
            return True
        if type(exc).__name__ in ("Timeout", "ReadTimeout", "ConnectTimeout", "ReadTimeoutError"):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _refused(exc: BaseException) -> bool:
    """True when the store refused this payload (its fault), not when the store failed."""
    if isinstance(exc, (KeyError, TypeError, ValueError, AttributeError)):
        return not isinstance(exc, (ConnectionError, TimeoutError))
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status not in (401, 403, 404, 408, 429)


def sync(
    spool: str | Path | None = None,
    *,
    tracking_uri: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    _deliveries: dict[str, _Delivery] | None = None,
) -> SyncResult:
    """Send every payload kept in ``spool`` (to ``tracking_uri``, or where each was meant).

    Payloads are sent in order (parent runs, trials, summaries); each one sent is removed.
    The first failure of a tracking store stops its remaining payloads (they stay). A file
    that is not a payload, or that the store refuses, is moved to ``bad/`` and named in
    ``errors``; the others are still sent. Safe to run while a study is logging: a payload
    another process is sending is skipped.
    """
    folder = spool_folder(spool)
    try:
        paths = _pending(folder)
    except OSError as exc:
        return SyncResult(errors=[f"spool {folder}: {exc.strerror or exc}"])
    result = SyncResult()
    # A caller that flushes often (the uploader) keeps its clients, experiment ids and
    # parent run ids between flushes; a dead store is probed again on every flush.
    deliveries = _deliveries if _deliveries is not None else {}
    down: dict[str, str] = {}
    probed: set[str] = set()
    for index, path in enumerate(paths):
        with _claimed(path) as handle:
            if handle is None:  # sent by another process meanwhile, or being sent
                continue
            payload = _read(path)
            problem = _payload_problem(payload)
            if problem is not None:
                _quarantine(path, f"not an lradvisor payload ({problem})", result)
                continue
            uri = tracking_uri or payload["tracking_uri"]
            if uri in down:
                result.pending += 1
                continue
            try:
                delivery = deliveries.get(uri) or _Delivery(uri)
                if uri not in probed:
                    probed.add(uri)
                    problem = delivery.reachable()
                    if problem:
                        raise ConnectionError(problem)
                deliveries[uri] = delivery
                delivery.send(payload)
            except Exception as exc:  # any failure keeps the payload for the next try
                message = str(exc).splitlines()[0][:200] if str(exc) else ""
                if _refused(exc):
                    _quarantine(path, f"refused by {uri}: {type(exc).__name__}: {message}", result)
                    continue
                deliveries.pop(uri, None)  # cached run ids may be stale after an outage
                result.timed_out = result.timed_out or _timed_out(exc)
                if isinstance(exc, ConnectionError):  # the probe's own words
                    down[uri] = message
                else:
                    down[uri] = f"{uri}: {type(exc).__name__}: {message}"
                result.errors.append(down[uri])
                result.pending += 1
                continue
            path.unlink(missing_ok=True)
            result.sent += 1
        if progress is not None:
            progress(index + 1, len(paths))
    return result


# ------------------------------------------------------------------------- the callback


class _SenderProcess:
    """A child Python process that sends the spool (``lradvisor.integrations._mlflow_sender``).

    MLflow's client is pure Python (SQLAlchemy for a local store): run in a thread of the
    training process, it takes the GIL from the training loop for ~50 ms per trial. In a
    child process it runs on another core; the thread that asks it to send only waits on a
    pipe. One JSON line per request and per answer; any trouble with the child (no answer
    within :data:`SENDER_TIMEOUT`, an exit) and the caller sends in-process instead.

    The child starts isolated (``python -I``): neither the working folder nor ``PYTHON*``
    variables shape its import path, which is the parent's own minus the working folder,
    so a ``json.py`` or ``mlflow.py`` lying in the working folder never runs.
    """

    _shared: _SenderProcess | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> _SenderProcess:
        """The process's one sender child (started on first use, again if it died).

        Shared by every uploader of the process, like an imported module: a second study
        in the same process finds it warm.
        """
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.alive():
                cls._shared = cls()
                # At exit the child may be creating a new local store's tables (a command
                # stopped seconds after it started, on a busy machine): a kill then would
                # leave the store half-migrated for every later use, so a child still busy
                # is left to finish; with stdin closed it ends after that request.
                atexit.register(cls._shared.close, wait=REQUEST_TIMEOUT + 2.0, kill=False)
            return cls._shared

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        with contextlib.suppress(OSError):
            self.process = subprocess.Popen(
                sender_command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def request(self, *, timeout: float = SENDER_TIMEOUT, **message: Any) -> dict[str, Any] | None:
        """The child's answer to ``message``, or None when the child is gone or too slow."""
        with self._lock:
            if not self.alive():
                return None
            answer = ""
            try:
                self.process.stdin.write(json.dumps(message) + "\n")
                self.process.stdin.flush()
                ready, _, _ = select.select([self.process.stdout], [], [], timeout)
                if ready:
                    answer = self.process.stdout.readline()
            except (OSError, ValueError):
                answer = ""
            if answer:
                with contextlib.suppress(ValueError):
                    return json.loads(answer)
        self.close(wait=10.0)  # a child that is merely slow gets to finish what it does
        return None

    def close(self, wait: float = 10.0, *, kill: bool = True) -> None:
        """Close the child's stdin (it ends after its current request) and wait ``wait``
        seconds; then kill it, or with ``kill=False`` leave it to finish on its own."""
        if self.process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            if kill:
                self.process.kill()
                self.process.wait()
        self.process = None


def sender_command() -> list[str]:
    """``python -I -c …`` that runs the sender on the parent's import path, minus the
    working folder (``-I``: no ``PYTHONPATH``, user site, or working folder on the path)."""
    here = {os.path.realpath(os.getcwd()), os.path.realpath("")}
    paths = [path for path in sys.path if path and os.path.realpath(path) not in here]
    code = (
        "import sys; sys.path[:0] = " + repr(paths) + "; "
        "from lradvisor.integrations._mlflow_sender import main; main()"
    )
    return [sys.executable, "-I", "-c", code]


class _Uploader:
    """A daemon thread that flushes the spool after each new payload and on a timer.

    The sending itself happens in a child process (:class:`_SenderProcess`), or in this
    thread when the child could not be started or died. After a failure the uploader does
    not try again for :data:`RETRY_SECONDS` when the failure was slow (a circuit breaker):
    a server that hangs costs one request timeout, not one per trial. A fast failure (the
    server refuses connections) is retried after the next trial.
    """

    def __init__(
        self,
        spool: Path,
        tracking_uri: str,
        warn: Callable[[str], None],
    ) -> None:
        self.spool = spool
        self.uri = tracking_uri
        self.warn = warn
        self._wake = threading.Event()
        self._stop = False
        self._offline: str | None = None
        self._retry_at = 0.0
        self.sent = 0
        self._deliveries: dict[str, _Delivery] = {}
        self._child = _SenderProcess.shared()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="lradvisor-mlflow", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        self._warm()
        while True:
            self._wake.wait(timeout=RETRY_SECONDS)
            self._wake.clear()
            if self._stop:  # the closing flush runs in the caller's thread
                return
            self.flush()

    def _warm(self) -> None:
        """Import MLflow and open the store (a new local store creates its tables: seconds)
        while the first trial trains, not after it."""
        with self._lock:
            answer = self._child.request(warm=self.uri, timeout=WARM_TIMEOUT)
            if answer is None:
                delivery, problem, slow = warm(self.uri)
                self._deliveries.update(delivery)
            else:
                problem, slow = answer.get("error"), bool(answer.get("timed_out"))
            if problem:  # a timeout here would repeat in the first flush: wait first
                self._failed(problem, slow=slow)

    def _failed(self, reason: str, *, slow: bool) -> None:
        """Say once that the server is away; open the breaker if a request timed out."""
        self._retry_at = time.monotonic() + (RETRY_SECONDS if slow else 0.0)
        if self._offline is None:
            when = f"after {RETRY_SECONDS:.0f} s" if slow else "after each trial"
            self.warn(
                f"MLflow unreachable ({reason}); payloads are kept in {self.spool}: "
                f"retried {when}, or run `lradvisor mlflow sync`"
            )
        self._offline = reason

    def flush(self) -> SyncResult:
        """Send what is pending; the result counts everything this uploader has sent.

        While the breaker is open nothing is sent (the closing flush included: what is
        pending stays in the spool, as the warning said).
        """
        with self._lock:
            if self._offline is not None and time.monotonic() < self._retry_at:
                pending = len(_pending(self.spool)) if self.spool.is_dir() else 0
                return SyncResult(sent=self.sent, pending=pending, errors=[self._offline])
            result = self._flush()
            self.sent += result.sent
            return SyncResult(
                sent=self.sent,
                pending=result.pending,
                errors=result.errors,
                quarantined=result.quarantined,
            )

    def _send(self) -> SyncResult:
        answer = self._child.request(spool=str(self.spool))
        if answer is None:
            return sync(self.spool, _deliveries=self._deliveries)
        return SyncResult(**answer)

    def _flush(self) -> SyncResult:
        result = self._send()
        if result.quarantined:
            self.warn(
                f"{len(result.quarantined)} MLflow payload file(s) could not be sent and were "
                f"moved to {self.spool / QUARANTINE}: {', '.join(result.quarantined)} "
                f"({_quarantine_reason(result)})"
            )
        if result.pending and result.errors:
            self._failed(result.errors[-1], slow=result.timed_out)
        elif self._offline is not None and not result.pending:
            self.warn(f"MLflow reachable again: sent {result.sent} kept payload(s)")
            self._offline = None
        return result

    def close(self, timeout: float) -> None:
        """Stop the thread (the caller then flushes once more with :meth:`flush`)."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)


def _quarantine_reason(result: SyncResult) -> str:
    reasons = [e for e in result.errors if e.split(":", 1)[0] in result.quarantined]
    return reasons[0].split(": ", 1)[-1] if reasons else "malformed"


def _local_database(uri: str) -> Path | None:
    """The file of a local ``sqlite:///`` store, else None (servers, in-memory stores)."""
    prefix = "sqlite:///"
    database = Path(uri[len(prefix) :]) if uri.startswith(prefix) else None
    if database is None or database.name in ("", ":memory:"):
        return None
    return database


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive ``flock`` on the file next to a local SQLite store (first use, parent
    runs); no lock for any other store."""
    database = _local_database(uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".init.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def warm(uri: str) -> tuple[dict[str, _Delivery], str | None, bool]:
    """Open the store at ``uri`` once (a new local store creates its tables):
    ({uri: client}, None, False), or ({}, why not, whether a request timed out)."""
    try:
        delivery = _Delivery(uri)
        problem = delivery.reachable()
        if problem is None:
            delivery.client.search_experiments(max_results=1)
            return {uri: delivery}, None, False
        return {}, problem, "timed out" in problem
    except Exception as exc:  # any failure is reported, and retried later
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        return {}, f"{uri}: {type(exc).__name__}: {text}", _timed_out(exc)


def _stderr(message: str) -> None:
    print(f"lradvisor: warning: {message}", file=sys.stderr, flush=True)


class MLflowCallback:
    """Optuna callback: a nested MLflow run per finished trial under one parent per study.

    Works with any objective; the drift metrics come from
    :class:`~lradvisor.integrations.optuna.TrialMonitor` (trials without it get params,
    reported losses and tags only). Sending happens on a background thread, so a slow or
    absent tracking server never slows or stops the study. A tracking URI MLflow has no
    store for, or a spool folder that cannot take files, is an
    :class:`~lradvisor.errors.LRAdvisorError` here, before any trial; a spool that stops
    taking files later stops the logging with one warning, not the study.

    Args:
        tracking_uri: an MLflow tracking URI (``http://host:port``, ``sqlite:///…``);
            default ``MLFLOW_TRACKING_URI``, else MLflow's default local store.
        spool: folder for payloads not yet sent (default ``runs/mlflow-spool``).
        warn: where the one-line outage warnings go (default: stderr).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        spool: str | Path | None = None,
        warn: Callable[[str], None] = _stderr,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.spool = spool_folder(spool)
        check_tracking_uri(self.tracking_uri)
        _check_folder(self.spool, f"MLflow spool {self.spool}")
        self._warn = warn
        self._uploader: _Uploader | None = None
        self._parents: set[str] = set()
        self._stopped = False
        self._start()  # opens the store in the background while the first trial trains

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes
        return {**self.__dict__, "_uploader": None, "_parents": set()}

    def _start(self) -> _Uploader:
        if self._uploader is None:
            self._uploader = _Uploader(self.spool, self.tracking_uri, self._warn)
        return self._uploader

    def _keep(self, payload: dict[str, Any]) -> None:
        """Add a payload to the spool and wake the uploader; a spool that stopped taking
        files (permissions, disk full) stops the logging with one warning."""
        if self._stopped:
            return
        try:
            _write(self.spool, payload)
        except OSError as exc:
            self._stopped = True
            self._warn(
                f"MLflow logging stopped: cannot write to the spool {self.spool} "
                f"({exc.strerror or exc}); the study goes on without it"
            )
            return
        self._start().kick()

    def open(self, study: optuna.Study) -> None:
        """Queue the study's parent run (also done at the first finished trial)."""
        if study.study_name in self._parents:
            return
        self._parents.add(study.study_name)
        self._keep(parent_payload(study, tracking_uri=self.tracking_uri))

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            return
        self.open(study)
        self._keep(trial_payload(study, trial, tracking_uri=self.tracking_uri))

    def finish(
        self,
        study: optuna.Study,
        *,
        alpha_predicted: float | None = None,
        timeout: float = 120.0,
    ) -> SyncResult:
        """Queue the parent run's summary, send everything pending, stop the thread.

        Returns what the last flush did; payloads still pending (server away) are kept
        for the next run or ``lradvisor mlflow sync``, with one warning line.
        """
        self.open(study)
        self._keep(
            summary_payload(study, tracking_uri=self.tracking_uri, alpha_predicted=alpha_predicted)
        )
        return self.flush(timeout=timeout)

    def flush(self, *, timeout: float = 120.0) -> SyncResult:
        """Send what is pending now and stop the background thread."""
        uploader = self._start()
        uploader.close(timeout)
        self._uploader = None
        result = uploader.flush()
        if result.pending and uploader._offline is None:
            self._warn(
                f"{result.pending} MLflow payload(s) could not be sent and are kept in "
                f"{self.spool}; run `lradvisor mlflow sync` ({'; '.join(result.errors[:1])})"
            )
        return result


def log_replication(
    result: dict[str, Any],
    *,
    tracking_uri: str | None = None,
    spool: str | Path | None = None,
    warn: Callable[[str], None] = _stderr,
) -> SyncResult:
    """Log ``lradvisor reproduce``'s result (``ReplicationResult.as_dict()``) to MLflow.

    One MLflow experiment per paper experiment, a parent run per invocation (values,
    verdict, figures) and a nested run per claim; kept in the spool when the store is away.
    """
    uri = resolve_tracking_uri(tracking_uri)
    folder = spool_folder(spool)
    for payload in replication_payloads(result, tracking_uri=uri):
        _write(folder, payload)
    outcome = sync(folder)  # one flush, here: no thread or child process worth starting
    if outcome.pending:
        warn(
            f"{outcome.pending} MLflow payload(s) could not be sent and are kept in {folder}; "
            f"run `lradvisor mlflow sync` ({'; '.join(outcome.errors[:1])})"
        )
    return outcome

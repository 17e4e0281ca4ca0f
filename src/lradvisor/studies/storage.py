"""Where a study lives, and the lock that keeps K workers at exactly ``n_trials`` finished trials.

Storages:

- ``postgresql://…`` (any SQLAlchemy URL): Optuna's ``RDBStorage`` with a heartbeat. A
  trial whose worker stops beating for ``grace_period`` seconds is failed by
  ``optuna.storages.fail_stale_trials`` and re-queued by ``RetryHeartbeatStaleTrialCallback``
  (up to ``max_retry`` times). Workers may run on several machines.
- ``sqlite:///runs/studies.db`` (default for one worker): ``RDBStorage``, heartbeat as above.
- ``runs/studies.journal`` (default for ``--workers K > 1``; any path without ``://``):
  Optuna's journal file backend with ``JournalFileOpenLock``, which Optuna recommends over
  SQLite for several writing processes. It has no heartbeat.

Both file storages are single-machine by construction, so their trials also record the
worker's host, pid and process start time: a RUNNING trial whose process is gone is failed
and re-queued at once (the same retry callback), without waiting for a grace period.

A storage is checked before it is used (:func:`resolve_storage`: a URL SQLAlchemy can
parse, a dialect and driver that are installed, no in-memory SQLite, no folder where a
file belongs), and every failure to open or use it is one
:class:`~lradvisor.errors.LRAdvisorError` naming it (:func:`storage_errors`). The first
use of a new database creates its tables under a lock (a file lock next to an SQLite file,
an advisory lock on PostgreSQL), so two processes starting on a fresh folder do not race.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from lradvisor.errors import LRAdvisorError

__all__ = [
    "DEFAULT_JOURNAL",
    "DEFAULT_SQLITE",
    "OWNER_ATTR",
    "StorageSpec",
    "budget_lock",
    "fail_dead_local_trials",
    "owner_tag",
    "resolve_storage",
    "storage_errors",
]

DEFAULT_SQLITE = "sqlite:///runs/studies.db"
DEFAULT_JOURNAL = "runs/studies.journal"
OWNER_ATTR = "lradvisor.worker"
#: Seconds to wait for a database server to accept a connection.
CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class StorageSpec:
    """How to open a study's storage in any process (picklable; workers re-open it).

    ``location`` is an SQLAlchemy URL (``kind == "rdb"``) or a journal file path
    (``kind == "journal"``). ``heartbeat_interval`` / ``grace_period`` are seconds.
    """

    kind: str
    location: str
    heartbeat_interval: int = 30
    grace_period: int = 90
    max_retry: int = 3

    @property
    def local(self) -> bool:
        """True for storages that live in a local file (SQLite, journal): one machine only."""
        return self.kind == "journal" or self.location.startswith("sqlite:")

    @property
    def heartbeat(self) -> bool:
        return self.kind == "rdb"

    @property
    def display(self) -> str:
        """The location with any password hidden."""
        if self.kind != "rdb" or "@" not in self.location:
            return self.location
        scheme, _, rest = self.location.partition("://")
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}{':***' if ':' in credentials else ''}@{host}"

    def retry_callback(self) -> RetryHeartbeatStaleTrialCallback:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)

    def open(self) -> optuna.storages.BaseStorage:
        """A fresh Optuna storage object for this process (errors: one LRAdvisorError)."""
        with storage_errors(self):
            if self.kind == "journal":
                from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

                Path(self.location).parent.mkdir(parents=True, exist_ok=True)
                backend = JournalFileBackend(
                    self.location, lock_obj=JournalFileOpenLock(self.location)
                )
                return optuna.storages.JournalStorage(backend)
            _make_sqlite_folder(self.location)
            engine_kwargs: dict[str, Any] = {}
            if self.location.startswith("postgres"):
                engine_kwargs = {
                    "pool_pre_ping": True,
                    "connect_args": {"connect_timeout": CONNECT_TIMEOUT},
                }
            with schema_lock(self), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    _with_driver(self.location),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=self.heartbeat_interval,
                    grace_period=self.grace_period,
                    heartbeat_stale_trial_callback=self.retry_callback(),
                )


@contextlib.contextmanager
def storage_errors(spec: StorageSpec) -> Iterator[None]:
    """Turn a storage's failures (server away, file unwritable, not a database) into one
    LRAdvisorError line that names the storage."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except LRAdvisorError:
        raise
    except (SQLAlchemyError, OSError, optuna.exceptions.StorageInternalError) as exc:
        raise LRAdvisorError(f"storage {spec.display}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__  # Optuna's wrapper says "invalid data"; the cause says why
    original = getattr(exc, "orig", None) or exc
    if isinstance(original, OSError) and original.strerror:
        text = (
            f"{original.strerror}: {original.filename}" if original.filename else original.strerror
        )
    else:
        text = str(original)
    text = " ".join(text.split("(Background on this error")[0].split())
    return (text[:300] + "…") if len(text) > 300 else text or type(original).__name__


@contextlib.contextmanager
def schema_lock(spec: StorageSpec) -> Iterator[None]:
    """Serialise a database's first use (table creation, schema upgrade) across processes.

    Optuna creates its tables when a storage is opened; two processes opening a fresh SQLite
    file or PostgreSQL database together can both try, and one fails. SQLite: ``flock`` on
    a file next to the database; PostgreSQL: a session advisory lock; others: none.
    """
    lock: _FileLock | _AdvisoryLock | None = None
    if spec.location.startswith("sqlite:///"):
        lock = _FileLock(Path(spec.location.removeprefix("sqlite:///") + ".init.lock"))
    elif spec.location.startswith("postgres"):
        digest = hashlib.blake2b(f"schema|{spec.location}".encode(), digest_size=8).digest()
        lock = _AdvisoryLock(spec.location, int.from_bytes(digest, "big", signed=True))
    if lock is None:
        yield
        return
    lock.acquire()
    try:
        yield
    finally:
        lock.release()
        lock.close()


def _with_driver(url: str) -> str:
    """``postgresql://`` with a driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3; lradvisor's ``dev`` extra
    installs psycopg2 (``psycopg2-binary``), so the URL names it when psycopg 3 is absent.
    """
    scheme, separator, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not separator:
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise LRAdvisorError(
        "a postgresql:// storage needs a PostgreSQL driver: pip install psycopg2-binary"
    )


def _make_sqlite_folder(url: str) -> None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix + ":memory:":
        Path(url[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def resolve_storage(
    storage: str | None,
    *,
    workers: int,
    study_name: str,
    heartbeat_interval: int = 30,
    grace_period: int = 90,
    max_retry: int = 3,
) -> tuple[StorageSpec, str | None]:
    """The storage to use, and a note when the default was chosen for an existing study.

    With ``storage=None`` a study already in ``runs/studies.db`` or ``runs/studies.journal``
    is resumed where it is; a new one goes to SQLite for one worker, the journal for more.
    """
    options = {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period,
        "max_retry": max_retry,
    }
    if storage is not None:
        return _explicit_storage(storage, options), None
    sqlite = StorageSpec("rdb", DEFAULT_SQLITE, **options)
    journal = StorageSpec("journal", DEFAULT_JOURNAL, **options)
    preferred, other = (sqlite, journal) if workers == 1 else (journal, sqlite)
    if not _holds_study(preferred, study_name) and _holds_study(other, study_name):
        return other, f"resuming study '{study_name}' found in {other.location}"
    return preferred, None


def _holds_study(spec: StorageSpec, study_name: str) -> bool:
    path = spec.location.removeprefix("sqlite:///")
    if not Path(path).is_file():
        return False
    storage = spec.open()
    with storage_errors(spec):
        return study_name in optuna.study.get_all_study_names(storage)


def _explicit_storage(storage: str, options: dict[str, int]) -> StorageSpec:
    """A ``--storage`` value checked before use: a database URL SQLAlchemy can open with an
    installed driver, or a journal file path."""
    text = storage.strip()
    if not text:
        raise LRAdvisorError("storage: expected a database URL or a journal file path, got ''")
    if "://" not in text:
        path = Path(text)
        if path.is_dir():
            raise LRAdvisorError(
                f"storage {text}: is a folder; expected a journal file path (or a database URL)"
            )
        if path.exists() and not path.is_file():
            raise LRAdvisorError(f"storage {text}: exists and is not a regular file")
        return StorageSpec("journal", text, **options)
    spec = StorageSpec("rdb", text, **options)
    _check_url(spec)
    return spec


def _check_url(spec: StorageSpec) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = spec.display
    usage = "postgresql://user@host/db, sqlite:///file.db or a journal file path"
    try:
        url = make_url(spec.location)
        backend = url.get_backend_name()
    except (ArgumentError, ValueError) as exc:
        raise LRAdvisorError(
            f"storage {shown}: not a database URL ({exc}); expected {usage}"
        ) from None
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            raise LRAdvisorError(
                f"storage {shown}: an in-memory SQLite database lives in one connection and "
                f"is lost at exit; expected a file, e.g. sqlite:///runs/studies.db"
            )
        if Path(database).is_dir():
            raise LRAdvisorError(f"storage {shown}: {database} is a folder, not a database file")
    try:
        dialect = make_url(_with_driver(spec.location)).get_dialect()
    except NoSuchModuleError:
        raise LRAdvisorError(
            f"storage {shown}: unknown database scheme '{url.drivername}'; expected {usage}"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise LRAdvisorError(
            f"storage {shown}: the '{url.drivername}' driver is not installed ({exc}); "
            f"install it, e.g. pip install {_DRIVER_PACKAGES.get(backend, 'the driver')}"
        ) from None


_DRIVER_PACKAGES = {"mysql": "pymysql (and use mysql+pymysql://)", "postgresql": "psycopg2-binary"}


# ---------------------------------------------------------------------------------------
# The budget lock: "count the trials, then create one" must be atomic across workers.


class _FileLock:
    """An exclusive ``flock`` on a file; released by the kernel if the process dies."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._handle: Any = None

    def acquire(self) -> None:
        import fcntl

        handle = open(self._path, "a")  # held until release()
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def close(self) -> None:
        self.release()


class _AdvisoryLock:
    """A PostgreSQL session advisory lock; the server releases it if the connection drops."""

    def __init__(self, url: str, key: int) -> None:
        self._url = url
        self._key = key
        self._connection: Any = None
        self._held = False

    def acquire(self) -> None:
        from sqlalchemy import text

        if self._connection is None:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            engine = create_engine(
                _with_driver(self._url),
                poolclass=NullPool,
                connect_args={"connect_timeout": CONNECT_TIMEOUT},
            )
            self._connection = engine.connect()
        self._connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        self._connection.commit()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        from sqlalchemy import text

        self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        self._connection.commit()
        self._held = False

    def close(self) -> None:
        """Release the lock and the connection (a short-lived lock's own connection)."""
        self.release()
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def budget_lock(spec: StorageSpec, study_name: str) -> _FileLock | _AdvisoryLock:
    """A cross-process lock for one study's trial budget.

    PostgreSQL: an advisory lock (works across machines). File storages: ``flock`` on a file
    next to the storage. Other SQLAlchemy URLs: ``flock`` on a file in the temp folder, which
    covers the workers of one machine only.
    """
    digest = hashlib.blake2b(f"{spec.location}|{study_name}".encode(), digest_size=8).digest()
    if spec.location.startswith("postgres"):
        return _AdvisoryLock(spec.location, int.from_bytes(digest, "big", signed=True))
    if spec.kind == "journal":
        return _FileLock(Path(spec.location + ".budget.lock"))
    if spec.location.startswith("sqlite:///"):
        return _FileLock(Path(spec.location.removeprefix("sqlite:///") + ".budget.lock"))
    return _FileLock(Path(tempfile.gettempdir()) / f"lradvisor-{digest.hex()}.lock")


# ---------------------------------------------------------------------------------------
# Liveness of local workers (file storages have no heartbeat).


def _start_time(pid: int) -> str:
    """The process start time in clock ticks since boot (Linux), '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def owner_tag() -> str:
    """``host:pid:start`` of this process, recorded on every trial it runs."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _is_dead_here(tag: str) -> bool:
    host, _, rest = tag.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return bool(start) and _start_time(pid) not in ("", start)  # the pid was reused


def fail_dead_local_trials(
    study: optuna.Study, retry: Callable[[optuna.Study, FrozenTrial], None]
) -> list[int]:
    """Fail RUNNING trials whose worker process on this machine is gone, and re-queue them."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = trial.user_attrs.get(OWNER_ATTR)
        if not isinstance(tag, str) or not _is_dead_here(tag):
            continue
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry(study, study._storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    return failed

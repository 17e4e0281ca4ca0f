"""A real PostgreSQL server on loopback for tests: initdb in a temp folder, pg_ctl start, stop.

Needs the server binaries (Debian/Ubuntu package ``postgresql``: initdb, pg_ctl, createdb
under /usr/lib/postgresql/<version>/bin, or on PATH, or in ``LRADVISOR_PG_BIN``) and
psycopg2 (``pip install psycopg2-binary``, in the ``dev`` extra). As root the server runs
as the ``postgres`` OS user (PostgreSQL refuses to run as root). Missing pieces fail the
test with the fix; ``LRADVISOR_SKIP_POSTGRES=1`` skips instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SKIP_VARIABLE = "LRADVISOR_SKIP_POSTGRES"
SERVER_USER = "postgres"
_TOOLS = ("initdb", "pg_ctl", "createdb")


def _missing(what: str) -> None:
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{what} ({SKIP_VARIABLE}=1)")
    pytest.fail(
        f"{what}: .ci/run must install `postgresql` (apt-get install -y postgresql; "
        f"the server binaries initdb, pg_ctl, createdb) and `psycopg2-binary` "
        f"(pip install -e '.[dev]'); or set {SKIP_VARIABLE}=1 to skip the PostgreSQL tests",
        pytrace=False,
    )


def server_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and createdb, or None."""
    candidates = [os.environ.get("LRADVISOR_PG_BIN", "")]
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for folder in filter(None, candidates):
        if all(os.access(Path(folder) / tool, os.X_OK) for tool in _TOOLS):
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One throw-away cluster; :meth:`database` creates a database and returns its URL."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.as_root = os.geteuid() == 0
        # As root the folder must be reachable by the postgres user (a private $TMPDIR is
        # not), and the socket path must stay under ~100 characters: /tmp serves both.
        base = "/tmp" if self.as_root and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="lradvisor-pg-", dir=base))
        self.data = self.root / "data"
        self.port = _free_port()
        self._databases = 0
        if self.as_root:
            shutil.chown(self.root, user=SERVER_USER)

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", SERVER_USER, "--"] if self.as_root else []
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=60, cwd=self.root
        )
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{tail}"
            )
        return result

    def start(self) -> None:
        tool = str(self.binaries / "initdb")
        self._run(
            tool, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 127.0.0.1/32 trust\n")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            str(self.binaries / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        )

    def database(self) -> str:
        self._databases += 1
        name = f"lradvisor_test_{self._databases}"
        self._run(
            str(self.binaries / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            name,
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server on 127.0.0.1 (a free port), removed at the end."""
    binaries = server_binaries()
    if binaries is None:
        _missing("PostgreSQL server binaries (initdb, pg_ctl, createdb) not found")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _missing("psycopg2 is not installed")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(SERVER_USER)
        except KeyError:
            _missing(f"running as root but there is no '{SERVER_USER}' OS user to run the server")
    server = PostgresServer(binaries)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql://postgres@127.0.0.1:<port>/<fresh database>``."""
    return postgres_server.database()

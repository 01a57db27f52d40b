"""A real PostgreSQL server for the tests, started by the tests themselves.

Debian's ``postgresql`` package provides the binaries (``.ci/run`` installs it
where missing). ``initdb`` makes a cluster in a temporary folder and ``pg_ctl``
starts it on a free loopback port, with its socket in that folder. PostgreSQL
refuses to run as root, so under root the folder is handed to ``nobody`` and
the server runs as that user. The cluster trades durability for speed
(``fsync=off``): it is thrown away at the end.

    postgres_server   one server for the whole session
    database_url      a fresh database on it for each test (CREATE DATABASE)

Import the fixtures into a test module:
``from postgres import database_url_fixture, postgres_server_fixture``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from receiver import free_port

SUPERUSER = "postgres"
_SETTINGS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
    "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB"
)


def find_binaries() -> Optional[Path]:
    """The folder with ``initdb`` and ``pg_ctl``: Debian's newest, else one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    number = path.split("/")[4]
    return int(number) if number.isdigit() else 0


class PostgresServer:
    """A throw-away cluster in ``folder``, served on ``127.0.0.1:port`` while started."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="cca-postgres-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._user = _unprivileged_user() if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.folder} {_SETTINGS}"
        log = str(self.folder / "server.log")
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "30", "start"
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as if it crashed); by its PID if pg_ctl cannot."""
        pid = self.pid()
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "20", "stop")
        except (subprocess.SubprocessError, OSError):
            if pid is not None:
                os.kill(pid, signal.SIGKILL)

    def pid(self) -> Optional[int]:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, database: str = SUPERUSER, password: Optional[str] = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = SUPERUSER) -> list[tuple[Any, ...]]:
        """Run ``sql`` as the superuser (autocommit); the rows it returns, if any."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []

    def create_database(self) -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        self.execute(f"CREATE DATABASE {name}")
        return name

    def destroy(self) -> None:
        if self.pid() is not None:
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        subprocess.run(
            [str(self.binaries / tool), *args],
            check=True, capture_output=True, timeout=60, cwd=self.folder, **kwargs,
        )  # fmt: skip


def _unprivileged_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to run PostgreSQL as")


def start_server() -> PostgresServer:
    """A new started server, or a skip saying why there cannot be one."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres,test]'")
    binaries = find_binaries()
    if binaries is None:
        pytest.skip(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; .ci/run installs "
            "Debian's postgresql package"
        )
    server = PostgresServer(binaries)
    for _ in range(3):  # the free port may be taken between asking and binding
        try:
            return server.start()
        except subprocess.CalledProcessError:
            server.port = free_port()
            time.sleep(0.1)
    log = (server.folder / "server.log").read_text(errors="replace")[-2000:]
    server.destroy()
    raise RuntimeError(f"PostgreSQL did not start:\n{log}")


@pytest.fixture(scope="session", name="postgres_server")
def postgres_server_fixture() -> Iterator[PostgresServer]:
    server = start_server()
    yield server
    server.destroy()


@pytest.fixture(name="database_url")
def database_url_fixture(postgres_server: PostgresServer) -> str:
    """A fresh, empty database for one test, as a ``postgresql://`` URL."""
    return postgres_server.url(postgres_server.create_database())

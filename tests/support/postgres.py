"""A real PostgreSQL for the tests, started unprivileged in a temp dir.

    with Postgres() as pg:               # or the `postgres` (session) / `pg_url` (per test) fixtures
        url = pg.create_database()       # postgresql://gateway@127.0.0.1:PORT/t_1, empty, yours

Debian's postgresql package (scripts/setup --test installs it) gives initdb and pg_ctl under
/usr/lib/postgresql/<major>/bin. initdb refuses to run as root and CI runs as root, so there the
cluster belongs to the ``postgres`` system user (made by the package) and every server command runs
through ``runuser``; as any other user it runs as that user. The server listens on 127.0.0.1 only,
on a free port, with its socket in the cluster's directory; authentication is ``trust`` (loopback,
a throwaway cluster). fsync stays on: the tests measure what production would do.

One server per test session (per xdist worker); each test gets a database of its own, dropped after.

The store's tests run on both backends through ``store_url`` ("" for SQLite, else a PostgreSQL URL).
Its PostgreSQL database is made and migrated once per session (creating and migrating one costs
about 1.5 s under load) and emptied before each test (DELETE of every table and the identities
reset, about 30 ms): a test sees a fresh store either way.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

USER = "gateway"  # the cluster's superuser, the role the gateway connects as
START_TIMEOUT = 60


def _bindir() -> Path | None:
    for pattern in ("/usr/lib/postgresql/*/bin",):
        found = sorted(glob.glob(pattern), key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
        for candidate in reversed(found):
            if (Path(candidate) / "initdb").exists():
                return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def available() -> bool:
    return _bindir() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self, *, max_connections: int = 300, settings: dict[str, str] | None = None):
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql; scripts/setup --test installs it)")
        self.bin = bindir
        self.max_connections = max_connections
        self.settings = settings or {}  # more server settings (-c name=value), e.g. log_statement
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o755)

    # ------------------------------------------------------------------ lifecycle

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                               + self._log_tail())
        return done

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _log_tail(self) -> str:
        log = self.log
        return ("\n" + log.read_text(errors="replace")[-2000:]) if log.exists() else ""

    def start(self) -> "Postgres":
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-instructions")
        options = " ".join([
            f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1",
            f"-c max_connections={self.max_connections}", "-c fsync=on", "-c synchronous_commit=on",
            "-c shared_buffers=128MB", *(f"-c {k}={v}" for k, v in self.settings.items()),
        ])
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", str(START_TIMEOUT), "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Postgres":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ databases

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql; its output (tuples only, unaligned)."""
        psql = self.bin / "psql" if (self.bin / "psql").exists() else Path(shutil.which("psql") or "psql")
        done = subprocess.run([str(psql), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", self.host,
                               "-p", str(self.port), "-U", USER, "-d", database, "-c", statement],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or f"t_{os.getpid()}_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session; skipped where the package is missing (scripts/setup
    --test installs it, so CI never skips)."""
    if not available():
        pytest.skip("PostgreSQL is not installed (scripts/setup --test installs the postgresql package)")
    with Postgres() as pg:
        yield pg


@pytest.fixture
def pg_url(postgres):
    """A fresh, empty database on the session's server; dropped after the test."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


def _empty(url: str) -> None:
    """Every table of the store's schema emptied (schema_migrations kept), the identities reset."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                                             " AND tablename != 'schema_migrations'")]
        sequences = [r[0] for r in conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()")]
        with conn.transaction():
            conn.execute("SET CONSTRAINTS ALL DEFERRED")
            for table in tables:
                conn.execute(f'DELETE FROM "{table}"')
            if sequences:
                conn.execute("SELECT " + ", ".join(f"setval('\"{s}\"', 1, false)" for s in sequences))


@pytest.fixture(scope="session")
def pg_store_database(postgres):
    """One database with the store's schema for the session (see the module docstring)."""
    from gateway.store.pg import connect, pg_migrate

    url = postgres.create_database()
    conn = connect(url)
    try:
        pg_migrate(conn)
    finally:
        conn.close()
    yield url
    postgres.drop_database(url)


@pytest.fixture
def pg_store_url(pg_store_database):
    """The session's store database, empty: the URL for ``store.url``."""
    _empty(pg_store_database)
    return pg_store_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request):
    """``store.url`` for each backend: "" (SQLite in the state directory), then PostgreSQL."""
    if request.param == "sqlite":
        return ""
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("SQLite only (the file, its pragmas or its query plans)")
    return request.getfixturevalue("pg_store_url")


__all__ = ["Postgres", "available", "postgres", "pg_url", "pg_store_database", "pg_store_url", "store_url", "USER"]

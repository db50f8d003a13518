"""An app's components as separate OS processes (`sagakit run MODULE:ATTR --component ...`),
each one killable and restartable: what `sagakit chaos`, `bench` and the crash tests drive."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import anyio
from anyio.abc import Process, TaskGroup

from ._app import ORCHESTRATOR, App
from .broker import free_port


@dataclass(frozen=True)
class Exit:
    """A member's process that ended without being killed or stopped: a crash."""

    name: str
    returncode: int
    log_path: Path
    error: str  # the last error line of its log ("" if none)

    def __str__(self) -> str:
        why = f": {self.error}" if self.error else ""
        return f"{self.name} exited by itself with status {self.returncode}{why} ({self.log_path})"


_ERROR_LINE = re.compile(r"([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?::.*)?$")


def last_error(log_path: Path) -> str:
    """The last exception line of a log (skipping exception groups), box drawing removed."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    for line in reversed(text.splitlines()):
        stripped = line.strip("│╭╰─╮╯ ")
        if _ERROR_LINE.match(stripped):
            return stripped
    return ""


@dataclass
class Member:
    """One component and the process currently running it."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: Process | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)
    starts: int = 0
    log_path: Path | None = None
    #: The process we killed or stopped last: its exit is no crash.
    stopped: Process | None = None
    #: Set once the current process has exited and its exit was looked at.
    exited: anyio.Event = field(default_factory=anyio.Event)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


async def _either(*events: anyio.Event) -> None:
    """Return once one of `events` is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


class ProcessSystem:
    """The components of an app as child processes: `orchestrators` processes for each
    saga type (sharing its partitions) and one per service.

    Members are named by what they run: a service by its name, an orchestrator
    ``orchestrator-N`` (``orchestrator-SAGA-N`` when the app has several sagas).
    `app_spec` is how the children import the app (``MODULE:ATTR``, from `app_dir`).
    """

    def __init__(
        self,
        app: App,
        app_spec: str,
        bootstrap: str,
        data_dir: Path,
        *,
        app_dir: Path | None = None,
        namespace: str = "",
        partitions: int = 8,
        orchestrators: int = 2,
        profile: str = "embedded",
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        console: bool = False,
    ) -> None:
        """`env` is added to every member's environment (OTEL_* variables, say); with
        `console`, a member ``console`` runs the web console (configured by `env`)."""
        self.app = app
        self.bootstrap = bootstrap
        self.data_dir = data_dir
        self.log_dir = log_dir or data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        common = ["--bootstrap", bootstrap, "--profile", profile, "--namespace", namespace]
        common += ["--partitions", str(partitions), "--data-dir", str(data_dir)]
        if app_dir is not None:
            common += ["--app-dir", str(app_dir)]
        base = [sys.executable, "-m", "sagakit", "run", app_spec]
        self.members: dict[str, Member] = {}
        self.http_ports: dict[str, int] = {}
        self.services: list[str] = [s.name for s in app.services]
        for component in app.components:
            kind, _, name = component.partition(":")
            if kind == ORCHESTRATOR:
                prefix = "orchestrator" if len(app.sagas) == 1 else f"orchestrator-{name}"
                names = [f"{prefix}-{i}" for i in range(1, orchestrators + 1)]
            else:
                names = [name]
            for member in names:
                port = self.http_ports[member] = free_port()
                argv = [*base, "--component", component, *common, "--http-port", str(port)]
                self.members[member] = Member(member, argv)
        if console:
            port = self.http_ports["console"] = free_port()
            argv = [*base, "--component", "console", *common, "--http-port", str(port)]
            self.members["console"] = Member("console", argv)
        self.env = dict(env or {})
        #: Processes that ended without `kill`, `signal` or `stop_all`, in order.
        self.crashes: list[Exit] = []
        self._tg: TaskGroup | None = None

    @property
    def orchestrators(self) -> list[str]:
        return [n for n in self.members if n not in self.services and n != "console"]

    async def __aenter__(self) -> ProcessSystem:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            await self.stop_all()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

    async def start(
        self, name: str, *, env: Mapping[str, str] | None = None, wait_ready: float | None = 30.0
    ) -> Member:
        """Start (or restart) a member; wait until it prints READY (or exits: a crash
        asked for by SAGAKIT_CRASH_AT may come first) unless `wait_ready` is None."""
        member = self.members[name]
        if member.alive:
            raise RuntimeError(f"{name} is already running (pid {member.pid})")
        member.env = {**self.env, **(env or {})}
        member.ready = anyio.Event()
        member.starts += 1
        member.exited = anyio.Event()
        member.log_path = self.log_dir / f"{name}.{member.starts}.log"
        log = open(member.log_path, "wb")  # noqa: ASYNC230, SIM115
        faults = ("SAGAKIT_CRASH_AT", "SAGAKIT_STALL_AT")
        child_env = {k: v for k, v in os.environ.items() if k not in faults}
        child_env.update(PYTHONUNBUFFERED="1", **member.env)
        member.process = await anyio.open_process(
            member.argv, stdout=subprocess.PIPE, stderr=log, env=child_env
        )
        log.close()
        assert self._tg is not None
        self._tg.start_soon(self._watch, member, member.process)
        if wait_ready is not None:
            with anyio.fail_after(wait_ready):
                await _either(member.ready, member.exited)  # a crash on the way counts too
        return member

    async def start_all(
        self, wait_ready: float = 60.0, envs: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        """Orchestrators one after another (one group), then the services together;
        `envs` adds to the environment of the members it names."""
        envs = envs or {}
        for name in self.orchestrators:
            await self.start(name, env=envs.get(name), wait_ready=wait_ready)
        async with anyio.create_task_group() as tg:
            for name in self.services:
                tg.start_soon(lambda n: self.start(n, env=envs.get(n), wait_ready=wait_ready), name)

    async def _watch(self, member: Member, process: Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            if b"READY" in buffer and member.process is process:
                member.ready.set()
                buffer = b""
        returncode = await process.wait()
        if member.process is process:
            if member.stopped is not process and member.log_path is not None:
                self.crashes.append(
                    Exit(member.name, returncode, member.log_path, last_error(member.log_path))
                )
            member.exited.set()

    def crashed(self) -> list[str]:
        """Members whose process crashed and was not started again."""
        return [
            m.name
            for m in self.members.values()
            if m.process is not None and not m.alive and m.stopped is not m.process
        ]

    def signal(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        member = self.members[name]
        if member.process is not None and member.alive:
            if sig not in (signal.SIGSTOP, signal.SIGCONT):
                member.stopped = member.process
            member.process.send_signal(sig)

    async def wait_exit(self, name: str, timeout: float = 30.0) -> int:
        member = self.members[name]
        assert member.process is not None
        with anyio.fail_after(timeout):
            returncode = await member.process.wait()
            await member.exited.wait()  # and its exit is counted (a crash, or not)
        return returncode

    async def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        await self.wait_exit(name)

    async def stop_all(self) -> None:
        """Stop members one at a time (a group whose leader leaves mid-rebalance can wedge)."""
        for member in self.members.values():
            if member.process is None or not member.alive:
                continue
            member.stopped = member.process
            if member.env.get("SAGAKIT_STALL_AT"):
                member.process.send_signal(signal.SIGCONT)
            member.process.terminate()
            try:
                with anyio.fail_after(15):
                    await member.process.wait()
            except TimeoutError:
                member.process.kill()
                await member.process.wait()

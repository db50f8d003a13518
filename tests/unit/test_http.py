"""The HTTP endpoints of a process: liveness always, readiness only when ready."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import pytest

from sagakit._http import HEALTH_PATH, METRICS_PATH, READY_PATH, HttpEndpoints
from sagakit._metrics import Metrics
from sagakit.broker import EmbeddedBroker

pytestmark = pytest.mark.anyio


async def test_readiness_follows_the_component_and_metrics_are_prometheus_text() -> None:
    ready = [False]
    metrics = Metrics("payments")
    metrics.handled_total.labels(
        "payments", "payments.ReserveCredit", "payments.CreditReserved"
    ).inc(3)
    endpoints = HttpEndpoints(port=0, host="127.0.0.1", ready=lambda: ready[0], metrics=[metrics])
    async with anyio.create_task_group() as tg, aiohttp.ClientSession() as http:
        await tg.start(endpoints.run)
        base = f"http://127.0.0.1:{endpoints.bound_port}"
        async with http.get(base + HEALTH_PATH) as r:
            assert r.status == 200
        async with http.get(base + READY_PATH) as r:
            assert r.status == 503
        ready[0] = True
        async with http.get(base + READY_PATH) as r:
            assert r.status == 200
        async with http.get(base + METRICS_PATH) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        tg.cancel_scope.cancel()
    assert (
        'sagakit_messages_handled_total{message_type="payments.ReserveCredit",'
        'outcome="payments.CreditReserved",service="payments"} 3.0' in text
    )


def test_the_loop_runs_on_uvloop_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from sagakit._loop import run

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.delenv("SAGAKIT_UVLOOP", raising=False)
    assert run(loop_module).startswith("asyncio")
    monkeypatch.setenv("SAGAKIT_UVLOOP", "1")
    assert run(loop_module).startswith("uvloop")


@pytest.mark.kafka
def test_a_port_in_use_is_said_plainly_not_as_a_traceback(kafka_broker: EmbeddedBroker) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "sagakit",
                "run",
                "services.app:app",
                "--bootstrap",
                kafka_broker.bootstrap_servers,
                "--http-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).parents[2],
        )
    assert run.returncode == 2
    assert f"cannot serve HTTP on 0.0.0.0:{port}" in run.stderr and "--http-port" in run.stderr
    assert "Traceback" not in run.stderr

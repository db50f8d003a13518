"""A user's own app, outside this repository's packages, run as people run it: `sagakit run
MODULE:ATTR` from the directory that holds it, one component per process on the embedded
broker, and looked into with `sagakit sagas list --app MODULE:ATTR --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from sagakit.broker import EmbeddedBroker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka, pytest.mark.slow]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))

MYAPP = '''
"""A newcomer's shop: a checkout saga over carts, payments and a mailer."""

from pydantic import BaseModel

from sagakit import (
    App, BusinessFailure, Command, HandlerContext, Reply, RetryPolicy, Saga, Service,
    SqliteStore, Step,
)


class Hold(Command, type="carts.Hold"):
    order: str


class Held(Reply, type="carts.Held"):
    pass


class Release(Command, type="carts.Release"):
    order: str


class Released(Reply, type="carts.Released"):
    pass


class Charge(Command, type="payments.Charge"):
    order: str
    amount: int


class Charged(Reply, type="payments.Charged"):
    pass


class Declined(Reply, type="payments.Declined"):
    pass


class Mail(Command, type="mailer.Mail"):
    order: str


class Mailed(Reply, type="mailer.Mailed"):
    pass


class Order(BaseModel):
    order: str
    amount: int


PATIENT = RetryPolicy(max_attempts=5, timeout_s=5, initial_backoff_s=0.2)

checkout = Saga("checkout", state=Order, steps=[
    Step("hold", invoke=Hold, on_reply={Held: None}, compensate=Release, retry=PATIENT),
    Step("charge", invoke=Charge, on_reply={Charged: None}, failures=[Declined],
         retry=PATIENT, pivot=True),
    Step("mail", invoke=Mail, on_reply={Mailed: None}, retry=PATIENT),
])

HELD = "CREATE TABLE IF NOT EXISTS held (o TEXT PRIMARY KEY, state TEXT)"
carts = Service("carts", SqliteStore("carts.sqlite3", schema=HELD))
payments = Service("payments", SqliteStore("payments.sqlite3"))
SENT = "CREATE TABLE IF NOT EXISTS sent (o TEXT PRIMARY KEY)"
mailer = Service("mailer", SqliteStore("mailer.sqlite3", schema=SENT))


@carts.handles(Hold)
def hold(cmd: Hold, ctx: HandlerContext) -> Held:
    ctx.db.execute("INSERT OR IGNORE INTO held VALUES (?, 'held')", (cmd.order,))
    return Held()


@carts.handles(Release)
def release(cmd: Release, ctx: HandlerContext) -> Released:
    ctx.db.execute("INSERT OR REPLACE INTO held VALUES (?, 'released')", (cmd.order,))
    return Released()


@payments.handles(Charge)
def charge(cmd: Charge, ctx: HandlerContext) -> Charged:
    if cmd.amount > 100:
        raise BusinessFailure(Declined())
    return Charged()


@mailer.handles(Mail)
def mail(cmd: Mail, ctx: HandlerContext) -> Mailed:
    ctx.db.execute("INSERT OR IGNORE INTO sent VALUES (?)", (cmd.order,))
    return Mailed()


app = App("shop", sagas=[checkout], services=[carts, payments, mailer])
'''

START = """
import sys
import anyio
from sagakit import KafkaSettings, KafkaTransport, SagaClient
from myapp import Order, checkout

async def main():
    async with KafkaTransport(KafkaSettings.embedded(sys.argv[1])) as transport:
        client = SagaClient(transport, namespace=sys.argv[2])
        for i, amount in enumerate([10, 500, 20]):
            await client.start(checkout, f"order-{i}", Order(order=f"order-{i}", amount=amount))

anyio.run(main)
"""


def env_without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


async def wait_for_line(process: Process, text: bytes, timeout: float = 60) -> bytes:
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(timeout):
        async for chunk in process.stdout:
            seen += chunk
            if text in seen:
                return seen
    raise AssertionError(f"{text!r} never printed; saw {seen!r}")


async def test_a_users_app_runs_one_component_per_process_and_every_tool_works_on_it(
    kafka_broker: EmbeddedBroker, tmp_path: Path, unique: str
) -> None:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(MYAPP))
    (tmp_path / "start.py").write_text(START)
    bootstrap = kafka_broker.bootstrap_servers
    ns = f"{unique}."
    common = ["--bootstrap", bootstrap, "--profile", "embedded", "--namespace", ns]
    common += ["--http-port", "0", "--data-dir", str(tmp_path / "data")]
    components = ["orchestrator:checkout", "service:carts", "service:payments", "service:mailer"]
    env = env_without_pythonpath()  # found from the working directory, as uvicorn does
    processes: list[Process] = []
    try:
        for component in components:
            process = await anyio.open_process(
                [SAGAKIT, "run", "myapp:app", "--component", component, *common],
                cwd=tmp_path,
                env=env,
                stderr=subprocess.DEVNULL,
            )
            processes.append(process)
            await wait_for_line(process, b"READY")
        started = await anyio.run_process(
            [sys.executable, "start.py", bootstrap, ns], cwd=tmp_path, env=env, check=False
        )
        assert started.returncode == 0, started.stderr
        with anyio.fail_after(60):
            while True:
                listed = await anyio.run_process(
                    [
                        SAGAKIT,
                        "sagas",
                        "list",
                        "--app",
                        "myapp:app",
                        "--json",
                        *common[:2],
                        "--namespace",
                        ns,
                    ],
                    cwd=tmp_path,
                    env=env,
                    check=False,
                )
                assert listed.returncode == 0, listed.stderr
                sagas = json.loads(listed.stdout)
                if len(sagas) == 3 and all(s["status"] != "RUNNING" for s in sagas):
                    break
                await anyio.sleep(0.5)
    finally:
        for process in processes:  # one at a time: the group's leader must not leave mid-way
            process.terminate()
            with anyio.move_on_after(20):
                await process.wait()
    by_id = {s["saga_id"]: s for s in sagas}
    assert {s["saga_type"] for s in sagas} == {"checkout"}
    assert {s["version"] for s in sagas} == {1}
    assert by_id["order-0"]["status"] == "COMPLETED"
    assert by_id["order-1"]["status"] == "COMPENSATED"  # declined: the hold was released
    assert by_id["order-2"]["status"] == "COMPLETED"
    assert all(p.returncode == 0 for p in processes), [p.returncode for p in processes]

    shown = await anyio.run_process(
        [
            SAGAKIT,
            "sagas",
            "show",
            "order-1",
            "--app",
            "myapp:app",
            "--json",
            "--bootstrap",
            bootstrap,
            "--namespace",
            ns,
        ],
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    timeline = json.loads(shown.stdout)["timeline"]
    assert [t["sent"]["type"] for t in timeline if t["sent"]] == [
        "carts.Hold",
        "payments.Charge",
        "carts.Release",
    ]


async def test_run_embedded_starts_a_broker_others_can_join(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(MYAPP))
    env = env_without_pythonpath()
    process = await anyio.open_process(
        [SAGAKIT, "run", "myapp:app", "--embedded", "--http-port", "0"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        seen = await wait_for_line(process, b"READY")
        line = next(x for x in seen.decode().splitlines() if x.startswith("use it with: "))
        bootstrap = line.removeprefix("use it with: --bootstrap ").strip()
        (tmp_path / "start.py").write_text(START)
        started = await anyio.run_process(
            [sys.executable, "start.py", bootstrap, ""], cwd=tmp_path, env=env, check=False
        )
        assert started.returncode == 0, started.stderr
        with anyio.fail_after(60):
            while True:
                listed = await anyio.run_process(
                    [
                        SAGAKIT,
                        "sagas",
                        "list",
                        "--app",
                        "myapp:app",
                        "--json",
                        "--bootstrap",
                        bootstrap,
                    ],
                    cwd=tmp_path,
                    env=env,
                    check=False,
                )
                sagas = json.loads(listed.stdout) if listed.returncode == 0 else []
                if len(sagas) == 3 and all(s["status"] != "RUNNING" for s in sagas):
                    break
                await anyio.sleep(0.5)
    finally:
        process.terminate()
        with anyio.move_on_after(20):
            await process.wait()
    assert process.returncode == 0
    assert sorted(s["status"] for s in sagas) == ["COMPENSATED", "COMPLETED", "COMPLETED"]


def test_a_component_the_app_lacks_is_refused_with_the_ones_it_has(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(MYAPP))
    done = subprocess.run(
        [SAGAKIT, "run", "myapp:app", "--component", "service:nobody", "--embedded"],
        cwd=tmp_path,
        env=env_without_pythonpath(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "has no component 'service:nobody'" in done.stderr
    assert "service:mailer" in done.stderr

"""The parallel group, the wait for a person and cancel on the embedded broker, driven as an
operator would: `SagaClient` and the `sagakit sagas signal|cancel` commands. Outcomes are
read back from the journal and from what the service did (tests/apps/onboarding.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from sagakit import KafkaTransport, SagaClient, SagaInstance, SagaStatus
from sagakit._chaos import dead_letters
from sagakit._inspect import find_saga
from sagakit.broker import EmbeddedBroker
from tests.apps.onboarding import (
    LEDGER,
    Approved,
    Hire,
    app,
    hire_with_badge,
    issue_badge,
    onboard,
)

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

ROOT = Path(__file__).resolve().parents[2]
SAGAKIT = str(Path(sys.executable).with_name("sagakit"))


def cli(*args: str, bootstrap: str, ns: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGAKIT, *args, "--bootstrap", bootstrap, "--namespace", ns],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={
            "COLUMNS": "250",
            "PATH": "/usr/bin:/bin",
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
        },
    )


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    with anyio.fail_after(30):
        while not await check():  # noqa: ASYNC110 - written by the orchestrator's tasks
            await anyio.sleep(0.1)


async def waiting_for_a_person(client: SagaClient, saga_id: str) -> bool:
    instance = await client.status(onboard, saga_id)
    return instance is not None and bool(instance.waits)


async def until(
    client: SagaClient, saga_id: str, *statuses: SagaStatus, saga: Any = onboard
) -> SagaInstance:
    with anyio.fail_after(30):
        while True:
            instance = await client.status(saga, saga_id)
            if instance is not None and instance.status in statuses:
                return instance
            await anyio.sleep(0.1)


async def test_groups_waits_and_cancel_on_kafka(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    bootstrap = kafka_broker.bootstrap_servers
    client = SagaClient(kafka_transport, namespace=ns)
    runner = app.runner(kafka_transport, namespace=ns)
    await runner.ensure_topics()
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        await runner.wait_ready()

        # 1. a branch fails while the other's command is still out: it is waited for, then
        # everything done is undone, each once
        await client.start(onboard, "no-laptop", Hire(person="ann", laptop="none"))
        failed = await until(client, "no-laptop", SagaStatus.COMPENSATED)
        assert failed.failure == "order-laptop: it.NoLaptop"
        _, history = await find_saga(kafka_transport, "no-laptop", ns, onboard.name)
        at_failure = next(t for t in history if t.event == "step-failed")
        assert [p.step for p in at_failure.in_flight] == ["create-mailbox"]  # still out
        assert set(failed.compensated) == {"create-mailbox", "create-account"}
        assert LEDGER["mailbox:ann"] == LEDGER["mailbox-undone:ann"] == 1
        assert LEDGER["account:ann"] == LEDGER["account-undone:ann"] == 1
        assert LEDGER["laptop:ann"] == LEDGER["lists:ann"] == 0  # refused; never started

        # 2. a signal sent before the saga reaches its wait is kept, and taken there
        await client.start(onboard, "early", Hire(person="bob"))
        await client.signal(onboard.name, "early", Approved(manager="grace"))
        early = await until(client, "early", SagaStatus.COMPLETED)
        assert early.state.approved_by == "grace" and LEDGER["welcome:bob"] == 1

        # 3. a saga at its wait, approved by a person through the CLI
        await client.start(onboard, "waiting", Hire(person="cy"))
        await eventually(lambda: waiting_for_a_person(client, "waiting"))
        approved = await anyio.to_thread.run_sync(
            lambda: cli(
                "sagas",
                "signal",
                "waiting",
                "hr.Approved",
                "--data",
                '{"manager": "dee"}',
                "--app",
                "tests.apps.onboarding:app",
                bootstrap=bootstrap,
                ns=ns,
            )
        )
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert "signalled" in approved.stdout
        done = await until(client, "waiting", SagaStatus.COMPLETED)
        assert done.state.approved_by == "dee"

        # a signal for a saga that has ended is dead-lettered with why
        await client.signal(onboard.name, "waiting", Approved(manager="late"))

        async def too_late() -> bool:
            by_topic, _ = await dead_letters(kafka_transport, ns)
            return "SignalTooLate" in by_topic.get(f"{ns}onboard.inbox.dlq", {})

        await eventually(too_late)

        # 4. cancel while it waits for the manager: it undoes everything, with the reason
        await client.start(onboard, "cancelled", Hire(person="dan"))
        await eventually(lambda: waiting_for_a_person(client, "cancelled"))
        cancel = await anyio.to_thread.run_sync(
            lambda: cli(
                "sagas",
                "cancel",
                "cancelled",
                "--reason",
                "offer withdrawn",
                "--app",
                "tests.apps.onboarding:app",
                bootstrap=bootstrap,
                ns=ns,
            )
        )
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        gone = await until(client, "cancelled", SagaStatus.COMPENSATED)
        assert gone.failure == "cancelled: offer withdrawn"
        for what in ("account", "laptop", "mailbox", "lists"):
            assert LEDGER[f"{what}:dan"] == LEDGER[f"{what}-undone:dan"] == 1, what

        # a saga past its pivot cannot be cancelled: the CLI says why and sends nothing
        refused = await anyio.to_thread.run_sync(
            lambda: cli(
                "sagas",
                "cancel",
                "early",
                "--reason",
                "too late",
                "--app",
                "tests.apps.onboarding:app",
                bootstrap=bootstrap,
                ns=ns,
            )
        )
        assert refused.returncode != 0 and "ended" in refused.stdout + refused.stderr

        # 5. a child saga: run by its own orchestrator, and undone when its parent is
        await client.start(hire_with_badge, "eve-1", Hire(person="eve", laptop="none"))
        parent = await until(client, "eve-1", SagaStatus.COMPENSATED, saga=hire_with_badge)
        child = await until(client, "eve-1/badge", SagaStatus.COMPENSATED, saga=issue_badge)
        assert parent.failure == "laptop: it.NoLaptop"
        assert child.failure == "compensation asked by its parent saga"
        assert LEDGER["badge:eve"] == LEDGER["badge-undone:eve"] == 1
        assert LEDGER["account:eve"] == LEDGER["account-undone:eve"] == 1
        tg.cancel_scope.cancel()


async def test_a_rolling_upgrade_finishes_old_sagas_on_their_version(
    kafka_transport: KafkaTransport, unique: str
) -> None:
    """v1 sagas in flight, the orchestrator restarted running v1 and v2: both finish."""
    from sagakit import App, Orchestrator, Saga, Step
    from tests.apps.onboarding import (
        CreateAccount,
        DisableAccount,
        Done,
        SendWelcome,
        it,
    )

    v1 = Saga(
        "upgrade",
        version=1,
        state=Hire,
        steps=[
            Step("account", invoke=CreateAccount, on_reply={Done: None}, compensate=DisableAccount)
        ],
    )
    v2 = Saga(
        "upgrade",
        version=2,
        state=Hire,
        steps=[
            Step("account", invoke=CreateAccount, on_reply={Done: None}, compensate=DisableAccount),
            Step("welcome", invoke=SendWelcome, on_reply={Done: None}),
        ],
    )
    ns = f"{unique}."
    client = SagaClient(kafka_transport, namespace=ns)
    old = Orchestrator(v1, kafka_transport, namespace=ns)
    await old.ensure_topics()
    async with anyio.create_task_group() as tg:  # v1 only, and nobody answers its commands
        await tg.start(old.run)
        await old.wait_ready()
        for i in range(5):
            await client.start(v1, f"old-{i}", Hire(person=f"p{i}"))
        await eventually(lambda: _all_running(client, v1, [f"old-{i}" for i in range(5)]))
        tg.cancel_scope.cancel()

    runner = App("upgrade", sagas=[v1, v2], services=[it]).runner(kafka_transport, namespace=ns)
    await runner.ensure_topics()
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        await runner.wait_ready()
        for i in range(5):
            await client.start(v2, f"new-{i}", Hire(person=f"q{i}"))
        for i in range(5):
            old_one = await _ended(client, v2, f"old-{i}")
            new_one = await _ended(client, v2, f"new-{i}")
            assert (old_one.version, old_one.completed) == (1, ("account",))
            assert (new_one.version, new_one.completed) == (2, ("account", "welcome"))
        tg.cancel_scope.cancel()


async def _all_running(client: SagaClient, saga: Any, ids: list[str]) -> bool:
    for saga_id in ids:
        instance = await client.status(saga, saga_id)
        if instance is None or not instance.in_flight:
            return False
    return True


async def _ended(client: SagaClient, saga: Any, saga_id: str) -> SagaInstance:
    found: list[SagaInstance] = []

    async def done() -> bool:
        instance = await client.status(saga, saga_id)
        if instance is not None and instance.status is SagaStatus.COMPLETED:
            found.append(instance)
            return True
        return False

    await eventually(done)
    return found[0]

"""Timers that survive a restart, and what people do on a running system: list, show,
resume and resolve parked sagas, list and replay dead letters — through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from sagakit import (
    BusinessFailure,
    Command,
    HandlerContext,
    KafkaTransport,
    MemoryStore,
    Orchestrator,
    Reply,
    RetryPolicy,
    Saga,
    SagaClient,
    SagaStatus,
    Service,
    Step,
)
from sagakit._inspect import find_saga
from sagakit.broker import EmbeddedBroker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))


class Hold(Command, type="optest.Hold"):
    ref: str


class Held(Reply, type="optest.Held"):
    pass


class Unhold(Command, type="optest.Unhold"):
    ref: str


class Unheld(Reply, type="optest.Unheld"):
    pass


class UnholdFailed(Reply, type="optest.UnholdFailed"):
    pass


class Charge(Command, type="optest.Charge"):
    ref: str


class Charged(Reply, type="optest.Charged"):
    pass


class Declined(Reply, type="optest.Declined"):
    pass


class Ref(BaseModel):
    ref: str


held = Saga(
    "held",
    state=Ref,
    steps=[
        Step(
            "hold",
            invoke=Hold,
            on_reply={Held: None},
            retry=RetryPolicy(max_attempts=5, timeout_s=1.0, initial_backoff_s=0.1, jitter=0),
            compensate=Unhold,
            compensation_failures=[UnholdFailed],
            compensation_retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.1, jitter=0),
        ),
        Step("charge", invoke=Charge, on_reply={Charged: None}, failures=[Declined]),
    ],
)


def participant(
    *,
    unhold_works: list[bool],
    seen: list[str],
    charge_fixed: list[bool] | None = None,
    charged: list[str] | None = None,
) -> Service[None]:
    fixed = charge_fixed if charge_fixed is not None else [False]
    service: Service[None] = Service("optest", MemoryStore())

    @service.handles(Hold)
    def hold(cmd: Hold, ctx: HandlerContext[None]) -> Held:
        seen.append(ctx.message_id)
        return Held()

    @service.handles(Unhold)
    def unhold(cmd: Unhold, ctx: HandlerContext[None]) -> Reply:
        return Unheld() if unhold_works[0] else UnholdFailed()

    @service.handles(Charge)
    def charge(cmd: Charge, ctx: HandlerContext[None]) -> Charged:
        if charged is not None:
            charged.append(ctx.message_id)
        if cmd.ref.startswith("declined"):
            raise BusinessFailure(Declined())
        if cmd.ref.startswith("crash") and not fixed[0]:
            raise RuntimeError(f"charge service cannot handle {cmd.ref} yet")
        return Charged()

    return service


def cli(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGAKIT, *args, "--bootstrap", bootstrap],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
    )


async def test_a_step_timeout_survives_an_orchestrator_restart(
    kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    ended = anyio.Event()
    seen: list[str] = []
    first = Orchestrator(held, kafka_transport, namespace=ns, partitions=2)
    async with anyio.create_task_group() as tg:
        await tg.start(first.run)
        await first.wait_ready()
        await SagaClient(kafka_transport, namespace=ns).start(held, "s1", Ref(ref="s1"))
        with anyio.fail_after(10):
            while first.instance("s1") is None:  # noqa: ASYNC110 - the first decision
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()  # stop before the 1 s timeout of attempt 1 fires
    assert first.stats.timers_fired == 0

    second = Orchestrator(
        held,
        kafka_transport,
        namespace=ns,
        partitions=2,
        on_transition=lambda t: ended.set() if t.status.terminal else None,
    )
    service = participant(unhold_works=[True], seen=seen)
    service.namespace = ns
    service.partitions = 2
    async with anyio.create_task_group() as tg:
        await tg.start(second.run)
        with anyio.fail_after(30):
            while second.stats.timers_fired == 0:  # noqa: ASYNC110 - restored timer fires
                await anyio.sleep(0.05)
        await tg.start(service.run, kafka_transport)
        with anyio.fail_after(30):
            await ended.wait()
        instance = second.instance("s1")
        tg.cancel_scope.cancel()
    assert instance is not None and instance.status is SagaStatus.COMPLETED
    # attempt 2 exists because the restored timer fired; the participant saw both
    assert {"s1:hold:1", "s1:hold:2"} <= set(seen)


async def test_people_list_show_resolve_and_resume_parked_sagas(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    bootstrap = kafka_broker.bootstrap_servers
    works = [False]
    service = participant(unhold_works=works, seen=[])
    service.namespace = ns
    orchestrator = Orchestrator(held, kafka_transport, namespace=ns)
    client = SagaClient(kafka_transport, namespace=ns)
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await tg.start(service.run, kafka_transport)
        await orchestrator.wait_ready()
        for saga_id in ("declined-1", "declined-2"):
            await client.start(held, saga_id, Ref(ref=saga_id))
        with anyio.fail_after(30):
            while not all(  # noqa: ASYNC110
                (i := orchestrator.instance(s)) is not None
                and i.status is SagaStatus.FAILED_NEEDS_ATTENTION
                for s in ("declined-1", "declined-2")
            ):
                await anyio.sleep(0.1)

        listed = await anyio.to_thread.run_sync(
            lambda: cli(
                "sagas",
                "list",
                "--namespace",
                ns,
                "--state",
                "FAILED_NEEDS_ATTENTION",
                bootstrap=bootstrap,
            )
        )
        assert listed.returncode == 0, listed.stderr
        assert "declined-1" in listed.stdout and "declined-2" in listed.stdout

        shown = await anyio.to_thread.run_sync(
            lambda: cli("sagas", "show", "declined-1", "--namespace", ns, bootstrap=bootstrap)
        )
        assert shown.returncode == 0, shown.stderr
        assert "parked" in shown.stdout and "UnholdFailed" in shown.stdout

        resolved = await anyio.to_thread.run_sync(
            lambda: cli(
                "sagas",
                "resolve",
                "declined-1",
                "--namespace",
                ns,
                "--note",
                "released by hand",
                bootstrap=bootstrap,
            )
        )
        assert resolved.returncode == 0, resolved.stderr

        works[0] = True  # the participant is fixed: a retry now succeeds
        resumed = await anyio.to_thread.run_sync(
            lambda: cli("sagas", "resume", "declined-2", "--namespace", ns, bootstrap=bootstrap)
        )
        assert resumed.returncode == 0, resumed.stderr
        with anyio.fail_after(30):
            while (i := orchestrator.instance("declined-2")) is None or not i.status.terminal:  # noqa: ASYNC110
                await anyio.sleep(0.1)

        again = await anyio.to_thread.run_sync(
            lambda: cli("sagas", "resume", "declined-1", "--namespace", ns, bootstrap=bootstrap)
        )
        tg.cancel_scope.cancel()

    assert again.returncode == 2 and "RESOLVED" in again.stderr + again.stdout
    kind, history = await find_saga(kafka_transport, "declined-1", ns)
    assert kind == "held"
    assert history[-1].status is SagaStatus.RESOLVED
    assert history[-1].note == "released by hand"
    _, history = await find_saga(kafka_transport, "declined-2", ns)
    assert [t.event for t in history][-2:] == ["resumed", "step-compensated"]
    assert history[-1].status is SagaStatus.COMPENSATED


async def test_a_handler_bug_is_dead_lettered_and_told_to_the_saga_and_a_replay_repeats_nothing(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    bootstrap = kafka_broker.bootstrap_servers
    fixed = [False]
    charged: list[str] = []
    service = participant(unhold_works=[True], seen=[], charge_fixed=fixed, charged=charged)
    service.namespace = ns
    service.handler_attempts = 2
    orchestrator = Orchestrator(held, kafka_transport, namespace=ns)
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await tg.start(service.run, kafka_transport)
        await orchestrator.wait_ready()
        await SagaClient(kafka_transport, namespace=ns).start(held, "crash-1", Ref(ref="crash-1"))
        # the saga learns of the failure (HandlerFailed) and undoes the hold: no waiting
        with anyio.fail_after(30):
            while (i := orchestrator.instance("crash-1")) is None or not i.status.terminal:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        ended = orchestrator.instance("crash-1")
        assert ended is not None and ended.status is SagaStatus.COMPENSATED
        assert ended.failure is not None and "RuntimeError" in ended.failure

        listed = await anyio.to_thread.run_sync(
            lambda: cli("dlq", "list", service.commands_topic, bootstrap=bootstrap)
        )
        assert listed.returncode == 0, listed.stderr
        assert "crash-1:charge:1" in listed.stdout
        assert "RuntimeError" in listed.stdout and "cannot handle crash-1" in listed.stdout

        # A fix is deployed and someone replays the dead letter: the command's answer was
        # given (the saga compensated on it), so it is answered again from the store and
        # charges nothing.
        fixed[0] = True
        replayed = await anyio.to_thread.run_sync(
            lambda: cli(
                "dlq",
                "replay",
                service.commands_topic,
                "--id",
                "crash-1:charge:1",
                bootstrap=bootstrap,
            )
        )
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed 1" in replayed.stdout
        with anyio.fail_after(30):
            while service.stats.duplicates < 1:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        final = orchestrator.instance("crash-1")
        tg.cancel_scope.cancel()
    assert charged == ["crash-1:charge:1", "crash-1:charge:1"]  # its two attempts, no more
    assert final is not None and final.status is SagaStatus.COMPENSATED

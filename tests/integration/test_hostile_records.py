"""No single record of any shape Kafka allows kills, stalls or crash-loops a consumer.

Each consumer kind (the orchestrator on its inbox, a participant on its commands, a
reaction on an events topic, the CLI's readers) gets every hostile shape, then real work:
the work gets done, every hostile record is in the DLQ with a reason naming what is
wrong, and a restarted consumer does not choke on what it read before.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from sagakit import (
    Command,
    Event,
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
    StartSaga,
    Step,
)
from sagakit._dlq import DeadLetter
from sagakit._inspect import read_topic
from sagakit.broker import EmbeddedBroker

from .hostile import HostileProducer, RawName, Shape, envelope, shapes

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))


class Grab(Command, type="hostile.Grab"):
    ref: str


class Grabbed(Reply, type="hostile.Grabbed"):
    ref: str


class Noted(Event, type="hostile.Noted"):
    ref: str


class Ref(BaseModel):
    ref: str


grab = Saga(
    "grab",
    state=Ref,
    steps=[
        Step(
            "grab",
            invoke=Grab,
            on_reply={Grabbed: None},
            retry=RetryPolicy(max_attempts=3, timeout_s=5.0, initial_backoff_s=0.1),
        )
    ],
)


def hostile_service(ns: str, grabbed: list[str]) -> Service[None]:
    service: Service[None] = Service("hostile", MemoryStore(), namespace=ns, partitions=2)

    @service.handles(Grab)
    def handle(cmd: Grab, ctx: HandlerContext[None]) -> Grabbed:
        grabbed.append(cmd.ref)
        return Grabbed(ref=cmd.ref)

    return service


def watcher_service(ns: str, noted: list[str]) -> Service[None]:
    service: Service[None] = Service("watcher", MemoryStore(), namespace=ns, partitions=2)

    @service.on(Noted)
    def react(evt: Noted, ctx: HandlerContext[None]) -> None:
        noted.append(evt.ref)

    return service


async def wait_for(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - other tasks of this test do the work
            await anyio.sleep(0.05)


async def dead_letters(transport: KafkaTransport, topic: str, expected: int) -> list[DeadLetter]:
    """The dead letters of `topic`, once there are `expected` of them."""
    found: list[DeadLetter] = []
    with anyio.fail_after(30):
        while len(found) < expected:
            found = [DeadLetter.of(r) for r in await read_topic(transport, f"{topic}.dlq")]
            await anyio.sleep(0.1)
    return found


def check_dead_letters(letters: list[DeadLetter], sent: list[Shape], topic: str) -> None:
    """One dead letter per hostile shape (found by key), each with its reason and origin."""
    by_key = {d.record.key: d for d in letters}
    assert len(by_key) == len(letters) == len(sent), [
        (d.record.key, d.error_message) for d in letters
    ]
    for shape in sent:
        letter = by_key[shape.key]
        assert letter.error_type == "DecodeError", (shape.name, letter.error_type)
        assert shape.reason in letter.error_message, (shape.name, letter.error_message)
        assert letter.original_topic == topic
        assert letter.original_offset is not None
        if shape.name != "oversized value":
            assert letter.record.value == shape.value and not letter.truncated, shape.name
    [oversized] = [by_key[s.key] for s in sent if s.name == "oversized value"]
    assert oversized.truncated == ("value",)
    assert oversized.record.value is not None and len(oversized.record.value) < 1_000_000


async def test_the_orchestrator_survives_every_hostile_shape_on_its_inbox(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    grabbed: list[str] = []
    service = hostile_service(ns, grabbed)
    inbox = ns + grab.inbox_topic
    sent = shapes(StartSaga.message_type, saga_type="grab")
    client = SagaClient(kafka_transport, namespace=ns)
    first = Orchestrator(grab, kafka_transport, namespace=ns, partitions=2)
    async with (
        HostileProducer(kafka_broker.bootstrap_servers) as hostile,
        anyio.create_task_group() as tg,
    ):
        await tg.start(first.run)
        await tg.start(service.run, kafka_transport)
        await first.wait_ready()
        await hostile.send(inbox, sent)
        # a corrupt batch (its CRC does not match) on the partition of the next saga
        await hostile.send_raw(
            inbox, b"x", b"{}", [("message-id", b"x")], partition=0, corrupt=True
        )
        await client.start(grab, "real-1", Ref(ref="real-1"))
        await wait_for(lambda: (i := first.instance("real-1")) and i.status.terminal)
        letters = await dead_letters(kafka_transport, inbox, len(sent) + 1)
        final = first.instance("real-1")
        tg.cancel_scope.cancel()
    [corrupt] = [
        d
        for d in letters
        if d.record.key is None and d.original_partition == 0 and "CRC" in d.error_message
    ]
    check_dead_letters([d for d in letters if d is not corrupt], sent, inbox)
    assert "do not decode" in corrupt.error_message and "CRC" in corrupt.error_message
    assert final is not None and final.status is SagaStatus.COMPLETED

    # a restart reads the same partitions again from where the group committed: nothing
    # it read before stops it, and it keeps working
    second = Orchestrator(grab, kafka_transport, namespace=ns, partitions=2)
    async with anyio.create_task_group() as tg:
        await tg.start(second.run)
        await tg.start(service.run, kafka_transport)
        await second.wait_ready()
        await client.start(grab, "real-2", Ref(ref="real-2"))
        await wait_for(lambda: (i := second.instance("real-2")) and i.status.terminal)
        tg.cancel_scope.cancel()
    assert grabbed == ["real-1", "real-2"]


async def test_a_start_request_is_checked_even_when_its_saga_exists(
    kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    service = hostile_service(ns, [])
    orchestrator = Orchestrator(grab, kafka_transport, namespace=ns, partitions=2)
    client = SagaClient(kafka_transport, namespace=ns)
    inbox = ns + grab.inbox_topic
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await tg.start(service.run, kafka_transport)
        await orchestrator.wait_ready()
        good = client.start_record(grab, "s-1", Ref(ref="s-1"))
        await kafka_transport.send([good])
        await wait_for(lambda: (i := orchestrator.instance("s-1")) and i.status.terminal)
        # the same start again (harmless), then one with the same id and a broken state,
        # then another id with a valid but different state
        broken = type(good)(good.topic, good.key, b'{"state": {"ref": 42}}', good.headers)
        other = client.start_record(grab, "s-1", Ref(ref="something else"))
        other = type(good)(other.topic, other.key, other.value, good.headers)
        await kafka_transport.send([good, broken, other])
        letters = await dead_letters(kafka_transport, inbox, 2)
        status = await client.status(grab, "s-1")
        tg.cancel_scope.cancel()
    by_type = {letter.error_type: letter for letter in letters}
    assert set(by_type) == {"Rejected", "StartConflict"}
    assert "does not validate" in by_type["Rejected"].error_message
    assert "started with another state" in by_type["StartConflict"].error_message
    assert orchestrator.stats.duplicates >= 1  # the identical re-send changed nothing
    # the client learns how the existing saga stands
    assert status is not None and status.status is SagaStatus.COMPLETED
    assert await client.status(grab, "never-started") is None


async def test_a_participant_survives_every_hostile_shape_and_never_trusts_reply_to(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    grabbed: list[str] = []
    service = hostile_service(ns, grabbed)
    orchestrator = Orchestrator(grab, kafka_transport, namespace=ns, partitions=2)
    commands = service.commands_topic
    command = Grab.message_type
    inbox, journal = ns + grab.inbox_topic, ns + grab.journal_topic
    sent = shapes(command, saga_type="grab", reply_to=inbox)

    def asking(saga_id: str, reply_to: str, saga_type: str = "grab") -> Shape:
        headers = envelope(saga_id, command, saga_type=saga_type, reply_to=reply_to)
        return Shape(reply_to, saga_id.encode(), b'{"ref": "evil"}', headers, "")

    misdirected = [
        asking("evil-1", journal),  # would poison the journal's restore
        asking("evil-2", f"{ns}grab.inbox.dlq"),
        asking("evil-3", f"{ns}nobody.inbox", saga_type="nobody"),  # does not exist
        asking("evil-4", f"{ns}grab.inbox", saga_type="other"),  # not its saga's inbox
        asking("evil-5", "x" * 300),  # an invalid topic name
    ]
    async with (
        HostileProducer(kafka_broker.bootstrap_servers) as hostile,
        anyio.create_task_group() as tg,
    ):
        await tg.start(orchestrator.run)
        await tg.start(service.run, kafka_transport)
        await orchestrator.wait_ready()
        await hostile.send(commands, [*sent, *misdirected])
        await SagaClient(kafka_transport, namespace=ns).start(grab, "real-1", Ref(ref="real-1"))
        await wait_for(lambda: (i := orchestrator.instance("real-1")) and i.status.terminal)
        letters = await dead_letters(kafka_transport, commands, len(sent) + len(misdirected))
        tg.cancel_scope.cancel()
    evil = {d.record.key: d for d in letters if (d.record.key or b"").startswith(b"evil-")}
    check_dead_letters([d for d in letters if d.record.key not in evil], sent, commands)
    assert sorted(evil) == [s.key for s in misdirected]
    assert {d.error_type for d in evil.values()} == {"BadReplyTo"}
    assert "replies go only to that saga's inbox" in evil[b"evil-1"].error_message
    assert "replies go only to that saga's inbox" in evil[b"evil-2"].error_message
    assert "does not exist" in evil[b"evil-3"].error_message
    assert "replies go only to that saga's inbox" in evil[b"evil-4"].error_message
    assert grabbed == ["real-1"]  # no hostile command was handled
    # nothing but the orchestrator wrote to the journal: a new owner restores it cleanly
    restored = Orchestrator(grab, kafka_transport, namespace=ns, partitions=2)
    async with anyio.create_task_group() as tg:
        await tg.start(restored.run)
        await restored.wait_ready()
        final = restored.status("real-1")
        tg.cancel_scope.cancel()
    assert restored.stats.foreign_records == 0
    assert final is SagaStatus.COMPLETED


async def test_a_reaction_survives_every_hostile_shape_and_counts_unknown_types(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    noted: list[str] = []
    publisher = hostile_service(ns, [])
    watcher = watcher_service(ns, noted)
    events = publisher.events_topic
    sent = shapes(Noted.message_type)
    unknown = Shape(
        "unknown type", b"u-1", b"{}", envelope("u-1", "hostile.NoSuchThing"), "unknown"
    )
    await publisher.ensure_topics(kafka_transport)
    async with (
        HostileProducer(kafka_broker.bootstrap_servers) as hostile,
        anyio.create_task_group() as tg,
    ):
        await tg.start(watcher.run, kafka_transport)
        await wait_for(lambda: bool(watcher.assignment))
        await hostile.send(events, [*sent, unknown, unknown])
        record = publisher.event_record(Noted(ref="real"), saga_id="real", message_id="n-1")
        await kafka_transport.send([record])
        await wait_for(lambda: noted == ["real"])
        letters = await dead_letters(kafka_transport, events, len(sent))
        metrics = (await watcher.metrics.render()).decode()
        tg.cancel_scope.cancel()
    check_dead_letters(letters, sent, events)
    assert {d.consumer for d in letters} == {"watcher"}
    assert watcher.stats.unknown_types == 2
    assert (
        'sagakit_unknown_messages_total{message_type="hostile.NoSuchThing",'
        f'topic="{events}"}} 2.0' in metrics
    )


async def test_the_cli_reads_journals_and_dead_letters_holding_foreign_records(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    bootstrap = kafka_broker.bootstrap_servers
    service = hostile_service(ns, [])
    orchestrator = Orchestrator(grab, kafka_transport, namespace=ns, partitions=2)
    journal = ns + grab.journal_topic
    async with anyio.create_task_group() as tg:
        await tg.start(orchestrator.run)
        await tg.start(service.run, kafka_transport)
        await orchestrator.wait_ready()
        await SagaClient(kafka_transport, namespace=ns).start(grab, "real-1", Ref(ref="real-1"))
        await wait_for(lambda: (i := orchestrator.instance("real-1")) and i.status.terminal)
        tg.cancel_scope.cancel()
    async with HostileProducer(bootstrap) as hostile:
        for partition in (0, 1):
            await hostile.send_raw(journal, None, None, [], partition=partition)
            await hostile.send_raw(
                journal, b"k", b"{}", [(RawName("journal-kind"), b"claim")], partition=partition
            )
            await hostile.send_raw(
                journal,
                b"k",
                b"not json",
                [("journal-kind", b"transition"), ("journal-epoch", b"99")],
                partition=partition,
            )
            await hostile.send_raw(
                journal, b"k", b"{}", [("journal-epoch", b"NaN")], partition=partition
            )
        # dead letters of hostile shapes, to list
        await hostile.send(ns + grab.inbox_topic, shapes(StartSaga.message_type))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SAGAKIT, *args, "--bootstrap", bootstrap],
            capture_output=True,
            text=True,
            timeout=60,
            env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
        )

    listed = await anyio.to_thread.run_sync(lambda: cli("sagas", "list", "--namespace", ns))
    assert listed.returncode == 0, listed.stderr
    assert "real-1" in listed.stdout and "COMPLETED" in listed.stdout
    assert "8 record(s) that are not journal entries" in listed.stderr
    shown = await anyio.to_thread.run_sync(
        lambda: cli("sagas", "show", "real-1", "--namespace", ns)
    )
    assert shown.returncode == 0, shown.stderr
    assert "step-succeeded" in shown.stdout
    # a restarted orchestrator restores past them too, and dead-letters the inbox's
    again = Orchestrator(grab, kafka_transport, namespace=ns, partitions=2)
    async with anyio.create_task_group() as tg:
        await tg.start(again.run)
        await again.wait_ready()
        await dead_letters(kafka_transport, ns + grab.inbox_topic, len(shapes("x")))
        final = again.status("real-1")  # it ended: known by its id and status
        tg.cancel_scope.cancel()
    assert again.stats.foreign_records == 8
    assert final is SagaStatus.COMPLETED
    dlq = await anyio.to_thread.run_sync(lambda: cli("dlq", "list", ns + grab.inbox_topic))
    assert dlq.returncode == 0, dlq.stderr
    assert f"{len(shapes('x'))} dead letter(s)" in dlq.stdout
    assert "lacks required header" in dlq.stdout and "truncated: value" in dlq.stdout

"""docs/wire-contract.md is enough for a client in another language: sagas are started, served
by a participant and read back from their journal with confluent-kafka (librdkafka), built
from what that page says and nothing else of sagakit's."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import BaseModel

from sagakit import (
    Command,
    KafkaTransport,
    Orchestrator,
    Reply,
    Saga,
    SagaStatus,
    Step,
)
from sagakit.broker import EmbeddedBroker

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]


# The saga runs on sagakit; everything else in this file is "another language".
class Reserve(Command, type="wiresvc.Reserve"):
    order: str
    amount: int


class Reserved(Reply, type="wiresvc.Reserved"):
    pass


class Release(Command, type="wiresvc.Release"):
    order: str


class Released(Reply, type="wiresvc.Released"):
    pass


class Charge(Command, type="wiresvc.Charge"):
    order: str
    amount: int


class Charged(Reply, type="wiresvc.Charged"):
    pass


class Declined(Reply, type="wiresvc.Declined"):
    reason: str


class Order(BaseModel):
    order: str
    amount: int


wire = Saga(
    "wire",
    state=Order,
    steps=[
        Step("reserve", invoke=Reserve, on_reply={Reserved: None}, compensate=Release),
        Step("charge", invoke=Charge, on_reply={Charged: None}, failures=[Declined]),
    ],
)


# -- a participant and a client written from docs/wire-contract.md ---------------------------


def headers_of(msg: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in (msg.headers() or [])}


def producer(bootstrap: str) -> Producer:
    # "librdkafka does not [partition like Kafka]: set partitioner=murmur2_random"
    return Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})


def start_saga(bootstrap: str, ns: str, saga_id: str, state: dict[str, Any]) -> None:
    p = producer(bootstrap)
    message_id = f"{saga_id}:start"
    p.produce(
        f"{ns}wire.inbox",
        key=saga_id.encode(),
        value=json.dumps({"state": state}).encode(),
        headers=[
            ("message-id", message_id.encode()),
            ("message-type", b"sagakit.StartSaga"),
            ("saga-id", saga_id.encode()),
            ("correlation-id", message_id.encode()),
            ("causation-id", message_id.encode()),
            ("saga-type", b"wire"),
        ],
    )
    assert p.flush(10) == 0


def participant(bootstrap: str, ns: str, partitions: int, stop: threading.Event) -> list[str]:
    """Serves wiresvc.commands: charges over 100 are declined; answers a seen id from its store."""
    handled: list[str] = []
    store: dict[str, tuple[str, bytes]] = {}
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"{ns}wiresvc.service", "fetch.wait.max.ms": 5}
    )
    consumer.assign([TopicPartition(f"{ns}wiresvc.commands", p, 0) for p in range(partitions)])
    out = producer(bootstrap)
    try:
        while not stop.is_set():
            msg = consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            h = headers_of(msg)
            assert msg.key().decode() == h["saga-id"]
            assert h["reply-to"] == f"{ns}{h['saga-type']}.inbox"
            command = json.loads(msg.value())
            if h["message-id"] not in store:
                handled.append(h["message-id"])
                kind = h["message-type"]
                if kind == "wiresvc.Charge" and command["amount"] > 100:
                    reply = ("wiresvc.Declined", json.dumps({"reason": "too much"}).encode())
                else:
                    name = {"wiresvc.Reserve": "Reserved", "wiresvc.Release": "Released"}.get(
                        kind, "Charged"
                    )
                    reply = (f"wiresvc.{name}", b"{}")
                store[h["message-id"]] = reply
            reply_type, value = store[h["message-id"]]
            out.produce(
                h["reply-to"],
                key=msg.key(),
                value=value,
                headers=[
                    ("message-id", f"{h['message-id']}:reply".encode()),
                    ("message-type", reply_type.encode()),
                    ("saga-id", h["saga-id"].encode()),
                    ("correlation-id", h["correlation-id"].encode()),
                    ("causation-id", h["message-id"].encode()),
                    ("saga-type", h["saga-type"].encode()),
                ],
            )
            out.flush(10)
    finally:
        consumer.close()
    return handled


def journal_statuses(bootstrap: str, ns: str, partitions: int) -> dict[str, str]:
    """Each saga's status, rebuilt from the journal with the fencing rules of the page."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
        }
    )
    statuses: dict[str, str] = {}
    for p in range(partitions):
        tp = TopicPartition(f"{ns}wire.journal", p, 0)
        consumer.assign([tp])
        epoch = 0
        for msg in _to_high_watermark(consumer, tp):
            h = headers_of(msg)
            kind, record_epoch = h["journal-kind"], int(h["journal-epoch"])
            if kind == "claim":
                epoch = max(epoch, record_epoch)
                continue
            if kind not in ("transition", "transitions") or record_epoch < epoch:
                continue  # a snapshot (not a transition), or a fenced record
            lines = msg.value().split(b"\n") if kind == "transitions" else [msg.value()]
            for line in lines:
                t = json.loads(line)
                statuses[t["saga_id"]] = t["status"]
    consumer.close()
    return statuses


def _to_high_watermark(consumer: Consumer, tp: TopicPartition) -> Iterator[Any]:
    while True:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            yield msg
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        position = consumer.position([tp])[0].offset
        if high >= 0 and position >= high:
            return


async def test_a_client_and_a_participant_written_from_the_wire_contract(
    kafka_broker: EmbeddedBroker, kafka_transport: KafkaTransport, unique: str
) -> None:
    ns = f"{unique}."
    bootstrap = kafka_broker.bootstrap_servers
    partitions = 4
    orchestrator = Orchestrator(wire, kafka_transport, namespace=ns, partitions=partitions)
    stop = threading.Event()
    orders = {f"order-{i}": 50 if i % 2 else 500 for i in range(10)}  # odd ones succeed
    served: list[list[str]] = []
    try:
        await serve_and_start(orchestrator, bootstrap, ns, partitions, stop, orders, served)
    finally:
        stop.set()  # the participant thread ends with the test, whatever happened
    [handled] = served
    statuses = await anyio.to_thread.run_sync(journal_statuses, bootstrap, ns, partitions)
    expected = {
        s: (SagaStatus.COMPLETED if amount <= 100 else SagaStatus.COMPENSATED).value
        for s, amount in orders.items()
    }
    assert {s: statuses[s] for s in orders} == expected
    # every saga's commands reached the participant once each: reserve, charge and, for
    # the declined ones, the release
    assert len(handled) == len(set(handled)) == 2 * len(orders) + 5


async def serve_and_start(
    orchestrator: Orchestrator,
    bootstrap: str,
    ns: str,
    partitions: int,
    stop: threading.Event,
    orders: dict[str, int],
    served: list[list[str]],
) -> None:
    async def serve() -> None:
        served.append(await anyio.to_thread.run_sync(participant, bootstrap, ns, partitions, stop))

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as sagas:
            await sagas.start(orchestrator.run)
            await orchestrator.wait_ready()
            tg.start_soon(serve)  # the commands topic exists now
            for saga_id, amount in orders.items():
                await anyio.to_thread.run_sync(
                    start_saga, bootstrap, ns, saga_id, {"order": saga_id, "amount": amount}
                )
            with anyio.fail_after(60):
                while not all(  # noqa: ASYNC110 - the orchestrator and the thread do the work
                    (i := orchestrator.instance(s)) is not None and i.status.terminal
                    for s in orders
                ):
                    await anyio.sleep(0.1)
            sagas.cancel_scope.cancel()
        stop.set()

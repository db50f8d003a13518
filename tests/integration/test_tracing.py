"""Tracing exported over OTLP/HTTP to a real receiver: one trace per saga, across every
service, in both coordination styles."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest

from sagakit import KafkaTransport, World
from sagakit._flows import run_flow
from sagakit.tracing import Tracing
from services.scenario import PlaceOrder

from .otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

ORDERS = 20


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


async def traced_run(
    transport: KafkaTransport, receiver: OtlpReceiver, style: str, namespace: str
) -> dict[str, str]:
    """Run the flow with every component exporting to `receiver`; order id -> status."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_EXPORTER": "otlp"}
    made: dict[str, Tracing] = {}

    def tracing(component: str) -> Tracing:
        made.setdefault(component, Tracing.from_env(component, env=env))
        return made[component]

    statuses: dict[str, str] = {}

    class Kept(PlaceOrder):
        def check(self, world: World, starts: object) -> list[str]:
            statuses.update({o.order_id: o.status for o in self.orders_app(world).repository.all()})
            return super().check(world, starts)  # type: ignore[arg-type]

    result = await run_flow(
        Kept(),
        transport,
        style=style,  # type: ignore[arg-type]
        count=ORDERS,
        seed=8,
        namespace=namespace,
        tracing=tracing,
    )
    for t in made.values():
        t.shutdown()  # flush
    assert result.unfinished == 0 and result.consistent
    return statuses


def check_one_trace_per_saga(receiver: OtlpReceiver, statuses: dict[str, str]) -> dict[str, str]:
    """Every span of a saga is in one trace, every parent is present; saga -> trace id."""
    trace_of: dict[str, set[str]] = defaultdict(set)
    for span in receiver:
        saga = span.attributes.get("saga.id")
        if saga in statuses:
            trace_of[str(saga)].add(span.trace_id)
    assert set(trace_of) == set(statuses), "some sagas have no spans"
    assert all(len(ids) == 1 for ids in trace_of.values()), {
        k: v for k, v in trace_of.items() if len(v) != 1
    }
    per_saga = {saga: next(iter(ids)) for saga, ids in trace_of.items()}
    assert len(set(per_saga.values())) == len(per_saga), "two sagas share a trace"
    traces = receiver.traces()
    for trace_id in per_saga.values():
        spans = traces[trace_id]
        ids = {s.span_id for s in spans}
        roots = [s for s in spans if not s.parent_id]
        assert len(roots) == 1, [s.name for s in roots]
        orphans = [s.name for s in spans if s.parent_id and s.parent_id not in ids]
        assert orphans == [], orphans
    return per_saga


async def test_orchestrated_sagas_are_one_trace_each_across_five_services(
    kafka_transport: KafkaTransport, receiver: OtlpReceiver, unique: str
) -> None:
    statuses = await traced_run(kafka_transport, receiver, "orchestration", f"{unique}.")
    per_saga = check_one_trace_per_saga(receiver, statuses)
    services = {s.service for s in receiver}
    assert services == {"saga-orchestrator", "orders", "payments", "inventory", "shipping"}
    traces = receiver.traces()
    rejected = [o for o, status in statuses.items() if status == "REJECTED"]
    assert rejected
    for order in rejected:
        names = [s.name for s in traces[per_saga[order]]]
        assert any(n.startswith("compensate ") for n in names), names
        compensation = next(s for s in traces[per_saga[order]] if s.name.startswith("compensate"))
        assert compensation.attributes["saga.reason"]
    approved = [o for o, status in statuses.items() if status == "APPROVED"]
    spans = traces[per_saga[approved[0]]]
    assert not any(s.name.startswith("compensate") for s in spans)
    process = [s for s in spans if s.name.startswith("process")]
    assert {s.service for s in process} == services - {"orders"} | {"orders"}
    sample = next(s for s in process if s.service == "payments")
    assert sample.attributes["messaging.system"] == "kafka"
    assert sample.attributes["messaging.operation.type"] == "process"
    assert str(sample.attributes["messaging.destination.name"]).endswith("payments.commands")
    assert sample.attributes["messaging.message.id"]
    states = {s.attributes.get("saga.state") for s in spans if s.service == "saga-orchestrator"}
    assert "COMPLETED" in states


async def test_choreographed_orders_are_one_trace_each_across_four_services(
    kafka_transport: KafkaTransport, receiver: OtlpReceiver, unique: str
) -> None:
    statuses = await traced_run(kafka_transport, receiver, "choreography", f"{unique}.")
    per_saga = check_one_trace_per_saga(receiver, statuses)
    assert {s.service for s in receiver} == {"orders", "payments", "inventory", "shipping"}
    traces = receiver.traces()
    undone = 0
    for order, status in statuses.items():
        names = " ".join(s.name for s in traces[per_saga[order]])
        if status == "REJECTED":
            assert "OrderRejected" in names or "CreditLimitExceeded" in names
            undone += "CreditReleased" in names
        else:
            assert "ShipmentScheduled" in names and "OrderApproved" in names
    assert undone >= 2  # the stock and the shipping failures were compensated, in the trace

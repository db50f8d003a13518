"""Tracing configuration by the standard OTEL_* variables, and trace context in headers."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sagakit import Envelope
from sagakit.testing import SagaTestEnvironment
from sagakit.tracing import Tracing
from services.orders.saga import OrderState, place_order

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"},
    ],
)
def test_no_exporter_configured_means_tracing_is_off(env: dict[str, str]) -> None:
    tracing = Tracing.from_env("orders", env=env)
    assert tracing.enabled is False
    envelope = Envelope("m", "t", "s", "c", "c")
    assert tracing.stamp(envelope, "topic") is envelope  # nothing added, nothing allocated
    assert tracing.current_traceparent() is None


def test_an_endpoint_alone_turns_otlp_on_and_the_service_name_is_the_component() -> None:
    tracing = Tracing.from_env("payments", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
    assert tracing.enabled
    assert tracing.component == "payments"
    tracing.shutdown()


def test_otel_service_name_overrides_the_component_and_unknown_exporters_are_refused() -> None:
    named = Tracing.from_env(
        "orders", env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "shop-orders"}
    )
    assert named.component == "shop-orders"
    named.shutdown()
    with pytest.raises(ValueError, match="not supported"):
        Tracing.from_env("orders", env={"OTEL_TRACES_EXPORTER": "zipkin"})


def test_a_stamped_envelope_carries_w3c_trace_context_of_a_child_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_env("orders", env={}, exporter=exporter)
    with tracing.root("place order", saga_id="o1"):
        parent = tracing.current_traceparent()
        stamped = tracing.stamp(Envelope("m1", "x.Y", "o1", "c", "c"), "x.commands")
    tracing.shutdown()
    assert parent is not None and stamped.traceparent is not None
    version, trace_id, span_id, flags = stamped.traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert trace_id == parent.split("-")[1]  # same trace
    assert span_id != parent.split("-")[2]  # a new (child) span
    [send, root] = sorted(exporter.get_finished_spans(), key=lambda s: s.name, reverse=True)
    assert send.name == "send x.commands" and root.name == "place order"
    assert send.parent is not None and send.parent.span_id == root.context.span_id
    assert send.attributes is not None and send.attributes["messaging.message.id"] == "m1"


async def test_the_in_memory_environment_traces_a_saga_as_one_trace() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.from_env("saga-orchestrator", env={}, exporter=exporter)
    env = SagaTestEnvironment([place_order], [])
    env.orchestrators["place-order"].tracing = tracing
    async with env:
        await env.start(
            place_order,
            "o9",
            OrderState(
                order_id="o9", customer_id="c", product_id="p", quantity=1, amount=1, address="a"
            ),
        )
        await env.broker.wait_until(lambda: bool(env.broker.records("payments.commands")))
    tracing.shutdown()
    spans = exporter.get_finished_spans()
    assert {s.name for s in spans} >= {"process sagakit.StartSaga", "send reserve-credit"}
    assert len({s.context.trace_id for s in spans}) == 1
    [command] = env.broker.records("payments.commands")
    traceparent = dict(command.headers)["traceparent"].decode()
    assert int(traceparent.split("-")[1], 16) == spans[0].context.trace_id

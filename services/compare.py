"""`sagakit compare`: the same seeded orders through both coordination styles, measured."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sagakit import KafkaSettings, KafkaTransport, MemoryTransport, Orchestrator
from sagakit._inspect import read_topic
from sagakit.broker import EmbeddedBroker

from .demo import DemoResult, TracingFromEnv, run_flow
from .orders.saga import place_order
from .outcome import STYLES, Style
from .system import build_system

ProgressFn = Callable[[str, int, int], None]


@dataclass
class Traffic:
    messages: int
    bytes: int
    by_kind: dict[str, int]


def _kind(topic: str) -> str:
    for suffix in (".journal", ".inbox", ".commands", ".events", ".dlq"):
        if topic.endswith(suffix):
            return suffix[1:]
    return "other"


async def measure_traffic(transport: KafkaTransport, namespace: str) -> Traffic:
    """Every record the run wrote under `namespace`: count, bytes, and count per topic kind."""
    messages = size = 0
    by_kind: Counter[str] = Counter()
    for topic in await transport.existing_topics():
        if not topic.startswith(namespace):
            continue
        records = await read_topic(transport, topic)
        messages += len(records)
        by_kind[_kind(topic)] += len(records)
        for r in records:
            size += len(r.key or b"") + len(r.value or b"")
            size += sum(len(k) + len(v or b"") for k, v in r.headers)
    return Traffic(messages, size, dict(sorted(by_kind.items())))


def coupling(style: Style) -> dict[str, dict[str, Any]]:
    """Per component: the topics it reads and writes, and the other services it must know.

    Derived from the running definitions (subscriptions, saga steps), not written down.
    """
    system = build_system(style=style)
    others = {s.name for s in system.services()}
    result: dict[str, dict[str, Any]] = {}
    try:
        if style == "orchestration":
            orchestrator = Orchestrator(place_order, MemoryTransport())
            commands = sorted(place_order.command_topics())
            result["saga-orchestrator"] = {
                "reads": [orchestrator.inbox_topic],
                "writes": sorted([place_order.journal_topic, *commands]),
                "knows": sorted(t.split(".")[0] for t in commands),
            }
        for service in system.services():
            reads = service.subscribed_topics()
            if style == "orchestration":
                # replies go where the command's reply-to says; orders also starts sagas there
                writes = [place_order.inbox_topic]
                knows: list[str] = []
            else:
                writes = [service.events_topic]
                knows = sorted({t.split(".")[0] for t in reads} & others - {service.name})
            result[service.name] = {
                "reads": reads,
                "writes": sorted(set(writes)),
                "knows": knows,
            }
    finally:
        system.close()
    return result


def summary(result: DemoResult, traffic: Traffic, style: Style) -> dict[str, Any]:
    data = result.to_json()
    n = max(result.orders, 1)
    data.update(
        messages_per_saga=round(traffic.messages / n, 2),
        bytes_per_saga=round(traffic.bytes / n, 1),
        messages_by_topic_kind=traffic.by_kind,
        coupling=coupling(style),
    )
    return data


async def run_compare(
    *,
    orders: int = 200,
    seed: int = 7,
    failure_mix: dict[str, float] | None = None,
    concurrency: int | None = None,
    bootstrap: str | None = None,
    timeout_s: float = 300.0,
    styles: tuple[Style, ...] = STYLES,
    progress: ProgressFn | None = None,
) -> dict[str, dict[str, Any]]:
    """Both styles on the same seeded orders, each on fresh topics (and a fresh embedded
    broker unless `bootstrap` is given), measured the same way."""
    run = uuid.uuid4().hex[:8]
    results: dict[str, dict[str, Any]] = {}
    for style in styles:
        namespace = f"{style}-{run}."

        async def one(settings: KafkaSettings, style: Style = style, ns: str = namespace) -> None:
            tracing = TracingFromEnv()  # honours OTEL_*; off (no overhead) when unset
            async with KafkaTransport(settings) as transport:
                result = await run_flow(
                    transport,
                    style=style,
                    orders=orders,
                    seed=seed,
                    failure_mix=failure_mix,
                    concurrency=concurrency,
                    timeout_s=timeout_s,
                    namespace=ns,
                    run_id=run,
                    progress=(lambda d, t: progress(style, d, t)) if progress else None,
                    tracing=tracing,
                )
                tracing.shutdown()
                if progress:
                    progress(f"{style}: measuring traffic", orders, orders)
                results[style] = summary(result, await measure_traffic(transport, ns), style)

        if bootstrap is not None:
            await one(KafkaSettings(bootstrap, client_id="sagakit-compare"))
        else:
            async with EmbeddedBroker() as broker:
                await one(KafkaSettings.embedded(broker.bootstrap_servers))
    return results


def parse_mix(text: str) -> dict[str, float]:
    """``credit=0.1,stock=0.1,shipping=0.05`` -> {"credit": 0.1, ...}."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"failure mix entry {part!r} is not name=share")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"failure mix share {value!r} of {name!r} is not a number") from None
    return mix

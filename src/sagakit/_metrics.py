"""Prometheus metrics of orchestrators and participants.

Each component gets its own registry (several may share a process, as in the demo),
served as text on ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ._evaluator import Phase, SagaInstance, SagaStatus, Transition
from ._interceptors import Interceptor
from ._messages import Envelope
from .transport._base import OutgoingRecord, Subscription

if TYPE_CHECKING:
    from ._definition import Saga

RESTORE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: a saga's run, start to end: from a fast saga's fraction of a second to a day of waiting
SAGA_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    14400.0,
    86400.0,
)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics(Interceptor):
    """The metrics of one component (or of every component of a process); `render()`
    gives the Prometheus text. An `Interceptor`: counted as things happen."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["saga_type", "saga_version"]
        r = self.registry
        self.started = Counter("sagakit_sagas_started", "Sagas started.", labels, registry=r)
        self.completed = Counter("sagakit_sagas_completed", "Sagas completed.", labels, registry=r)
        self.compensated = Counter(
            "sagakit_sagas_compensated", "Sagas that compensated.", labels, registry=r
        )
        self.parked = Counter(
            "sagakit_sagas_parked",
            "Sagas parked as FAILED_NEEDS_ATTENTION.",
            labels,
            registry=r,
        )
        self.resolved = Counter(
            "sagakit_sagas_resolved", "Parked sagas resolved by a person.", labels, registry=r
        )
        self.step_seconds = Histogram(
            "sagakit_step_duration_seconds",
            "From a step's command to the message that settled it (reply or timeout).",
            ["saga_type", "saga_version", "step", "phase", "outcome"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "sagakit_sagas_in_flight",
            "Sagas neither ended nor parked, in the partitions this instance owns.",
            labels,
            registry=r,
        )
        self.needing_attention = Gauge(
            "sagakit_sagas_needing_attention",
            "Sagas parked as FAILED_NEEDS_ATTENTION now (waiting for a person to resume or "
            "resolve them), in the partitions this instance owns.",
            labels,
            registry=r,
        )
        self.oldest_running = Gauge(
            "sagakit_saga_oldest_running_seconds",
            "Age of the oldest saga neither ended nor parked, in the partitions this instance "
            "owns (0: none).",
            labels,
            registry=r,
        )
        self.saga_seconds = Histogram(
            "sagakit_saga_duration_seconds",
            "From a saga's start to its end, by how it ended.",
            [*labels, "status"],
            buckets=SAGA_BUCKETS,
            registry=r,
        )
        self.held = Gauge(
            "sagakit_sagas_held",
            "Sagas in memory, in the partitions this instance owns: whole instances (live, "
            "parked, and ended ones until the next snapshot) and ended sagas remembered by id "
            "for deduplication.",
            [*labels, "kind"],
            registry=r,
        )
        self.restore_seconds = Histogram(
            "sagakit_partition_restore_seconds",
            "From taking a journal partition over to having restored it (snapshot + tail).",
            ["saga_type", "source"],
            buckets=RESTORE_BUCKETS,
            registry=r,
        )
        self.restored_records = Counter(
            "sagakit_partition_restore_records",
            "Journal records read after the snapshot (or from the start) while restoring.",
            ["saga_type"],
            registry=r,
        )
        self.lag = Gauge(
            "sagakit_consumer_lag",
            "Records not yet consumed, per partition (high-watermark - position).",
            ["topic", "partition"],
            registry=r,
        )
        self.handled_total = Counter(
            "sagakit_messages_handled",
            "Messages handled by a participant, by type and outcome.",
            ["service", "message_type", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "sagakit_dead_letters",
            "Records sent to a dead-letter topic.",
            ["topic", "error_type"],
            registry=r,
        )
        self.unknown = Counter(
            "sagakit_unknown_messages",
            "Records of a message type no model is registered for, skipped on event topics "
            "(types beyond the first 50 are counted as 'other').",
            ["topic", "message_type"],
            registry=r,
        )
        self.unread_command_topics = Gauge(
            "sagakit_unread_command_topics",
            "1 while no consumer group reads this topic a saga sends commands to (checked "
            "after start-up, then until one does), 0 once one does.",
            ["topic"],
            registry=r,
        )
        self._unknown_types: set[str] = set()
        self._before_render: list[Callable[[], Awaitable[None]]] = []
        self._lag_sources: list[Callable[[], Subscription | None]] = []
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """`metric.labels(*labels)`, cached: looking labels up costs more than counting."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def watch_lag(self, subscription: Callable[[], Subscription | None]) -> None:
        """Report the lag of whatever `subscription()` returns, at each scrape (several
        components of one process may share these metrics: each adds its own)."""
        if not self._lag_sources:
            self.before_render(self._refresh_lag)
        self._lag_sources.append(subscription)

    async def _refresh_lag(self) -> None:
        self.lag.clear()
        for source in self._lag_sources:
            sub = source()
            if sub is not None:
                for tp, lag in (await sub.lag()).items():
                    self.lag.labels(tp.topic, str(tp.partition)).set(lag)

    def before_render(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run `refresh` before each scrape (for values read on demand, like lag)."""
        self._before_render.append(refresh)

    async def render(self) -> bytes:
        for refresh in self._before_render:
            await refresh()
        data: bytes = generate_latest(self.registry)
        return data

    # -- orchestrator -----------------------------------------------------------------------
    # -- as an interceptor ------------------------------------------------------------------
    def transition(
        self, saga: Saga[Any], previous: SagaInstance | None, transition: Transition
    ) -> None:
        self.count_transition(previous, transition)

    def handled(self, service: str, envelope: Envelope, outcome: str) -> None:
        self._child(self.handled_total, (service, envelope.message_type, outcome)).inc()

    def dead_letter(self, component: str, record: OutgoingRecord, error_type: str) -> None:
        self._child(self.dead_letters, (record.topic, error_type)).inc()

    def unknown_type(self, component: str, topic: str, message_type: str) -> bool:
        return self.count_unknown(topic, message_type)

    # -- counting ---------------------------------------------------------------------------
    def count_transition(self, previous: SagaInstance | None, t: Transition) -> None:
        labels = (t.saga_type, str(t.version))
        if previous is None:
            self._child(self.started, labels).inc()
        else:
            still = {p.message_id for p in t.in_flight}
            for pending in previous.in_flight:
                if pending.message_id in still:
                    continue  # another branch's command was answered
                outcome = {
                    "step-succeeded": "success",
                    "step-compensated": "compensated",
                    "step-failed": "failure",
                    "deadline-passed": "deadline",
                }.get(t.event, "retry" if t.event in ("retry", "retry-scheduled") else t.event)
                phase = "compensate" if pending.phase is Phase.COMPENSATE else "forward"
                self._child(self.step_seconds, (*labels, pending.step, phase, outcome)).observe(
                    max(0, t.at_ms - previous.updated_ms) / 1000
                )
        if t.status.terminal and (previous is None or not previous.status.terminal):
            self._child(self.saga_seconds, (*labels, t.status.value)).observe(
                max(0, t.at_ms - t.started_ms) / 1000
            )
        if previous is None or previous.status is not t.status:
            counter = {
                SagaStatus.COMPLETED: self.completed,
                SagaStatus.COMPENSATED: self.compensated,
                SagaStatus.FAILED_NEEDS_ATTENTION: self.parked,
                SagaStatus.RESOLVED: self.resolved,
            }.get(t.status)
            if counter is not None:
                self._child(counter, labels).inc()

    def count_unknown(self, topic: str, message_type: str) -> bool:
        """Count a record of an unregistered type; True the first time this type is seen.

        The type comes from a header anyone can write, so only the first 50 get a label
        of their own (a metric's label values must stay few).
        """
        first = message_type not in self._unknown_types
        if first and len(self._unknown_types) < 50:
            self._unknown_types.add(message_type)
        label = message_type if message_type in self._unknown_types else "other"
        self._child(self.unknown, (topic, label)).inc()
        return first and label != "other"

"""OpenTelemetry tracing of sagas: one trace per saga, across every service.

Trace context travels in the W3C ``traceparent``/``tracestate`` record headers. The
consumer loops of the orchestrator and of participants open a *process* span for each
record (child of the span that sent it) and every record they produce gets a *send*
span (child of that process span) whose context goes into its headers — so a saga's
start request, every command, reply, event, timer and compensation land in one trace,
without a line of tracing in user handlers.

Configured by the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``,
``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` (OTLP/HTTP protobuf, e.g.
``http://jaeger:4318``), ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``
(``parentbased_traceidratio`` with a ratio), ``OTEL_SERVICE_NAME``. With no exporter
configured, `Tracing.from_env` returns a disabled tracing: no spans, no overhead.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._interceptors import Interceptor, Scope
from ._messages import Envelope, Header
from .transport._base import Record

__all__ = ("SpanHandle", "Tracing", "disabled")

_PROPAGATOR = TraceContextTextMapPropagator()


def _headers_carrier(headers: Any) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in (Header.TRACEPARENT, Header.TRACESTATE) and value is not None:
            carrier[name] = value.decode(errors="replace")
    return carrier


@dataclass
class SpanHandle:
    """The span of one consumed record, or nothing when tracing is off."""

    span: Span | None

    def set(self, **attributes: Any) -> None:
        if self.span is not None:
            for key, value in attributes.items():
                if value is not None:
                    self.span.set_attribute(key.replace("_", "."), value)

    def error(self, kind: str, message: str) -> None:
        if self.span is not None:
            self.span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"))
            self.span.add_event("exception", {"exception.type": kind, "exception.message": message})

    def exception(self, exc: BaseException) -> None:
        if self.span is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, repr(exc)))


class Tracing(Interceptor):
    """Spans for sent and consumed records. `Tracing.disabled()` does nothing, cheaply.

    An `Interceptor`: the orchestrator and services call it through `handle`, `send`
    and `trace_context`."""

    def __init__(self, provider: TracerProvider | None, component: str = "sagakit") -> None:
        self.provider = provider
        self.component = component
        self._tracer: Tracer | None = (
            provider.get_tracer("sagakit") if provider is not None else None
        )

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def disabled(cls) -> Tracing:
        return _DISABLED

    @classmethod
    def from_env(
        cls,
        component: str,
        env: Mapping[str, str] | None = None,
        exporter: SpanExporter | None = None,
    ) -> Tracing:
        """Tracing as the OTEL_* variables say, for a process playing `component`.

        Without OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_ENDPOINT (or with the
        exporter ``none``) tracing is off.
        """
        env = os.environ if env is None else env
        kind = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if exporter is None:
            if kind == "none" or (not kind and not env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
                return _DISABLED
            exporter = _exporter(kind or "otlp", env)
        name = env.get("OTEL_SERVICE_NAME") or component
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, name)

    def shutdown(self) -> None:
        """Flush and stop the exporter (spans still queued are sent)."""
        if self.provider is not None:
            self.provider.shutdown()

    # -- as an interceptor ------------------------------------------------------------------
    def handle(self, component: str, record: Record, envelope: Envelope | None) -> Scope | None:
        if self._tracer is None:
            return None
        return _ProcessScope(self.process(record, envelope))

    def send(
        self,
        envelope: Envelope,
        topic: str,
        *,
        name: str,
        parent: str | None = None,
        **attributes: Any,
    ) -> Envelope:
        return self.stamp(envelope, topic, name=name, parent=parent, **attributes)

    def trace_context(self) -> str | None:
        return self.current_traceparent()

    # -- consuming ------------------------------------------------------------------------
    def process(
        self, record: Record, envelope: Envelope | None = None
    ) -> AbstractContextManager[SpanHandle]:
        """A CONSUMER span for handling `record`, child of the span that sent it.

        A record of a trace that is not sampled gets no span: its context is made
        current as it is, so what handling it sends stays in the (unsampled) trace at
        the cost of a header copy — sampling 10 % must cost about 10 %.
        """
        if self._tracer is None:
            return _NO_SPAN  # called for every record: no generator, no allocation
        traceparent = envelope.traceparent if envelope is not None else None
        if traceparent is None:
            for name, value in record.headers:
                if name == Header.TRACEPARENT and value:
                    traceparent = value.decode(errors="replace")
                    break
        if traceparent is not None and _unsampled(traceparent):
            return _Unsampled(traceparent)
        parent = _PROPAGATOR.extract(_headers_carrier(record.headers))
        return self._process(record, envelope, parent)

    @contextmanager
    def _process(
        self, record: Record, envelope: Envelope | None, parent: otel_context.Context
    ) -> Iterator[SpanHandle]:
        assert self._tracer is not None
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "messaging.operation.type": "process",
            "messaging.kafka.offset": record.offset,
        }
        if envelope is not None:
            attributes.update(_envelope_attributes(envelope))
        name = f"process {envelope.message_type if envelope else record.topic}"
        with self._tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield SpanHandle(span)

    @contextmanager
    def root(self, name: str, **attributes: Any) -> Iterator[SpanHandle]:
        """A span that starts a trace (a client starting a saga, placing an order)."""
        if self._tracer is None:
            yield _NO_HANDLE
            return
        attrs = {k.replace("_", "."): v for k, v in attributes.items() if v is not None}
        with self._tracer.start_as_current_span(
            name, context=otel_context.Context(), kind=SpanKind.PRODUCER, attributes=attrs
        ) as span:
            yield SpanHandle(span)

    # -- sending ----------------------------------------------------------------------------
    def stamp(
        self,
        envelope: Envelope,
        topic: str,
        *,
        name: str | None = None,
        parent: str | None = None,
        **attributes: Any,
    ) -> Envelope:
        """The envelope with trace headers of a fresh PRODUCER span for sending it.

        The span is a child of the current span, or of `parent` (a traceparent string,
        for records sent outside the handling of another: timers, re-sends).
        """
        if self._tracer is None:
            return envelope
        if parent is None:
            parent = _UNSAMPLED.get()
        if parent is not None and _unsampled(parent):
            # an unsampled trace: pass its context on as it is, without a span
            return envelope.evolve(traceparent=parent, tracestate=None)
        ctx = None
        if parent is not None:
            ctx = _PROPAGATOR.extract({Header.TRACEPARENT: parent})
        attrs: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.operation.type": "send",
            **_envelope_attributes(envelope),
        }
        attrs.update({k.replace("_", "."): v for k, v in attributes.items() if v is not None})
        span = self._tracer.start_span(
            name or f"send {topic}", context=ctx, kind=SpanKind.PRODUCER, attributes=attrs
        )
        carrier: dict[str, str] = {}
        inject(carrier, context=set_span_in_context(span))
        span.end()
        return envelope.evolve(
            traceparent=carrier.get(Header.TRACEPARENT),
            tracestate=carrier.get(Header.TRACESTATE) or None,
        )

    def current_traceparent(self) -> str | None:
        """The traceparent of the current span (to keep with what it caused)."""
        if self._tracer is None:
            return None
        unsampled = _UNSAMPLED.get()
        if unsampled is not None:
            return unsampled
        carrier: dict[str, str] = {}
        inject(carrier)
        return carrier.get(Header.TRACEPARENT)


#: While a record of an unsampled trace is handled: its traceparent, passed on as it is.
_UNSAMPLED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sagakit_unsampled_trace", default=None
)


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def _unsampled(traceparent: str) -> bool:
    """True for a W3C traceparent (``00-trace-span-flags``) whose sampled flag is off.

    Anything else (it is a header anyone can write) is not passed on as it is.
    """
    return _TRACEPARENT.match(traceparent) is not None and not int(traceparent[-2:], 16) & 1


class _Unsampled:
    """Handling a record of an unsampled trace: no span, the traceparent passed on."""

    __slots__ = ("_token", "_traceparent")

    def __init__(self, traceparent: str) -> None:
        self._traceparent = traceparent
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> SpanHandle:
        self._token = _UNSAMPLED.set(self._traceparent)
        return _NO_HANDLE

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _UNSAMPLED.reset(self._token)


class _ProcessScope:
    """`Tracing.process` as an interceptor's scope."""

    __slots__ = ("_cm", "_handle")

    def __init__(self, cm: AbstractContextManager[SpanHandle]) -> None:
        self._cm = cm
        self._handle = _NO_HANDLE

    def __enter__(self) -> _ProcessScope:
        self._handle = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)

    def set(self, **attributes: Any) -> None:
        self._handle.set(**attributes)

    def error(self, kind: str, message: str) -> None:
        self._handle.error(kind, message)

    def exception(self, exc: BaseException) -> None:
        self._handle.exception(exc)


def _envelope_attributes(envelope: Envelope) -> dict[str, Any]:
    # Few attributes on purpose: each one is validated and copied by the SDK, and a
    # sampled record's spans are most of what tracing costs.
    attributes: dict[str, Any] = {
        "messaging.message.id": envelope.message_id,
        "saga.id": envelope.saga_id,
    }
    if envelope.saga_type:
        attributes["saga.type"] = envelope.saga_type
    return attributes


def _exporter(kind: str, env: Mapping[str, str]) -> SpanExporter:
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported (otlp, console, none)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not endpoint:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/")
        endpoint = f"{base}/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


_DISABLED = Tracing(None)
_NO_HANDLE = SpanHandle(None)
_NO_SPAN = nullcontext(_NO_HANDLE)


def disabled() -> Tracing:
    return _DISABLED


class ComponentTracings:
    """One `Tracing` per component of a process, as the OTEL_* variables say.

    Components sharing a process still report their own ``service.name`` (the
    variable OTEL_SERVICE_NAME is honoured only when there is one component).
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, shared: bool = True) -> None:
        source = dict(os.environ if env is None else env)
        if shared:
            source.pop("OTEL_SERVICE_NAME", None)
        self._env = source
        self._made: dict[str, Tracing] = {}

    def __call__(self, component: str) -> Tracing:
        if component not in self._made:
            self._made[component] = Tracing.from_env(component, env=self._env)
        return self._made[component]

    def shutdown(self) -> None:
        for tracing in self._made.values():
            tracing.shutdown()

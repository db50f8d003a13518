"""Interceptors: how tracing, metrics, log context and your own hooks attach to what
orchestrators and services do, without a line of them in the handling code.

    class Audit(Interceptor):
        def transition(self, saga, previous, transition):
            audit_log.info("%s %s -> %s", transition.saga_id, transition.event, transition.status)

    App("shop", sagas=[...], services=[...], interceptors=[Audit()])

Every hook has a default that does nothing; override the ones you need. They run on
the consume loop, in the order given (tracing first, then logs, then metrics, then
yours): keep them quick, and never let them raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._messages import Envelope
from .transport._base import OutgoingRecord, Record

if TYPE_CHECKING:
    from ._definition import Saga
    from ._evaluator import SagaInstance, Transition


class Scope(Protocol):
    """What `Interceptor.handle` returns: entered while a record is handled, told what
    became of it."""

    def __enter__(self) -> Scope: ...

    def __exit__(self, *exc: object) -> None: ...

    def set(self, **attributes: Any) -> None: ...

    def error(self, kind: str, message: str) -> None: ...

    def exception(self, exc: BaseException) -> None: ...


class _NoScope:
    __slots__ = ()

    def __enter__(self) -> _NoScope:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set(self, **attributes: Any) -> None:
        return None

    def error(self, kind: str, message: str) -> None:
        return None

    def exception(self, exc: BaseException) -> None:
        return None


NO_SCOPE = _NoScope()


class Interceptor:
    """Hooks into the consume loops of orchestrators and services. Subclass it."""

    def handle(self, component: str, record: Record, envelope: Envelope | None) -> Scope | None:
        """A consumed record is about to be handled (`envelope` is None if its headers do
        not decode): a `Scope` to enter for the handling, or None."""
        return None

    def send(
        self,
        envelope: Envelope,
        topic: str,
        *,
        name: str,
        parent: str | None = None,
        **attributes: Any,
    ) -> Envelope:
        """A record is about to be sent (`name` says what: ``send reserve-credit``,
        ``timer timeout``, ...): the envelope to send it with (headers may be added)."""
        return envelope

    def trace_context(self) -> str | None:
        """The W3C traceparent of what is being handled now, if this interceptor knows."""
        return None

    def transition(
        self, saga: Saga[Any], previous: SagaInstance | None, transition: Transition
    ) -> None:
        """An orchestrator decided a transition (before it is journaled)."""

    def handled(self, service: str, envelope: Envelope, outcome: str) -> None:
        """A service handled a command or event: `outcome` is the reply or event type it
        produced, ``none``, or ``duplicate`` (answered from its stored reply)."""

    def dead_letter(self, component: str, record: OutgoingRecord, error_type: str) -> None:
        """A record could not be processed and goes to `record.topic` (a DLQ)."""

    def unknown_type(self, component: str, topic: str, message_type: str) -> bool:
        """A service skipped an event of a type no model is registered for; True the
        first time this interceptor wants it logged."""
        return False


def _overrides(interceptor: Interceptor, hook: str) -> bool:
    return getattr(type(interceptor), hook) is not getattr(Interceptor, hook)


class Interceptors:
    """Several interceptors as one, calling only those that override a hook."""

    def __init__(self, interceptors: Sequence[Interceptor]) -> None:
        self.all = tuple(interceptors)
        self._handle = [i for i in self.all if _overrides(i, "handle")]
        self._send = [i for i in self.all if _overrides(i, "send")]
        self._trace = [i for i in self.all if _overrides(i, "trace_context")]
        self._transition = [i for i in self.all if _overrides(i, "transition")]
        self._handled = [i for i in self.all if _overrides(i, "handled")]
        self._dead = [i for i in self.all if _overrides(i, "dead_letter")]
        self._unknown = [i for i in self.all if _overrides(i, "unknown_type")]

    @property
    def sends(self) -> bool:
        """Whether any interceptor changes what is sent (tracing is on)."""
        return bool(self._send)

    def handle(self, component: str, record: Record, envelope: Envelope | None) -> Scope:
        if not self._handle:
            return NO_SCOPE
        scopes = [
            s for i in self._handle if (s := i.handle(component, record, envelope)) is not None
        ]
        if not scopes:
            return NO_SCOPE
        return scopes[0] if len(scopes) == 1 else _Scopes(scopes)

    def send(
        self,
        envelope: Envelope,
        topic: str,
        *,
        name: str,
        parent: str | None = None,
        **attributes: Any,
    ) -> Envelope:
        for i in self._send:
            envelope = i.send(envelope, topic, name=name, parent=parent, **attributes)
        return envelope

    def trace_context(self) -> str | None:
        for i in self._trace:
            found = i.trace_context()
            if found is not None:
                return found
        return None

    def transition(
        self, saga: Saga[Any], previous: SagaInstance | None, transition: Transition
    ) -> None:
        for i in self._transition:
            i.transition(saga, previous, transition)

    def handled(self, service: str, envelope: Envelope, outcome: str) -> None:
        for i in self._handled:
            i.handled(service, envelope, outcome)

    def dead_letter(self, component: str, record: OutgoingRecord, error_type: str) -> None:
        for i in self._dead:
            i.dead_letter(component, record, error_type)

    def unknown_type(self, component: str, topic: str, message_type: str) -> bool:
        first = False
        for i in self._unknown:
            first = i.unknown_type(component, topic, message_type) or first
        return first


class _Scopes:
    """Several scopes entered in order, left in reverse, told the same things."""

    __slots__ = ("_scopes",)

    def __init__(self, scopes: list[Scope]) -> None:
        self._scopes = scopes

    def __enter__(self) -> _Scopes:
        for scope in self._scopes:
            scope.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for scope in reversed(self._scopes):
            scope.__exit__(*exc)

    def set(self, **attributes: Any) -> None:
        for scope in self._scopes:
            scope.set(**attributes)

    def error(self, kind: str, message: str) -> None:
        for scope in self._scopes:
            scope.error(kind, message)

    def exception(self, exc: BaseException) -> None:
        for scope in self._scopes:
            scope.exception(exc)


class LogContext(Interceptor):
    """Log records made while a record is handled carry its saga, correlation and trace
    ids (what ``--log-format json`` writes)."""

    def __init__(self, tracing: Interceptor | None = None) -> None:
        self._tracing = tracing

    def handle(self, component: str, record: Record, envelope: Envelope | None) -> Scope | None:
        if envelope is None:
            return None
        return _LogScope(envelope, self._tracing)


class _LogScope(_NoScope):
    __slots__ = ("_envelope", "_token", "_tracing")

    def __init__(self, envelope: Envelope, tracing: Interceptor | None) -> None:
        self._envelope = envelope
        self._tracing = tracing
        self._token: Any = None

    def __enter__(self) -> _LogScope:
        from ._logging import log_context, trace_id_of

        env = self._envelope
        trace = self._tracing.trace_context() if self._tracing is not None else None
        self._token = log_context(
            saga_id=env.saga_id, correlation_id=env.correlation_id, trace_id=trace_id_of(trace)
        )
        self._token.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            self._token.__exit__(*exc)

"""Wire models: the message bases users subclass, the registry, and the envelope headers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ._errors import DecodeError, DefinitionError

_REGISTRY: dict[str, type[Message]] = {}


#: Wire types under this prefix belong to the framework: any command may be answered with
#: one (the failure reply a participant sends when a handler keeps failing, say).
FRAMEWORK_PREFIX = "sagakit."


class Message(BaseModel):
    """Base of everything that travels on a topic.

    A concrete message names its wire type, ``<service>.<Name>`` by convention::

        class ReserveCredit(Command, type="payments.ReserveCredit"):
            customer_id: str
            amount: int
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_type: ClassVar[str] = ""

    def __init_subclass__(
        cls, *, type: str | None = None, replies: object = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if replies is not None:  # a Command takes it before it gets here
            raise DefinitionError(
                f"{cls.__qualname__}: replies= is for Command types (a command declares "
                "the replies it produces), and it is not a Command"
            )
        if type is None:
            cls.message_type = ""
            return
        if not type or type != type.strip() or " " in type:
            raise DefinitionError(f"message type of {cls.__qualname__} must be a non-empty name")
        previous = _REGISTRY.get(type)
        if previous is not None and (previous.__module__, previous.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise DefinitionError(
                f"message type {type!r} of {cls.__module__}.{cls.__qualname__} is already "
                f"registered by {previous.__module__}.{previous.__qualname__}: a type name "
                "stands for one model in a process. Name this one differently; if it is the "
                "same module imported under two names (its directory twice on sys.path), "
                "import it from one place; for throwaway models in tests, define them "
                "inside sagakit.testing.isolated_registry(). (Defining a class again in the "
                "same module, as a notebook cell or a reload does, replaces it.)"
            )
        cls.message_type = type
        _REGISTRY[type] = cls


class Command(Message):
    """A request sent to one participant, which answers with a `Reply`.

    A command may declare the replies it produces; they are classes, so they are
    defined before it::

        class ReserveCredit(
            Command,
            type="payments.ReserveCredit",
            replies=(CreditReserved, CreditLimitExceeded),
        ):
            ...

    A saga step that lists a reply the command does not declare, or leaves one of them
    unhandled, fails when the `Saga` is built, and a handler that returns an undeclared
    reply is a handler error. Replies of the framework (``sagakit.*``) are always
    allowed. Without ``replies=`` (`declared_replies` is None) nothing is checked.
    """

    declared_replies: ClassVar[frozenset[type[Reply]] | None] = None

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        replies: Iterable[type[Reply]] | None = None,
        **kwargs: Any,
    ) -> None:
        if replies is not None and type is None:
            raise DefinitionError(
                f"command {cls.__qualname__}: replies= needs type= (a command declares its replies "
                "where it registers its wire type)"
            )
        cls.declared_replies = _declared(cls.__qualname__, replies)
        super().__init_subclass__(type=type, **kwargs)


class Reply(Message):
    """A participant's answer to a command: success, or a business failure."""


class Event(Message):
    """A domain fact a service publishes for whoever is interested (choreography)."""


def _declared(command: str, replies: Iterable[type[Reply]] | None) -> frozenset[type[Reply]] | None:
    """The checked ``replies=`` of a command class."""
    if replies is None:
        return None
    if isinstance(replies, (str, type)) or not isinstance(replies, Iterable):
        raise DefinitionError(
            f"command {command}: replies= takes a tuple of Reply classes, got {replies!r}"
        )
    declared = tuple(replies)
    if not declared:
        raise DefinitionError(
            f"command {command}: replies= is empty; declare at least the reply that means success"
        )
    for reply in declared:
        if not (isinstance(reply, type) and issubclass(reply, Reply)):
            name = getattr(reply, "__qualname__", repr(reply))
            raise DefinitionError(f"command {command}: {name} in replies= is not a Reply class")
        if not is_registered(reply):
            raise DefinitionError(
                f"command {command}: reply {reply.__qualname__} in replies= is not registered: "
                "declare "
                f'it as class {reply.__name__}(Reply, type="<service>.{reply.__name__}")'
            )
    return frozenset(declared)


def is_framework(message_type: str) -> bool:
    """Whether `message_type` is one of the framework's own (``sagakit.*``)."""
    return message_type.startswith(FRAMEWORK_PREFIX)


def declares(command: type[Command], reply: type[Reply]) -> bool:
    """Whether `command` may be answered with `reply`: it declares it, declares nothing,
    or `reply` is the framework's."""
    declared = command.declared_replies
    if declared is None or is_framework(reply.message_type):
        return True
    return reply.message_type in {r.message_type for r in declared}


def describe_replies(replies: Iterable[type[Reply]]) -> str:
    """Wire types of `replies`, sorted and comma-separated."""
    return ", ".join(sorted(r.message_type for r in replies))


def undeclared_reply(command_type: type[Command], reply: Reply) -> str | None:
    """Why `reply` may not answer a `command_type` command, or None when it may.

    It may when the command declares its type, declares nothing (no ``replies=``), or
    the reply is the framework's (``sagakit.*``, e.g. ``sagakit.HandlerFailed``).
    """
    if declares(command_type, type(reply)):
        return None
    declared = command_type.declared_replies or frozenset()
    return (
        f"{reply.message_type} is not a reply {command_type.message_type} declares "
        f"(it declares {describe_replies(declared)}); add it to replies= of "
        f"{command_type.__qualname__} or return one of those"
    )


class StartSaga(Message, type="sagakit.StartSaga"):
    """Start request written to ``<saga>.inbox``: the saga's initial state."""

    state: dict[str, Any]


class TimerFired(Message, type="sagakit.TimerFired"):
    """A durable timer of a saga came due; the owner writes it to its own inbox partition.

    kind is ``timeout`` (ref = the unanswered command's id), ``retry`` (ref =
    ``{step}:{phase}:{attempt}``) or ``deadline`` (ref = ``saga``).
    """

    kind: str
    ref: str


class ResumeSaga(Message, type="sagakit.ResumeSaga"):
    """A person asks a parked saga to retry from where it stopped."""

    note: str = ""


class ResolveSaga(Message, type="sagakit.ResolveSaga"):
    """A person fixed a parked saga by hand; it ends as RESOLVED."""

    note: str


class CancelSaga(Message, type="sagakit.CancelSaga"):
    """Someone asks a running saga to stop: before its pivot it compensates and ends
    COMPENSATED with the reason; after the pivot the request is refused (dead-lettered
    with why)."""

    reason: str


def registered(message_type: str) -> type[Message] | None:
    """The model registered under `message_type`, or None."""
    return _REGISTRY.get(message_type)


def is_registered(model: type[Message]) -> bool:
    return bool(model.message_type) and _REGISTRY.get(model.message_type) is model


class Header:
    """Names of the record headers of the wire contract."""

    MESSAGE_ID = "message-id"
    MESSAGE_TYPE = "message-type"
    SAGA_ID = "saga-id"
    SAGA_TYPE = "saga-type"
    SAGA_VERSION = "saga-version"
    CORRELATION_ID = "correlation-id"
    CAUSATION_ID = "causation-id"
    REPLY_TO = "reply-to"
    TRACEPARENT = "traceparent"
    TRACESTATE = "tracestate"
    #: who asked for an operator request (resume, resolve, signal, cancel), and why
    OPERATOR = "operator"
    OPERATOR_NOTE = "operator-note"


_OPTIONAL = {
    "saga_type": Header.SAGA_TYPE,
    "saga_version": Header.SAGA_VERSION,
    "reply_to": Header.REPLY_TO,
    "traceparent": Header.TRACEPARENT,
    "tracestate": Header.TRACESTATE,
    "operator": Header.OPERATOR,
    "operator_note": Header.OPERATOR_NOTE,
}
#: The longest `operator` and `operator-note` a record may carry (longer: a DecodeError).
MAX_OPERATOR_CHARS = 200
MAX_OPERATOR_NOTE_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Envelope:
    """The headers of one record, as typed fields."""

    message_id: str
    message_type: str
    saga_id: str
    correlation_id: str
    causation_id: str
    saga_type: str | None = None
    saga_version: str | None = None
    reply_to: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    #: who asked (an operator request): recorded in the journal as the transition's actor
    operator: str | None = None
    operator_note: str | None = None
    extra: tuple[tuple[str, bytes], ...] = field(default=())

    def to_headers(self) -> list[tuple[str, bytes]]:
        headers = [
            ("message-id", self.message_id.encode()),
            ("message-type", self.message_type.encode()),
            ("saga-id", self.saga_id.encode()),
            ("correlation-id", self.correlation_id.encode()),
            ("causation-id", self.causation_id.encode()),
        ]
        if self.saga_type is not None:
            headers.append(("saga-type", self.saga_type.encode()))
        if self.saga_version is not None:
            headers.append(("saga-version", self.saga_version.encode()))
        if self.reply_to is not None:
            headers.append(("reply-to", self.reply_to.encode()))
        if self.traceparent is not None:
            headers.append(("traceparent", self.traceparent.encode()))
        if self.tracestate is not None:
            headers.append(("tracestate", self.tracestate.encode()))
        if self.operator is not None:
            headers.append((Header.OPERATOR, self.operator.encode()))
        if self.operator_note is not None:
            headers.append((Header.OPERATOR_NOTE, self.operator_note.encode()))
        if self.extra:
            headers.extend(self.extra)
        return headers

    @classmethod
    def from_headers(cls, headers: Any) -> Envelope:
        """Read the envelope from Kafka-style ``[(name, bytes), ...]`` headers.

        Headers come from whoever could produce the record: a name that is not UTF-8,
        a wire-contract header given twice or with a value that is not UTF-8, or a
        missing required one is a DecodeError naming it.
        """
        found: dict[str, str] = {}
        extra: list[tuple[str, bytes]] = []
        known = _KNOWN
        try:
            for name, value in headers:
                if name in known:
                    if name in found:
                        raise DecodeError(f"record has header {name!r} more than once")
                    found[name] = value.decode() if value is not None else ""
                else:
                    name.encode()  # a name decoded with surrogate escapes is not UTF-8
                    extra.append((name, value))
        except UnicodeError as exc:
            raise DecodeError(f"record headers are not UTF-8 name/value pairs: {exc}") from exc
        except (AttributeError, TypeError, ValueError) as exc:
            raise DecodeError(f"record headers are not name/value pairs: {exc!r}") from exc
        missing = [h for h in _REQUIRED if not found.get(h)]
        if missing:
            raise DecodeError(f"record lacks required header(s) {', '.join(missing)}")
        for name, most in (
            (Header.OPERATOR, MAX_OPERATOR_CHARS),
            (Header.OPERATOR_NOTE, MAX_OPERATOR_NOTE_CHARS),
        ):
            if len(found.get(name, "")) > most:
                raise DecodeError(f"record header {name!r} is longer than {most} characters")
        return cls(
            message_id=found[Header.MESSAGE_ID],
            message_type=found[Header.MESSAGE_TYPE],
            saga_id=found[Header.SAGA_ID],
            correlation_id=found.get(Header.CORRELATION_ID) or found[Header.SAGA_ID],
            causation_id=found.get(Header.CAUSATION_ID) or found[Header.MESSAGE_ID],
            saga_type=found.get(Header.SAGA_TYPE),
            saga_version=found.get(Header.SAGA_VERSION),
            reply_to=found.get(Header.REPLY_TO),
            traceparent=found.get(Header.TRACEPARENT),
            tracestate=found.get(Header.TRACESTATE),
            operator=found.get(Header.OPERATOR) or None,
            operator_note=found.get(Header.OPERATOR_NOTE) or None,
            extra=tuple(extra),
        )

    def evolve(self, **changes: Any) -> Envelope:
        return replace(self, **changes)


_REQUIRED = (Header.MESSAGE_ID, Header.MESSAGE_TYPE, Header.SAGA_ID)
_KNOWN = frozenset(
    {
        Header.MESSAGE_ID,
        Header.MESSAGE_TYPE,
        Header.SAGA_ID,
        Header.CORRELATION_ID,
        Header.CAUSATION_ID,
        *_OPTIONAL.values(),
    }
)


class SagaEnded(Reply, type="sagakit.SagaEnded"):
    """A child saga (`SubSaga`) ended: sent by its orchestrator to the parent's inbox, as
    the answer to the command that started it (or asked it to compensate)."""

    saga_type: str
    saga_id: str
    status: str
    state: dict[str, Any]
    failure: str | None = None


class StartChild(Command, type="sagakit.StartChild", replies=(SagaEnded,)):
    """A parent saga starts a child (`SubSaga`) on the child's inbox; the child answers
    with `SagaEnded` when it ends."""

    child_type: str
    child_id: str
    parent_type: str
    parent_id: str
    state: dict[str, Any]


class CompensateChild(Command, type="sagakit.CompensateChild", replies=(SagaEnded,)):
    """A parent saga that compensates asks its completed child to undo its steps."""

    child_type: str
    child_id: str
    parent_id: str

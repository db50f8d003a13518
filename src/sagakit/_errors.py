"""The exception hierarchy: everything sagakit raises on purpose derives from SagaError."""

from __future__ import annotations


class SagaError(Exception):
    """Base of every error sagakit raises on purpose."""


class DefinitionError(SagaError):
    """A saga definition is invalid; raised when the definition is built."""


class DecodeError(SagaError):
    """A record's bytes or headers could not be turned into a registered message."""


class TransportError(SagaError):
    """The message transport (Kafka or in-memory) failed or is misconfigured."""


class PartitionsLost(TransportError):
    """A commit was refused because the partitions now belong to another consumer."""


class TopicMismatch(TransportError):
    """A topic exists with another partition count than the one required."""


class BrokerError(SagaError):
    """The embedded broker could not be found, started or reached."""


class BusinessFailure(SagaError):
    """Raised by a participant handler to answer with a failure, undoing its own writes.

    A command handler raises it with a failure `Reply` the saga step lists, e.g.
    ``raise BusinessFailure(CreditLimitExceeded(...))``; a reaction raises it with the
    failure `Event` to publish.
    """

    def __init__(self, reply: object) -> None:
        from ._messages import Event, Reply

        if not isinstance(reply, (Reply, Event)):
            raise TypeError(
                "BusinessFailure expects a Reply (or, in a reaction, an Event) instance, "
                f"got {type(reply).__name__}"
            )
        super().__init__(f"{reply.message_type}: {reply}")
        self.reply: Reply | Event = reply

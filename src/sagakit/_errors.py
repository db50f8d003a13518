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
    """Raised by a participant handler to answer a command with a failure reply.

    The reply is a registered `Reply` model that the saga step lists among its
    failures, e.g. ``raise BusinessFailure(CreditLimitExceeded(...))``.
    """

    def __init__(self, reply: object) -> None:
        from ._messages import Reply

        if not isinstance(reply, Reply):
            raise TypeError(
                f"BusinessFailure expects a Reply model instance, got {type(reply).__name__}"
            )
        super().__init__(f"{reply.message_type}: {reply}")
        self.reply = reply

"""Transports: the protocol, the Kafka implementation and the in-memory one."""

from ._base import (
    Delivered,
    OutgoingRecord,
    RebalanceListener,
    Record,
    Subscription,
    TopicPartition,
    Transport,
    partition_for,
)
from .kafka import KafkaSettings, KafkaTransport
from .memory import MemoryBroker, MemoryTransport

__all__ = (
    "Delivered",
    "KafkaSettings",
    "KafkaTransport",
    "MemoryBroker",
    "MemoryTransport",
    "OutgoingRecord",
    "RebalanceListener",
    "Record",
    "Subscription",
    "TopicPartition",
    "Transport",
    "partition_for",
)

"""Event logs: the protocol, the journal-topic implementation and the in-memory one."""

from ._base import EventLog, JournalEntry, StoredEntry
from .kafka import KafkaEventLog
from .memory import MemoryEventLog

__all__ = ("EventLog", "JournalEntry", "KafkaEventLog", "MemoryEventLog", "StoredEntry")

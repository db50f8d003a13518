"""Empty stores for a test: each test starts from nothing, and writes no files."""

from __future__ import annotations

from typing import Any

from .._idempotency import MemoryStore, SqliteStore
from .._participant import Service


def empty_like(store: Any) -> Any:
    """An empty store of `store`'s kind (SQLite in memory, with the same schema); the
    store itself for kinds the test kit does not know."""
    if isinstance(store, SqliteStore):
        return SqliteStore(":memory:", schema=store.schema)
    if isinstance(store, MemoryStore):
        return MemoryStore()
    return store


class StoreSwap:
    """Gives services empty stores of their kind, and their own back on `restore`."""

    def __init__(self) -> None:
        self._saved: list[tuple[Service[Any], Any]] = []

    def empty(self, service: Service[Any]) -> None:
        self._saved.append((service, service.store))
        service.store = empty_like(service.store)

    def restore(self) -> None:
        while self._saved:
            service, store = self._saved.pop()
            if service.store is not store and isinstance(service.store, SqliteStore):
                service.store.close()
            service.store = store

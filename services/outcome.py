"""What a business rule of a sample service decided, whichever style coordinates it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from sagakit import Service, SqliteStore
from sagakit.tracing import Tracing

Style = Literal["orchestration", "choreography"]
STYLES: tuple[Style, ...] = ("orchestration", "choreography")


@dataclass(frozen=True, slots=True)
class Outcome:
    """DONE (now or before), refused (with the reason), or ALREADY_UNDONE: the order was
    compensated or expired before this arrived, so nothing is done and nothing follows."""

    kind: Literal["done", "refused", "undone"]
    reason: str = ""

    DONE: ClassVar[Outcome]
    ALREADY_UNDONE: ClassVar[Outcome]

    @classmethod
    def refusal(cls, reason: str) -> Outcome:
        return cls("refused", reason)

    @property
    def refused(self) -> bool:
        return self.kind == "refused"


Outcome.DONE = Outcome("done")
Outcome.ALREADY_UNDONE = Outcome("undone")


def assemble(
    name: str,
    store: SqliteStore | None,
    schema: str,
    orchestrated: Callable[[Service[sqlite3.Connection]], None],
    choreographed: Callable[[Service[sqlite3.Connection]], None],
    *,
    partitions: int = 8,
    namespace: str = "",
    style: Style = "orchestration",
    tracing: Tracing | None = None,
) -> Service[sqlite3.Connection]:
    """A sample service on its store (default: ``NAME.sqlite3`` in the data directory),
    with the handlers of the chosen style."""
    store = store if store is not None else SqliteStore(f"{name}.sqlite3")
    store.add_schema(schema)
    # its handlers only read and write SQLite: on the loop, as a thread hop costs more
    service = Service(
        name,
        store,
        partitions=partitions,
        namespace=namespace,
        tracing=tracing,
        sync_handlers="inline",
    )
    (orchestrated if style == "orchestration" else choreographed)(service)
    return service

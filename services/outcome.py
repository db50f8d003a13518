"""What a business rule of a sample service decided, whichever style coordinates it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from sagakit import Service, SqliteStore
from sagakit.tracing import Tracing

from .db import Handlers, Store, store_for

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
    store: Store | None,
    schema: str,
    orchestrated: Callable[[Handlers], None],
    choreographed: Callable[[Handlers], None],
    *,
    partitions: int = 8,
    namespace: str = "",
    style: Style = "orchestration",
    tracing: Tracing | None = None,
) -> Service[Any]:
    """A sample service on its store (default: ``NAME.sqlite3`` in the data directory, or
    PostgreSQL with ``SAGAKIT_POSTGRES_DSN`` set; see `services.db`), with the handlers of the
    chosen style."""
    if store is None:
        store = store_for(name, schema)
    elif isinstance(store, SqliteStore):
        store.add_schema(schema)
    # on SQLite its handlers only read and write the file: on the loop, as a thread hop
    # costs more; on PostgreSQL they are bridged (services.db.Handlers)
    service = Service(
        name,
        store,
        partitions=partitions,
        namespace=namespace,
        tracing=tracing,
        sync_handlers="inline",
    )
    (orchestrated if style == "orchestration" else choreographed)(Handlers(service))
    return service

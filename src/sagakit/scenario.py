"""A scenario: how `sagakit demo`, `compare`, `chaos` and `bench` drive an app.

    class Transfers(Scenario):
        app = bank.app                      # the orchestrated app
        choreography = bank.choreography    # optional: the same flow by events (compare)

        def starts(self, count, *, seed, run, first=0):
            rng = random.Random(seed + first)
            return [Start(f"{run}-t{i}", Transfer(...)) for i in range(first, first + count)]

        def check(self, world, starts):
            return ["account a-1: balance -5"] if ... else []   # the violations

    scenario = Transfers()

    sagakit demo bank:scenario --count 100
    sagakit chaos bank:scenario --count 2000 --kill-every 2 --json

The tools run the app (in this process, or as processes), make `count` seeded start
requests, wait until every saga is settled, and report the outcomes, the latency and
the violations `check` finds in the business state. A scenario's stores must be ones
the driving process can read too (SQLite files under `world.data_dir`, a database):
`check` runs there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from ._client import SagaClient
from ._definition import Saga
from ._errors import SagaError
from ._evaluator import SagaInstance
from .transport._base import Transport

if TYPE_CHECKING:
    from ._app import App

Style = Literal["orchestration", "choreography"]


@dataclass(frozen=True, slots=True)
class Start:
    """One start request: the saga id, the initial state, and the saga (default: the
    app's only saga)."""

    saga_id: str
    state: BaseModel
    saga: Saga[Any] | None = None


@dataclass(frozen=True, slots=True)
class Ended:
    """How one business transaction ended, as the business state says (for choreography,
    which has no journal): its status, and when it started and ended (ms since the epoch)."""

    status: str
    started_ms: float | None = None
    ended_ms: float | None = None


@dataclass
class World:
    """What a scenario sees of one run: the app, where it runs and keeps its data."""

    app: App
    style: Style
    transport: Transport
    namespace: str
    run: str
    data_dir: Path
    instances: dict[str, SagaInstance] = field(default_factory=dict)
    """The sagas' instances once the run is over (orchestration; from the journal)."""

    @property
    def client(self) -> SagaClient:
        return SagaClient(self.transport, namespace=self.namespace)


class Scenario:
    """Subclass it: set `app` (and `choreography` for compare), write `starts` and `check`."""

    #: The orchestrated app.
    app: App
    #: The same business flow, choreographed (services reacting to events), for compare.
    choreography: App | None = None

    def starts(self, count: int, *, seed: int, run: str, first: int = 0) -> Sequence[Start]:
        """`count` start requests from `seed`, numbered from `first` (a long benchmark asks
        for more, batch after batch); saga ids must be unique per `run` and number."""
        raise NotImplementedError(f"{type(self).__name__} must define starts()")

    def prepare(self, world: World, starts: Sequence[Start]) -> None:
        """Before the components run: seed reference data (customers, stock, ...)."""

    async def start(self, world: World, starts: Sequence[Start]) -> None:
        """Start these (a batch). Default, orchestration: a start request per saga."""
        if world.style == "choreography":
            raise SagaError(
                f"{type(self).__name__} has a choreography app but no start(): it must say "
                "how a business transaction begins there (the event that starts it)"
            )
        by_saga: dict[str, tuple[Saga[Any], list[tuple[str, BaseModel]]]] = {}
        for s in starts:
            saga = s.saga or _only_saga(world.app)
            by_saga.setdefault(saga.name, (saga, []))[1].append((s.saga_id, s.state))
        for saga, items in by_saga.values():
            await world.client.start_many(saga, items)

    def outcomes(self, world: World, starts: Sequence[Start]) -> dict[str, Ended] | None:
        """How the business transactions ended so far, by saga id (the ended ones only).

        Needed for choreography; for orchestration the journal says, and returning None
        (the default) leaves it at that.
        """
        return None

    def check(self, world: World, starts: Sequence[Start]) -> list[str]:
        """The business invariants that do not hold after the run (empty: all hold)."""
        raise NotImplementedError(f"{type(self).__name__} must define check()")


def _only_saga(app: App) -> Saga[Any]:
    if len(app.sagas) != 1:
        raise SagaError(
            f"app {app.name!r} has {len(app.sagas)} sagas: each Start must name its saga"
        )
    return app.sagas[0]

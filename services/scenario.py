"""The place-order scenario: what `sagakit demo|compare|chaos|bench services.scenario:place_order`
drives. Orders with a seeded failure mix (credit, stock, shipping), placed through the
orders service, checked against credit, stock and shipments afterwards."""

from __future__ import annotations

from collections.abc import Sequence

from sagakit import Ended, SagaStatus, Scenario, Start, World

from . import app as sample
from .orders.service import NewOrder, OrdersApp, saga_state
from .system import check_consistency, make_orders, seed_reference, system_of

DEFAULT_MIX = "credit=0.1,stock=0.1,shipping=0.05"


def parse_mix(text: str) -> dict[str, float]:
    """``credit=0.1,stock=0.1,shipping=0.05`` -> {"credit": 0.1, ...}."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"failure mix entry {part!r} is not name=share")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"failure mix share {value!r} of {name!r} is not a number") from None
    return mix


class PlaceOrder(Scenario):
    """Orders of a seeded failure mix, e.g. ``--option failure_mix=credit=0.2``."""

    app = sample.app
    choreography = sample.choreography

    def __init__(self, failure_mix: str = DEFAULT_MIX) -> None:
        self.mix = parse_mix(failure_mix)
        self._orders: dict[str, NewOrder] = {}

    def orders_app(self, world: World) -> OrdersApp:
        return sample.orders if world.app is sample.app else sample.choreographed_orders

    def starts(self, count: int, *, seed: int, run: str, first: int = 0) -> list[Start]:
        orders = make_orders(count, seed=seed + first, run=run, mix=self.mix, start=first)
        self._orders.update((o.order_id, o) for o in orders)
        return [Start(o.order_id, saga_state(o)) for o in orders]

    def prepare(self, world: World, starts: Sequence[Start]) -> None:
        for name in ("payments", "inventory", "shipping"):
            seed_reference(name, world.app.service(name).store.connection, world.run)  # type: ignore[attr-defined]

    async def start(self, world: World, starts: Sequence[Start]) -> None:
        # as the orders service's API does: the order is created PENDING, then its saga
        # is started (orchestration) or OrderCreated published (choreography)
        await self.orders_app(world).place(
            world.transport, [self._orders[s.saga_id] for s in starts]
        )

    def outcomes(self, world: World, starts: Sequence[Start]) -> dict[str, Ended]:
        return {
            row.order_id: Ended(row.status, row.created_ms, row.ended_ms)
            for row in self.orders_app(world).repository.all()
            if row.status in ("APPROVED", "REJECTED")
        }

    def check(self, world: World, starts: Sequence[Start]) -> list[str]:
        system = system_of(world.app, self.orders_app(world))
        violations = check_consistency(system)
        rows = system.orders.repository.all()
        placed = {o.order_id for o in rows}
        missing = [s.saga_id for s in starts if s.saga_id not in placed]
        violations.extend(f"order {m} was never placed" for m in missing[:20])
        if world.instances:  # orchestration: the journal must agree with the orders
            expected = {"APPROVED": SagaStatus.COMPLETED, "REJECTED": SagaStatus.COMPENSATED}
            for o in rows:
                instance = world.instances.get(o.order_id)
                if instance is not None and expected.get(o.status) is not instance.status:
                    violations.append(
                        f"saga {o.order_id}: journal says {instance.status.value}, "
                        f"order is {o.status}"
                    )
        return violations


def place_order(failure_mix: str = DEFAULT_MIX) -> PlaceOrder:
    """The scenario, with a failure mix (`--option failure_mix=credit=0.2,stock=0`)."""
    return PlaceOrder(failure_mix)


def bench() -> PlaceOrder:
    """What `make bench` measures: orders that all succeed (five steps each)."""
    return PlaceOrder("credit=0,stock=0,shipping=0")


scenario = PlaceOrder()

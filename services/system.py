"""The sample system assembled: four services, their stores and the consistency check."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagakit import App, Service, SqliteStore
from sagakit.tracing import Tracing
from services.db import Connection

from .inventory import service as inventory
from .orders.service import NewOrder, OrderRepository, OrdersApp
from .outcome import Style
from .payments import service as payments
from .shipping import service as shipping

RICH_CREDIT = 1_000_000_000
POOR_CREDIT = 10
PLENTY = 1_000_000
BLOCKED_REGION = "Atlantis"
FAILURE_KINDS = ("credit", "stock", "shipping")
#: The prefix of the reference data PLACE_ORDER_DEMO_DATA=1 seeds (and the load
#: generator's orders use).
DEMO_RUN = "demo"


@dataclass
class SampleSystem:
    """The four services of one style, and their stores (SQLite connections)."""

    orders: OrdersApp
    payments: Service[sqlite3.Connection]
    inventory: Service[sqlite3.Connection]
    shipping: Service[sqlite3.Connection]

    def services(self) -> list[Service[sqlite3.Connection]]:
        return [self.orders.service, self.payments, self.inventory, self.shipping]

    def db(self, name: str) -> sqlite3.Connection:
        service = next(s for s in self.services() if s.name == name)
        store = service.store
        assert isinstance(store, SqliteStore)
        return store.connection

    def close(self) -> None:
        for service in self.services():
            store = service.store
            if isinstance(store, SqliteStore):
                store.close()


def build_system(
    *,
    db_dir: Path | None = None,
    partitions: int = 8,
    namespace: str = "",
    style: Style = "orchestration",
    on_ended: Callable[[str, str], None] | None = None,
    tracing: Callable[[str], Tracing] | None = None,
) -> SampleSystem:
    """The four services, each with its own SQLite database (files in `db_dir`, else memory)."""

    def store(name: str) -> SqliteStore:
        return SqliteStore(db_dir / f"{name}.sqlite3" if db_dir is not None else ":memory:")

    options: dict[str, Any] = {"partitions": partitions, "namespace": namespace, "style": style}
    traced = tracing or (lambda _name: Tracing.disabled())
    return SampleSystem(
        orders=OrdersApp(
            store("orders"),
            partitions=partitions,
            namespace=namespace,
            style=style,
            on_ended=on_ended,
            tracing=traced("orders"),
        ),
        payments=payments.build(store("payments"), tracing=traced("payments"), **options),
        inventory=inventory.build(store("inventory"), tracing=traced("inventory"), **options),
        shipping=shipping.build(store("shipping"), tracing=traced("shipping"), **options),
    )


def system_of(app: App, orders: OrdersApp) -> SampleSystem:
    """The sample system an app runs (`orders` is its orders service's app)."""
    return SampleSystem(
        orders=orders,
        payments=app.service("payments"),
        inventory=app.service("inventory"),
        shipping=app.service("shipping"),
    )


DEFAULT_MIX = {"credit": 0.1, "stock": 0.1, "shipping": 0.1}


def seed_reference(name: str, db: Connection, run: str) -> None:
    """The reference data one service needs for the sample orders of `run`."""
    if name == "payments":
        credit = payments.CreditRepository(db)
        credit.add_customer(f"{run}-cust-rich-1", RICH_CREDIT)
        credit.add_customer(f"{run}-cust-rich-2", RICH_CREDIT)
        credit.add_customer(f"{run}-cust-poor", POOR_CREDIT)
    elif name == "inventory":
        stock = inventory.StockRepository(db)
        for product in ("a", "b"):
            if stock.stock(f"{run}-prod-{product}") == 0:  # keep what a restart left
                stock.add_product(f"{run}-prod-{product}", PLENTY)
        stock.add_product(f"{run}-prod-gone", 0)
    elif name == "shipping":
        shipping.ShipmentRepository(db).block_region(BLOCKED_REGION)


def make_orders(
    count: int, *, seed: int, run: str, mix: dict[str, float] | None = None, start: int = 0
) -> list[NewOrder]:
    """`count` orders with the given failure mix (see `seed_orders`)."""
    shares = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(shares) - set(FAILURE_KINDS)
    if unknown or any(not 0 <= v <= 1 for v in shares.values()) or sum(shares.values()) > 1:
        raise ValueError(
            f"failure mix {shares} must give shares in [0, 1] of {', '.join(FAILURE_KINDS)}, "
            "adding up to at most 1"
        )
    kinds = [k for k in FAILURE_KINDS if shares.get(k, 0) > 0]
    weights = [1 - sum(shares.values()), *(shares[k] for k in kinds)]
    rng = random.Random(seed)
    orders = []
    for i in range(start, start + count):
        kind = kinds[i] if i < len(kinds) else rng.choices(("ok", *kinds), weights=weights)[0]
        customer = (
            f"{run}-cust-poor" if kind == "credit" else f"{run}-cust-rich-{rng.randint(1, 2)}"
        )
        product = f"{run}-prod-gone" if kind == "stock" else f"{run}-prod-{rng.choice('ab')}"
        region = BLOCKED_REGION if kind == "shipping" else rng.choice(("Lisbon", "Porto", "Faro"))
        quantity = rng.randint(1, 5)
        orders.append(
            NewOrder(
                order_id=f"{run}-order-{i:06d}",
                customer_id=customer,
                product_id=product,
                quantity=quantity,
                amount=quantity * rng.randint(100, 5_000),
                address=f"{rng.randint(1, 200)} Main Street, {region}",
            )
        )
    return orders


def seed_orders(
    system: SampleSystem,
    count: int,
    *,
    seed: int,
    run: str,
    mix: dict[str, float] | None = None,
) -> list[NewOrder]:
    """Reference data and `count` orders with the given failure mix.

    `mix` gives the share of orders failing on credit, stock and shipping (default 10 %
    each); the first orders take each failure kind of the mix once, so every failure path
    happens. Whether an order fails does not depend on which order is processed first: a
    credit failure uses a customer whose limit is below any order, a stock failure a
    product with no stock, a shipping failure an undeliverable region. So both
    coordination styles must reach the same outcome for the same seed.
    """
    for name in ("payments", "inventory", "shipping"):
        seed_reference(name, system.db(name), run)
    return make_orders(count, seed=seed, run=run, mix=mix)


def check_consistency(system: SampleSystem) -> list[str]:
    """Violations of the business invariants of a system on SQLite (see `violations`)."""
    return violations(system.db)


def violations(db: Callable[[str], Connection]) -> list[str]:
    """Violations of the business invariants; an empty list means consistent. `db(name)`
    is the connection of service `name` (SQLite, or `services.db.PostgresConnection`).

    Every order ended; credit held equals approved amounts per customer; stock
    reserved equals approved quantities per product and none is negative; one
    shipment per approved order and none for rejected ones; no effect applied twice.
    """
    violations: list[str] = []
    orders = OrderRepository(db("orders")).all()
    approved = [o for o in orders if o.status == "APPROVED"]
    for o in orders:
        if o.status not in ("APPROVED", "REJECTED"):
            violations.append(f"order {o.order_id} is {o.status}, not ended")

    credit = payments.CreditRepository(db("payments"))
    held = credit.held_by_customer()
    owed: Counter[str] = Counter()
    for o in approved:
        owed[o.customer_id] += o.amount
    for customer in sorted(set(held) | set(owed)):
        if held.get(customer, 0) != owed.get(customer, 0):
            violations.append(
                f"customer {customer}: credit held {held.get(customer, 0)}, "
                f"approved orders total {owed.get(customer, 0)}"
            )

    stock = inventory.StockRepository(db("inventory"))
    reserved = stock.reserved_by_product()
    wanted: Counter[str] = Counter()
    for o in approved:
        wanted[o.product_id] += o.quantity
    for product, (left, initial) in sorted(stock.products().items()):
        if left < 0:
            violations.append(f"product {product}: stock is negative ({left})")
        if reserved.get(product, 0) != wanted.get(product, 0):
            violations.append(
                f"product {product}: {reserved.get(product, 0)} reserved, "
                f"approved orders need {wanted.get(product, 0)}"
            )
        if left + reserved.get(product, 0) != initial:
            violations.append(f"product {product}: stock leaked ({left} + reserved != {initial})")

    shipped = shipping.ShipmentRepository(db("shipping")).shipments_per_order()
    for o in orders:
        n = shipped.get(o.order_id, 0)
        if o.status == "APPROVED" and n != 1:
            violations.append(f"order {o.order_id} is APPROVED with {n} shipments")
        if o.status == "REJECTED" and n != 0:
            violations.append(f"order {o.order_id} is REJECTED with {n} shipments")

    for name, per_order in (
        ("credit reservation", credit.reservations_per_order()),
        ("stock reservation", stock.reservations_per_order()),
    ):
        for order_id, n in per_order.items():
            if n > 1:
                violations.append(f"order {order_id}: {n} {name}s (effect applied twice)")
    return violations

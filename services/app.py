"""The place-order sample as apps: what `sagakit run services.app:app` runs.

    app           orchestrated: the place-order saga, and the four services
    choreography  the same flow with no orchestrator: services reacting to events

Each service keeps its SQLite file (``orders.sqlite3``, ...) in the data directory
(``sagakit run --data-dir``, default: the current one), or with ``SAGAKIT_POSTGRES_DSN``
set, its tables in that PostgreSQL database (`services.db`; docker-compose and deploy/ do
this). PLACE_ORDER_DEMO_DATA=1 seeds
the reference data the load generator's orders use (customers, products, regions);
PLACE_ORDER_DEADLINE_S sets when a choreographed order with no outcome expires.
"""

from __future__ import annotations

import os
from typing import Any

from sagakit import App, PostgresStore, Service, SqliteStore, Transport

from .db import in_transaction
from .inventory import service as inventory
from .orders.saga import place_order, place_order_v2
from .orders.service import OrdersApp
from .outcome import Style
from .payments import service as payments
from .shipping import service as shipping

DEMO_DATA = os.environ.get("PLACE_ORDER_DEMO_DATA", "").strip().lower() in ("1", "true", "yes")
ORDER_DEADLINE_S = float(os.environ.get("PLACE_ORDER_DEADLINE_S", "60"))
#: Approve large orders at once (0: they wait for a person, `sagakit sagas signal`).
AUTO_APPROVE = os.environ.get("PLACE_ORDER_AUTO_APPROVE", "1").strip().lower() in ("1", "true")
#: The prefix of the reference data PLACE_ORDER_DEMO_DATA seeds (the load generator's).
DEMO_RUN = "demo"


def services(style: Style) -> tuple[OrdersApp, list[Service[Any]]]:
    """The orders app and the four services of `style`, each on its SQLite file (or its
    PostgreSQL database, with ``SAGAKIT_POSTGRES_DSN`` set)."""
    orders = OrdersApp(style=style, order_deadline_s=ORDER_DEADLINE_S, auto_approve=AUTO_APPROVE)
    built = [
        orders.service,
        payments.build(style=style),
        inventory.build(style=style),
        shipping.build(style=style),
    ]
    if DEMO_DATA:
        for service in built:
            service.task(_seeder(service))
    return orders, built


def _seeder(service: Service[Any]) -> Any:
    async def seed(transport: Transport) -> None:
        from .system import seed_reference

        store = service.store
        assert isinstance(store, (SqliteStore, PostgresStore))
        await in_transaction(store, lambda db: seed_reference(service.name, db, DEMO_RUN))

    return seed


orders, _orchestrated = services("orchestration")
# both versions: new orders start on version 2, sagas started on version 1 finish on it
app = App("place-order", sagas=[place_order, place_order_v2], services=_orchestrated)

choreographed_orders, _choreographed = services("choreography")
choreography = App("place-order-choreography", services=_choreographed)

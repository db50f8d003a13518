"""The sample's load generator: sample orders at a rate, through the orders service's HTTP
API (what docker-compose and deploy/ run: ``python -m services.load``).

The orders use the reference data PLACE_ORDER_DEMO_DATA=1 seeds in each service.
"""

from __future__ import annotations

import logging
import signal
import uuid
from dataclasses import asdict
from typing import Annotated

import aiohttp
import anyio
import typer

from sagakit._logging import configure_logging

from .scenario import DEFAULT_MIX, parse_mix
from .system import DEMO_RUN, make_orders

log = logging.getLogger("services.load")


def load(
    orders_url: Annotated[
        str, typer.Option(envvar="SAGAKIT_ORDERS_URL", help="The orders service's POST /orders.")
    ] = "http://localhost:8080/orders",
    rate: Annotated[float, typer.Option(min=0.1, help="Orders per second.")] = 5.0,
    count: Annotated[int, typer.Option(min=0, help="Orders in all (0: until stopped).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the order mix.")] = 7,
    failure_mix: Annotated[
        str, typer.Option(help="Share of orders failing on credit, stock and shipping.")
    ] = DEFAULT_MIX,
    log_format: Annotated[str, typer.Option(envvar="SAGAKIT_LOG_FORMAT")] = "text",
) -> None:
    """Place sample orders at RATE per second through the orders service's HTTP API."""
    configure_logging(True, log_format)
    mix = parse_mix(failure_mix)
    session_id = uuid.uuid4().hex[:6]

    async def stop_on_signals(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                scope.cancel()
                return

    async def main() -> None:
        tick = 0.2
        placed = 0
        carry = 0.0
        async with aiohttp.ClientSession() as http, anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signals, tg.cancel_scope)
            while count == 0 or placed < count:
                carry += rate * tick
                n = int(carry)
                carry -= n
                if count:
                    n = min(n, count - placed)
                if n:
                    batch = make_orders(n, seed=seed + placed, run=DEMO_RUN, mix=mix, start=placed)
                    body = {
                        "orders": [
                            {**asdict(o), "order_id": f"{DEMO_RUN}-{session_id}-{placed + i}"}
                            for i, o in enumerate(batch)
                        ]
                    }
                    try:
                        async with http.post(orders_url, json=body) as response:
                            if response.status != 202:
                                text = await response.text()
                                log.warning("POST %s: %s %s", orders_url, response.status, text)
                            else:
                                placed += n
                    except aiohttp.ClientError as exc:
                        log.warning("POST %s failed: %s (retrying)", orders_url, exc)
                await anyio.sleep(tick)
            log.info("placed %d orders", placed)
            tg.cancel_scope.cancel()

    anyio.run(main)


if __name__ == "__main__":
    typer.run(load)

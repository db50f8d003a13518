"""The orders service's HTTP API: POST /orders places orders (what the load generator
and people call); the order's saga, or its choreography, takes it from there."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from sagakit import Transport

from .service import NewOrder, OrdersApp


class OrderRequest(BaseModel):
    order_id: str = Field(default_factory=lambda: f"order-{uuid.uuid4().hex[:12]}")
    customer_id: str
    product_id: str
    quantity: int = Field(gt=0)
    amount: int = Field(gt=0)
    address: str


def json_error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps({"error": message}), content_type="application/json"
    )


async def place_request(app: OrdersApp, transport: Transport, request: web.Request) -> web.Response:
    """POST /orders: one order (an object), or several (``{"orders": [...]}`` or a list)."""
    try:
        body: Any = await request.json()
    except json.JSONDecodeError as exc:
        return json_error(400, f"body is not JSON: {exc}")
    items = body.get("orders", [body]) if isinstance(body, dict) else body
    try:
        orders = [OrderRequest.model_validate(item) for item in items]
    except (ValidationError, TypeError) as exc:
        return json_error(400, f"not an order: {exc}")
    await app.place(transport, [NewOrder(**o.model_dump()) for o in orders])
    return web.json_response({"order_ids": [o.order_id for o in orders]}, status=202)

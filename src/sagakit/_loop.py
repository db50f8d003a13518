"""Running sagakit's event loop: asyncio, or uvloop when SAGAKIT_UVLOOP=1 asks for it."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from ._errors import SagaError

T = TypeVar("T")


def uvloop_wanted() -> bool:
    return os.environ.get("SAGAKIT_UVLOOP", "").strip().lower() in ("1", "true", "yes")


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`anyio.run` on asyncio, with uvloop's event loop if SAGAKIT_UVLOOP=1."""
    options: dict[str, Any] = {}
    if uvloop_wanted():
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise SagaError("SAGAKIT_UVLOOP=1 needs uvloop: pip install 'sagakit[fast]'") from None
        options["use_uvloop"] = True
    return anyio.run(fn, *args, backend="asyncio", backend_options=options)

"""Testing sagas and services: in memory, on virtual time, one handler at a time.

- `SagaTestEnvironment`: orchestrators and services on an in-memory broker and a
  `VirtualClock`; `settle()` lets everything happen that can without time passing,
  `advance(seconds)` fires every timeout, back-off and deadline that falls due, in order.
- `ServiceHarness`: one service's handlers called with a command (or an event), their
  reply and their store at hand.
- `isolated_registry()`: message models defined inside are forgotten afterwards.
- The pytest plugin (`sagakit.testing.pytest_plugin`, loaded by pytest on its own) gives
  the fixtures `saga_env`, `service_harness` and `anyio_backend`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._messages import _REGISTRY
from ._clock import VirtualClock
from ._environment import SagaTestEnvironment
from ._harness import DeadLettered, ServiceHarness


@contextmanager
def isolated_registry() -> Iterator[None]:
    """Message types registered inside the block are unregistered after it (for tests
    that define throwaway models, perhaps with a type another test uses too)."""
    saved = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


__all__ = (
    "DeadLettered",
    "SagaTestEnvironment",
    "ServiceHarness",
    "VirtualClock",
    "isolated_registry",
)

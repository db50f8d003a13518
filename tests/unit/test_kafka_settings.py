"""Client settings for a secured Kafka reach every aiokafka client, from code or from the
environment, and what cannot work is refused when the settings are made."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from sagakit import KafkaSettings, TransportError
from sagakit.transport._settings import ENV


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def test_plain_by_default() -> None:
    options = KafkaSettings("k:9092").client_options()
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options and "sasl_mechanism" not in options


def test_the_protocol_follows_from_what_is_given(ca_file: str) -> None:
    assert KafkaSettings("k:1", ssl_cafile=ca_file).protocol == "SSL"
    sasl = {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"}
    assert KafkaSettings("k:1", **sasl).protocol == "SASL_PLAINTEXT"
    assert KafkaSettings("k:1", ssl_cafile=ca_file, **sasl).protocol == "SASL_SSL"
    # Confluent Cloud: the system's CAs, nothing to give but the protocol
    cloud = KafkaSettings("k:1", security_protocol="SASL_SSL", **sasl)
    assert isinstance(cloud.client_options()["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_settings_reach_the_client(mechanism: str, ca_file: str) -> None:
    settings = KafkaSettings(
        "k:9093",
        ssl_cafile=ca_file,
        sasl_mechanism=mechanism,
        sasl_username="shop",
        sasl_password="secret",
        ssl_check_hostname=False,
    )
    options = settings.client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("shop", "secret")
    context = options["ssl_context"]
    assert context.check_hostname is False and context.verify_mode is ssl.CERT_REQUIRED
    assert any(c["subject"] for c in context.get_ca_certs())  # the given CA is loaded
    assert "secret" not in repr(settings) and "secret" not in settings.describe()


def test_oauthbearer_takes_a_token_provider() -> None:
    from aiokafka.abc import AbstractTokenProvider

    class Tokens(AbstractTokenProvider):
        async def token(self) -> str:
            return "t"

    provider = Tokens()
    settings = KafkaSettings(
        "k:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_provider=provider,
    )
    assert settings.client_options()["sasl_oauth_token_provider"] is provider
    with pytest.raises(TransportError, match="needs a sasl_oauth_token_provider"):
        KafkaSettings("k:1", sasl_mechanism="OAUTHBEARER")


def test_the_environment_gives_the_same_settings(ca_file: str) -> None:
    env = {
        ENV["ssl_cafile"]: ca_file,
        ENV["sasl_mechanism"]: "SCRAM-SHA-512",
        ENV["sasl_username"]: "shop",
        ENV["sasl_password"]: "secret",
        ENV["ssl_check_hostname"]: "false",
    }
    settings = KafkaSettings.from_env("k:9093", env=env, client_id="x")
    assert settings.protocol == "SASL_SSL" and settings.client_id == "x"
    assert (settings.sasl_mechanism, settings.sasl_username) == ("SCRAM-SHA-512", "shop")
    assert settings.ssl_check_hostname is False
    embedded = KafkaSettings.from_env("k:1", embedded=True, env={})
    assert embedded.fetch_max_wait_ms == KafkaSettings.embedded("k:1").fetch_max_wait_ms


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"security_protocol": "TLS"}, "is not one of PLAINTEXT"),
        ({"sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"}, "not one of"),
        ({"sasl_mechanism": "PLAIN"}, "needs sasl_username and sasl_password"),
        ({"security_protocol": "SASL_SSL"}, "needs a sasl_mechanism"),
        ({"ssl_cafile": "/nowhere/ca.pem"}, "is not a file"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_once(options: dict[str, str], error: str) -> None:
    with pytest.raises(TransportError, match=error):
        KafkaSettings("k:1", **options)  # type: ignore[arg-type]

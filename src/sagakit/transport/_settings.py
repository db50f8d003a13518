"""Client settings for Kafka: timing profiles, and TLS and SASL for a secured cluster.

    KafkaSettings("broker:9093", security_protocol="SASL_SSL", ssl_cafile="ca.pem",
                  sasl_mechanism="SCRAM-SHA-512", sasl_username="shop", sasl_password="...")

    KafkaSettings.from_env("broker:9093")   # the same from SAGAKIT_SSL_* / SAGAKIT_SASL_*

Confluent Cloud is ``SASL_SSL`` with ``PLAIN`` (an API key and secret); Amazon MSK is
``SASL_SSL`` with ``SCRAM-SHA-512``, or ``SSL`` with a client certificate.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider

from .._errors import TransportError
from ._base import MAX_RECORD_BYTES

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")

#: The environment variables `from_env` reads (and the CLI's options set).
ENV = {
    "security_protocol": "SAGAKIT_SECURITY_PROTOCOL",
    "ssl_cafile": "SAGAKIT_SSL_CA_FILE",
    "ssl_certfile": "SAGAKIT_SSL_CERT_FILE",
    "ssl_keyfile": "SAGAKIT_SSL_KEY_FILE",
    "ssl_key_password": "SAGAKIT_SSL_KEY_PASSWORD",
    "ssl_check_hostname": "SAGAKIT_SSL_CHECK_HOSTNAME",
    "sasl_mechanism": "SAGAKIT_SASL_MECHANISM",
    "sasl_username": "SAGAKIT_SASL_USERNAME",
    "sasl_password": "SAGAKIT_SASL_PASSWORD",
}


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Client settings. `embedded()` gives the profile for the embedded broker.

    The embedded broker holds every fetch for the whole ``fetch_max_wait_ms`` and
    needs a few milliseconds there; a real Kafka answers a fetch as soon as data
    arrives, so the default can stay higher.

    Security: `security_protocol` (default: ``SASL_SSL`` when a SASL mechanism and TLS
    files are given, ``SASL_PLAINTEXT`` for SASL alone, ``SSL`` for TLS files alone,
    else ``PLAINTEXT``); TLS with `ssl_cafile` (the CA that signed the brokers'
    certificates; default: the system's), a client certificate (`ssl_certfile`,
    `ssl_keyfile`, `ssl_key_password`) and `ssl_check_hostname`; SASL with
    `sasl_mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 with `sasl_username` and
    `sasl_password`; OAUTHBEARER with `sasl_oauth_token_provider`, an aiokafka
    ``AbstractTokenProvider``).
    """

    bootstrap_servers: str
    client_id: str = "sagakit"
    fetch_max_wait_ms: int = 100
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    linger_ms: int = 0
    max_batch_size: int = 256 * 1024
    acks: int | str = "all"
    request_timeout_ms: int = 30_000
    max_request_size: int = MAX_RECORD_BYTES
    security_protocol: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    sasl_oauth_token_provider: AbstractTokenProvider | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.security_protocol is not None and self.security_protocol not in PROTOCOLS:
            raise TransportError(
                f"security_protocol {self.security_protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        if self.sasl_mechanism is not None:
            if self.sasl_mechanism not in MECHANISMS:
                raise TransportError(
                    f"sasl_mechanism {self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}"
                )
            if self.sasl_mechanism == "OAUTHBEARER":
                if self.sasl_oauth_token_provider is None:
                    raise TransportError(
                        "sasl_mechanism OAUTHBEARER needs a sasl_oauth_token_provider"
                    )
            elif not self.sasl_username or self.sasl_password is None:
                raise TransportError(
                    f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and sasl_password"
                )
        elif self.protocol.startswith("SASL"):
            raise TransportError(f"security_protocol {self.protocol} needs a sasl_mechanism")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise TransportError(f"{name} {path!r} is not a file")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None) and self.ssl_keyfile:
            raise TransportError("ssl_keyfile needs ssl_certfile (the client certificate)")

    @classmethod
    def embedded(cls, bootstrap_servers: str, **overrides: Any) -> KafkaSettings:
        profile = cls(
            bootstrap_servers,
            fetch_max_wait_ms=5,
            session_timeout_ms=3_000,
            heartbeat_interval_ms=500,
        )
        return replace(profile, **overrides)

    @classmethod
    def from_env(
        cls,
        bootstrap_servers: str,
        *,
        embedded: bool = False,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> KafkaSettings:
        """Settings with TLS and SASL from the SAGAKIT_SSL_* / SAGAKIT_SASL_* variables
        (`ENV`); `embedded` starts from the embedded broker's profile."""
        source = os.environ if env is None else env
        found: dict[str, Any] = {}
        for name, var in ENV.items():
            value = source.get(var)
            if value is None or value == "":
                continue
            if name == "ssl_check_hostname":
                found[name] = value.strip().lower() not in ("0", "false", "no")
            else:
                found[name] = value
        found.update(overrides)
        if embedded:
            return cls.embedded(bootstrap_servers, **found)
        return cls(bootstrap_servers, **found)

    @property
    def protocol(self) -> str:
        """The security protocol in effect (given, or what the other settings imply)."""
        if self.security_protocol is not None:
            return self.security_protocol
        tls = any((self.ssl_cafile, self.ssl_certfile))
        if self.sasl_mechanism is not None:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else "PLAINTEXT"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the protocol in effect (None for a plain connection)."""
        if not self.protocol.endswith("SSL"):
            return None
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile is not None:
                context.load_cert_chain(
                    self.ssl_certfile, self.ssl_keyfile, password=self.ssl_key_password
                )
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot load the TLS files: {exc}") from exc
        context.check_hostname = self.ssl_check_hostname
        if not self.ssl_check_hostname:
            context.verify_mode = ssl.CERT_REQUIRED  # the certificate still counts
        return context

    def client_options(self) -> dict[str, Any]:
        """What every aiokafka client (producer, consumer, admin) is given."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.protocol,
        }
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                options["sasl_oauth_token_provider"] = self.sasl_oauth_token_provider
            else:
                options["sasl_plain_username"] = self.sasl_username
                options["sasl_plain_password"] = self.sasl_password
        return options

    def describe(self) -> str:
        """Where and how this connects, for error messages (no secrets)."""
        how = self.protocol
        if self.sasl_mechanism is not None:
            how += f" {self.sasl_mechanism}"
            if self.sasl_username:
                how += f" as {self.sasl_username!r}"
        return f"{self.bootstrap_servers} ({how})"

"""Why a Kafka client could not bootstrap, in words a person can act on.

aiokafka reports every failure to bootstrap as ``Unable to bootstrap from [...]`` and logs
the cause; this opens one connection to the first bootstrap server with the same
settings and names what went wrong: nothing listening, a certificate the CA does not
vouch for, a TLS listener reached without TLS, refused credentials.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from ._settings import KafkaSettings


def _first_server(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "localhost", int(port or 9092)


async def diagnose(settings: KafkaSettings) -> str:
    """The cause of a failure to reach `settings.bootstrap_servers`, as a sentence."""
    try:
        host, port = _first_server(settings.bootstrap_servers)
    except ValueError:
        return f"{settings.bootstrap_servers!r} is not host:port[,host:port...]"
    options = settings.client_options()
    options.pop("bootstrap_servers")
    options["request_timeout_ms"] = min(settings.request_timeout_ms, 10_000)
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(15):
            conn = await create_conn(host, port, **options)
        conn.close()
    except ssl.SSLCertVerificationError as exc:
        return (
            f"TLS: the certificate of {where} was not accepted ({exc.verify_message}): "
            "is ssl_cafile (SAGAKIT_SSL_CA_FILE) the CA that signed it, and does it name "
            "the host you connect to (ssl_check_hostname)?"
        )
    except ssl.SSLError as exc:
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    except SaslAuthenticationFailed as exc:
        return (
            f"SASL {settings.sasl_mechanism} authentication as {settings.sasl_username!r} "
            f"failed at {where}: {exc.args[0] if exc.args else exc}; check the username "
            "and password (SAGAKIT_SASL_USERNAME, SAGAKIT_SASL_PASSWORD)"
        )
    except UnsupportedSaslMechanismError as exc:
        return f"SASL at {where}: {exc}"
    except KafkaConnectionError as exc:
        if settings.protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
            return (
                f"{where} closed the connection ({exc}): is it a TLS listener? then set "
                "security_protocol SSL or SASL_SSL (and ssl_cafile)"
            )
        return f"{where} closed the connection: {exc}"
    except ConnectionRefusedError:
        return f"nothing accepts connections at {where} (is the broker running, the port right?)"
    except TimeoutError:
        return f"{where} did not answer within {options['request_timeout_ms'] / 1000:.0f}s"
    except OSError as exc:
        return f"cannot connect to {where}: {exc}"
    except KafkaError as exc:
        return f"{where} refused the connection: {exc!r}"
    return (
        f"{where} accepts the connection with these settings; another bootstrap server or "
        "the broker's advertised address may be unreachable"
    )

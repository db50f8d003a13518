"""A secured front for the embedded broker: TLS termination and SASL authentication (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512), then every byte passed through.

The embedded broker speaks plain Kafka only; this proxy does what a secured Kafka
listener does before it serves a client — the TLS handshake, then ``SaslHandshake`` and
``SaslAuthenticate`` (RFC 5802 for SCRAM) — so the clients under test go through real TLS
and real SASL exchanges. The broker must advertise the proxy's address, so that clients
reconnect through it after bootstrap.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
from collections.abc import Mapping

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58


def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


class _Scram:
    """The server side of one SCRAM exchange (RFC 5802)."""

    def __init__(self, mechanism: str, users: Mapping[str, str]) -> None:
        self.hash = "sha256" if mechanism.endswith("256") else "sha512"
        self.users = users
        self.state = "first"
        self.auth_message = b""
        self.salted = b""

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash).digest()

    def step(self, data: bytes) -> bytes:
        """The server's answer to a client message; ValueError if authentication fails."""
        text = data.decode()
        if self.state == "first":
            bare = text.split(",", 2)[2]  # after the GS2 header "n,,"
            fields = dict(f.split("=", 1) for f in bare.split(","))
            password = self.users.get(fields["n"])
            if password is None:
                raise ValueError("unknown user")
            salt, iterations = os.urandom(16), 4096
            self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            self.salted = hashlib.pbkdf2_hmac(self.hash, password.encode(), salt, iterations)
            server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={iterations}"
            self.auth_message = f"{bare},{server_first}".encode()
            self.state = "final"
            return server_first.encode()
        if self.state == "final":
            without_proof, _, proof = text.rpartition(",p=")
            fields = dict(f.split("=", 1) for f in without_proof.split(","))
            if fields.get("r") != self.nonce:
                raise ValueError("nonce mismatch")
            self.auth_message += f",{without_proof}".encode()
            client_key = self._hmac(self.salted, b"Client Key")
            stored_key = hashlib.new(self.hash, client_key).digest()
            signature = self._hmac(stored_key, self.auth_message)
            given = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
            if hashlib.new(self.hash, given).digest() != stored_key:
                raise ValueError("invalid credentials")
            server_key = self._hmac(self.salted, b"Server Key")
            self.state = "done"
            signature = base64.b64encode(self._hmac(server_key, self.auth_message))
            return b"v=" + signature
        raise ValueError("exchange already complete")


class SecureProxy:
    """Listen on `port` (TLS if `ssl_context`), authenticate (if `users`), relay to upstream."""

    def __init__(
        self,
        upstream_port: int,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        users: Mapping[str, str] | None = None,
        mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = (host, upstream_port)
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.users = dict(users) if users is not None else None
        self.mechanisms = mechanisms
        self.authenticated = 0
        self.refused = 0
        self.errors: list[str] = []
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.ssl_context
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            self.errors.append(f"upstream {self.upstream}: {exc!r}")
            writer.close()
            return
        try:
            if self.users is None or await self._authenticate(reader, writer, up_reader, up_writer):
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as exc:
            self.errors.append(repr(exc))
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            request = await reader.readexactly(size)
            api_key, version, correlation = struct.unpack(">hhi", request[:8])
            (client_len,) = struct.unpack(">h", request[8:10])
            body = request[10 + max(client_len, 0) :]
            header = struct.pack(">i", correlation)
            if api_key == API_VERSIONS:  # the broker's own answer
                up_writer.write(struct.pack(">i", size) + request)
                await up_writer.drain()
                (rsize,) = struct.unpack(">i", await up_reader.readexactly(4))
                writer.write(struct.pack(">i", rsize) + await up_reader.readexactly(rsize))
                await writer.drain()
                continue
            if api_key == SASL_HANDSHAKE:
                (n,) = struct.unpack(">h", body[:2])
                mechanism = body[2 : 2 + n].decode()
                error = 0 if mechanism in self.mechanisms else UNSUPPORTED_SASL_MECHANISM
                reply = struct.pack(">hi", error, len(self.mechanisms))
                reply += b"".join(_string(m) for m in self.mechanisms)
                self._send(writer, header + reply)
                if error:
                    return False
                if mechanism.startswith("SCRAM"):
                    assert self.users is not None
                    scram = _Scram(mechanism, self.users)
                continue
            if api_key != SASL_AUTHENTICATE or mechanism is None:
                self.errors.append(f"request {api_key} v{version} before authentication")
                return False  # a real broker closes an unauthenticated connection
            (n,) = struct.unpack(">i", body[:4])
            token = body[4 : 4 + n]
            try:
                if scram is not None:
                    answer = scram.step(token)
                    done = scram.state == "done"
                else:
                    _, user, password = token.decode().split("\0")
                    assert self.users is not None
                    if self.users.get(user) != password:
                        raise ValueError("invalid credentials")
                    answer, done = b"", True
            except ValueError as exc:
                self.refused += 1
                message = f"Authentication failed: {exc}"
                reply = struct.pack(">h", SASL_AUTHENTICATION_FAILED) + _string(message)
                reply += _bytes(b"") + (struct.pack(">q", 0) if version >= 1 else b"")
                self._send(writer, header + reply)
                await writer.drain()
                return False
            reply = struct.pack(">h", 0) + _string(None) + _bytes(answer)
            if version >= 1:
                reply += struct.pack(">q", 0)
            self._send(writer, header + reply)
            await writer.drain()
            if done:
                self.authenticated += 1
                return True

    @staticmethod
    def _send(writer: asyncio.StreamWriter, payload: bytes) -> None:
        writer.write(struct.pack(">i", len(payload)) + payload)

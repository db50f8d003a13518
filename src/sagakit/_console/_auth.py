"""Who is asking, and what they may do: roles, bearer tokens, a trusted proxy, CSRF.

Roles, each allowing what the one before allows:

- ``viewer``: read every page;
- ``operator``: resume, resolve, signal and cancel sagas;
- ``admin``: replay dead letters.

A person is known by a bearer token (``Authorization: Bearer ...``, or the cookie the
login page sets from it) from the tokens file (``name:role:token`` per line) or the
environment, or, behind an identity-aware proxy, by the user (and groups) headers the
proxy sets, taken only from the proxy's own addresses. Forms carry a CSRF token bound to
the person, checked on every POST, and the cookie is ``SameSite=Strict``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from .._errors import SagaError

COOKIE = "sagakit_console"


class Role(enum.IntEnum):
    viewer = 1
    operator = 2
    admin = 3


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role
    #: how they proved it ("token:<name>" or "proxy"): CSRF tokens are bound to it
    via: str
    #: the credential came in an Authorization header, which a browser never adds on its
    #: own: such a request cannot be forged by another site, so it needs no CSRF token
    bearer: bool = False


@dataclass(frozen=True)
class Token:
    name: str
    role: Role
    secret: str


def parse_tokens(text: str, where: str) -> list[Token]:
    """``name:role:token`` lines (``#`` comments, blank lines skipped)."""
    tokens: list[Token] = []
    for number, raw in enumerate(text.replace(";", "\n").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        role, _, secret = rest.partition(":")
        if not name or not secret:
            raise SagaError(f"{where} line {number}: expected name:role:token")
        try:
            parsed = Role[role.strip()]
        except KeyError:
            raise SagaError(
                f"{where} line {number}: role {role!r} is not one of "
                f"{', '.join(r.name for r in Role)}"
            ) from None
        if len(secret.strip()) < 12:
            raise SagaError(f"{where} line {number}: the token of {name!r} is shorter than 12")
        tokens.append(Token(name.strip(), parsed, secret.strip()))
    return tokens


@dataclass
class Auth:
    """How the console knows people (see the module docstring)."""

    tokens: list[Token] = field(default_factory=list)
    #: header of the user's name set by a trusted proxy (None: no proxy mode)
    proxy_user_header: str | None = None
    #: header of the user's groups (comma-separated), mapped to roles by `proxy_roles`
    proxy_groups_header: str | None = None
    #: group -> role; a group named like a role gives that role
    proxy_roles: Mapping[str, Role] = field(default_factory=dict)
    #: the role of a proxied user whose groups give none (None: refused)
    proxy_default_role: Role | None = None
    #: addresses the proxy connects from (the headers of anyone else are ignored)
    trusted_proxies: Sequence[str] = ("127.0.0.1/32", "::1/128")
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def from_sources(
        cls,
        *,
        tokens_file: Path | None = None,
        tokens: str | None = None,
        **proxy: object,
    ) -> Auth:
        found: list[Token] = []
        if tokens_file is not None:
            try:
                text = tokens_file.read_text()
            except OSError as exc:
                raise SagaError(f"cannot read the console's tokens file: {exc}") from exc
            found += parse_tokens(text, str(tokens_file))
        if tokens:
            found += parse_tokens(tokens, "SAGAKIT_CONSOLE_TOKENS")
        return cls(tokens=found, **proxy)  # type: ignore[arg-type]

    @property
    def configured(self) -> bool:
        return bool(self.tokens) or self.proxy_user_header is not None

    def _token(self, presented: str) -> Token | None:
        match = None
        for token in self.tokens:  # compare with every one, in constant time
            if hmac.compare_digest(token.secret.encode(), presented.encode()):
                match = token
        return match

    def _trusted(self, request: web.Request) -> bool:
        peer = request.remote
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)

    def identify(self, request: web.Request) -> Identity | None:
        """The person behind `request`, or None."""
        header = request.headers.get("Authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
        presented = bearer or request.cookies.get(COOKIE, "")
        if presented:
            token = self._token(presented)
            if token is not None:
                return Identity(token.name, token.role, f"token:{token.name}", bool(bearer))
        if self.proxy_user_header and self._trusted(request):
            user = request.headers.get(self.proxy_user_header, "").strip()
            if user and len(user) <= 200:
                role = self._proxy_role(request)
                if role is not None:
                    return Identity(user, role, "proxy")
        return None

    def login(self, presented: str) -> Token | None:
        return self._token(presented.strip())

    def _proxy_role(self, request: web.Request) -> Role | None:
        groups: Iterable[str] = ()
        if self.proxy_groups_header:
            listed = request.headers.get(self.proxy_groups_header, "")
            groups = (g.strip() for g in listed.split(","))
        roles = []
        for group in groups:
            if group in self.proxy_roles:
                roles.append(self.proxy_roles[group])
            elif group in Role.__members__:
                roles.append(Role[group])
        return max(roles) if roles else self.proxy_default_role

    def csrf(self, who: Identity) -> str:
        """The CSRF token of `who`'s forms."""
        message = f"{who.via}\n{who.name}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def csrf_ok(self, who: Identity, presented: str) -> bool:
        return who.bearer or hmac.compare_digest(self.csrf(who), presented)


def parse_role_map(items: Iterable[str]) -> dict[str, Role]:
    """``GROUP=ROLE`` items as a mapping."""
    found: dict[str, Role] = {}
    for item in items:
        group, sep, role = item.partition("=")
        if not sep or role not in Role.__members__:
            raise SagaError(
                f"proxy role {item!r}: expected GROUP=ROLE, ROLE one of "
                f"{', '.join(r.name for r in Role)}"
            )
        found[group] = Role[role]
    return found

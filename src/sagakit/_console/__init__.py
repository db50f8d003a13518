"""The saga console: a web view of the read model, with operator actions by role."""

from ._auth import Auth, Identity, Role, parse_role_map, parse_tokens
from ._server import Console, ConsoleSettings

__all__ = (
    "Auth",
    "Console",
    "ConsoleSettings",
    "Identity",
    "Role",
    "parse_role_map",
    "parse_tokens",
)

"""The extension's connection settings, from the variables the CLI reads (`debugreg gdb` sets
them from its options)."""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_URL = "http://127.0.0.1:8765"  # the CLI's default (debugreg.client.DEFAULT_URL)
DEFAULT_TTL_S = 30.0

URL_ENV = "DEBUGREG_URL"
TOKEN_ENV = "DEBUGREG_TOKEN"
SESSION_ENV = "DEBUGREG_SESSION"
ADMIN_KEY_ENV = "DEBUGREGD_ADMIN_KEY"
TTL_ENV = "DEBUGREG_GDB_TTL"
# Set by `debugreg gdb`: the settings it added to gdb's environment, which the programs gdb runs
# should not inherit (the admin key above all).
ADDED_ENV = "DEBUGREG_GDB_ADDED"


class Settings:
    """Where debugregd is and how the extension shows itself: a session token with the
    `ptrace` grant, or the admin key (with which it opens a session of its own)."""

    # A plain class, not a NamedTuple: `debugreg gdb` imports this module, and typing would cost
    # it 5 ms.
    __slots__ = ("admin_key", "session", "token", "ttl_s", "url")

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        session: str | None = None,
        admin_key: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self.url = url
        self.token = token
        self.session = session  # the token's session, to keep it alive (else learned later)
        self.admin_key = admin_key
        self.ttl_s = ttl_s

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """The settings the CLI reads, from the same variables (`debugreg gdb` sets them from
        its options)."""
        try:
            ttl_s = float(environ.get(TTL_ENV) or DEFAULT_TTL_S)
        except ValueError:
            ttl_s = DEFAULT_TTL_S
        return cls(
            url=(environ.get(URL_ENV) or DEFAULT_URL).rstrip("/"),
            token=environ.get(TOKEN_ENV) or None,
            session=environ.get(SESSION_ENV) or None,
            admin_key=environ.get(ADMIN_KEY_ENV) or None,
            ttl_s=ttl_s if ttl_s > 0 else DEFAULT_TTL_S,
        )

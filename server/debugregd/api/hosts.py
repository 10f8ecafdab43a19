"""The Host header allowlist, against DNS rebinding.

A web page on a name its owner controls can point that name at 127.0.0.1 once it has loaded; the
browser then lets the page call the daemon as same-origin, with `Host: attacker.example`. A daemon
on loopback answers only the names that reach it honestly: localhost, 127.0.0.1 and [::1] (any
port), the address it is bound to, and what `--allowed-hosts` adds. `/healthz` and `/metrics` are
read-only and answer any name, because kubelet probes and Prometheus address the daemon by its IP.
"""

from __future__ import annotations

from collections.abc import Iterable

from debugregd.api.errors import problem
from debugregd.api.responses import Json

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = ("", "0.0.0.0", "::", "*")
ANY_NAME = ("/healthz", "/metrics")
CACHE = 1024  # Host values seen allowed, kept so a request costs one set lookup


def host_name(name: str) -> str:
    """A name as the Host header carries it: lowercase, an IPv6 address in brackets."""
    name = name.strip().lower()
    if ":" in name and not name.startswith("["):
        return f"[{name}]"
    return name


class HostAllowlist:
    """Which Host header values this daemon answers; `*` among the names allows any."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = {host_name(n).encode() for n in names if n.strip()}
        self.anything = b"*" in self.names
        self._seen: set[bytes] = set()

    @classmethod
    def for_bind(cls, bound: str, extra: Iterable[str]) -> HostAllowlist:
        """Loopback names, the bound address when it is one address, and `extra`."""
        names = [*LOOPBACK, *extra]
        if bound.strip() not in WILDCARD_BINDS:
            names.append(bound)
        return cls(names)

    def allows(self, value: bytes | None) -> bool:
        """Whether a request with this Host header (None: none sent) may be answered.

        A request without Host comes from no browser (they always send it), so it is allowed.
        """
        if value is None or self.anything or value in self._seen:
            return True
        name = value.lower()
        if name.startswith(b"["):
            end = name.find(b"]")
            name, port = (name[: end + 1], name[end + 1 :]) if end > 0 else (name, b"")
        else:
            name, _, rest = name.partition(b":")
            port = b":" + rest if rest else b""
        if port and not (port[:1] == b":" and (port[1:].isdigit() or port == b":")):
            return False
        if name not in self.names:
            return False
        if len(self._seen) >= CACHE:
            self._seen.clear()
        self._seen.add(value)
        return True

    def refusal(self, value: bytes) -> Json:
        """The 400 problem for a Host this daemon does not answer."""
        shown = value.decode("latin-1")[:100]
        names = ", ".join(sorted(n.decode() for n in self.names))
        return problem(
            400,
            "host-not-allowed",
            "Host not allowed",
            f"this daemon answers requests for {names} (any port), not Host {shown!r}: a web page "
            "whose name was rebound to this address is refused this way. Use one of those names, "
            "or start the daemon with --allowed-hosts NAME[,NAME...] (or '*' behind a proxy that "
            "checks Host itself)",
        )


def host_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The first Host header of an ASGI scope's headers."""
    for key, value in headers:
        if key == b"host":
            return value
    return None

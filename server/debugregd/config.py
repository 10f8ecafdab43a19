"""Configuration: every setting is a `debugregd serve` flag and a DEBUGREGD_* environment variable.

Flags win over the environment, which wins over the embedded defaults; `make run` uses the
defaults alone.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/debugregd, or ~/.local/state/debugregd."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "debugregd"


def parse_pools(text: str) -> dict[str, int]:
    """'wrp=4,brp=6' -> {'wrp': 4, 'brp': 6}."""
    pools: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"pool sizes look like 'dr=4' or 'brp=6,wrp=4', got {part!r}"
            )
        pools[name.strip()] = int(value)
    return pools


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < 86_400:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 86400, got {text!r}")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if not 0 <= value < 86_400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 86400, got {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or more, got {text!r}")
    return value


def parse_names(text: str) -> list[str]:
    """'a.example, 10.0.0.5' -> ['a.example', '10.0.0.5']."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    """Everything `debugregd serve` can be told."""

    host: str = "127.0.0.1"
    port: int = 8765
    allowed_hosts: list[str] = field(default_factory=list)
    state_dir: Path = field(default_factory=default_state_dir)
    profile: str = "x86_64"
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    pools: dict[str, int] = field(default_factory=dict)
    mode_switching: bool = False
    backend: str = "sim"
    retention: int = 100_000
    history: int = 10_000
    sse_buffer: int = 1024
    heartbeat_s: float = 15.0
    max_body: int = 65_536
    max_connections: int = 0  # 0: from the open-file limit (connections.default_max_connections)
    idle_timeout_s: float = 5.0
    request_timeout_s: float = 10.0
    synchronous: str = "NORMAL"
    outside_interval_s: float = 1.0
    outside_scan_s: float = 2.0
    reserve_for_ptrace: int = 0
    yield_to_tracers: bool = False
    snapshot_every: int = 50_000
    hit_interval_s: float = 0.1
    hit_budget: int = 1_000
    hit_sites: int = 8
    # Per session (0: no limit); sessions need no key, so these bound what anyone can queue.
    max_allocations_per_session: int = 10_000
    max_waiting_per_session: int = 1_000
    max_streams_per_session: int = 8
    log_level: str = "info"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # given: clients must show a certificate it signed
    admin_key: str | None = None  # environment only: a flag would show in `ps`
    recover: bool = False  # a flag only: a choice made once, not a setting to leave on

    @property
    def tls(self) -> bool:
        """Whether the daemon serves HTTPS itself."""
        return self.tls_cert is not None or self.tls_key is not None


ENV = "DEBUGREGD_"


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="debugregd",
        description="Arbitration daemon for CPU hardware debug registers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the daemon (one process, one event loop, one uvicorn worker)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Run the daemon. Each flag also reads DEBUGREGD_<FLAG> from the environment "
            "(e.g. DEBUGREGD_PORT); the admin key comes only from DEBUGREGD_ADMIN_KEY or, when "
            "unset, from <state-dir>/admin.key (generated, mode 0600)."
        ),
    )

    def option(flag: str, help: str, default: object, **kw: Any) -> None:
        name = flag.removeprefix("--").replace("-", "_").upper()
        value = env(ENV + name)
        if value is not None:
            kind = kw.get("type")
            default = kind(value) if callable(kind) else value
        serve.add_argument(flag, default=default, help=help, **kw)

    option("--host", "address to bind; keep loopback unless TLS is on (--tls-cert)", d.host)
    option("--port", "TCP port", d.port, type=int)
    option(
        "--allowed-hosts",
        "Host header names answered besides localhost, 127.0.0.1, [::1] and the bound address "
        "(comma-separated; '*' for any, behind a proxy that checks Host): others get a 400, so "
        "a web page rebinding its name to this address cannot drive the daemon",
        [],
        type=parse_names,
    )
    option("--state-dir", "journal, admin key and lock live here", d.state_dir, type=Path)
    option("--profile", "hardware profile", d.profile, choices=["x86_64", "arm64", "ppc64"])
    option("--cpus", "CPU count (the default is this machine's)", d.cpus, type=int)
    option(
        "--pools",
        "pool sizes, e.g. 'dr=4' or 'brp=6,wrp=4'; empty means the profile's",
        {},
        type=parse_pools,
    )
    serve.add_argument(
        "--mode-switching",
        action=argparse.BooleanOptionalAction,
        default=_truthy(env(ENV + "MODE_SWITCHING", "0")),
        help="count kernel-space and user-space watchpoints in separate budgets",
    )
    option(
        "--backend",
        "sim keeps registers in memory; perf arms real hardware via perf_event_open",
        d.backend,
        choices=["sim", "perf"],
    )
    option("--retention", "events kept for stream resumption", d.retention, type=int)
    option("--history", "terminal allocation records kept", d.history, type=int)
    option(
        "--sse-buffer",
        "events queued per stream before a slow subscriber is cut off",
        d.sse_buffer,
        type=int,
    )
    option("--heartbeat", "seconds between SSE heartbeat comments", d.heartbeat_s, type=float)
    option("--max-body", "largest request body in bytes", d.max_body, type=int)
    option(
        "--max-connections",
        "connections open at once; past it a new one replaces the one waiting longest with no "
        "request in progress (0: the open-file limit less a quarter, at most 16384)",
        d.max_connections,
        type=int,
    )
    option(
        "--idle-timeout",
        "seconds a connection may stay open with no request in progress, new or kept alive "
        "(an event stream is a request in progress)",
        d.idle_timeout_s,
        type=float,
    )
    option(
        "--request-timeout",
        "seconds a request may take to arrive whole, head and body, from its first byte",
        d.request_timeout_s,
        type=float,
    )
    option(
        "--synchronous",
        "SQLite synchronous: NORMAL survives a killed process, FULL also power loss",
        d.synchronous,
        choices=["NORMAL", "FULL"],
    )
    option(
        "--outside-interval",
        "seconds between measurements of the targets where users outside debugregd hold "
        "registers (the record goes, and waiters are reinstalled, when they leave)",
        d.outside_interval_s,
        type=_positive,
    )
    option(
        "--outside-scan",
        "seconds between measurements of every CPU, which find users outside debugregd holding "
        "registers CPU-wide before anyone is refused; 0 turns the scan off",
        d.outside_scan_s,
        type=_not_negative,
    )
    option(
        "--snapshot-every",
        "commands between snapshots (a child process writes them; a start replays the commands "
        "after the latest)",
        d.snapshot_every,
        type=int,
    )
    option(
        "--hit-interval",
        "seconds between hit reports: each allocation hit meanwhile gets one `hit` event with the "
        "exact count, samples lost and its top call sites",
        d.hit_interval_s,
        type=_positive,
    )
    option(
        "--hit-budget",
        "samples per allocation and interval attributed to call sites (perf backend); beyond "
        "it the kernel drops them and they are counted as lost, so a hot variable costs bounded "
        "CPU",
        d.hit_budget,
        type=int,
    )
    option("--hit-sites", "call sites a hit report lists (the most sampled)", d.hit_sites, type=int)
    option(
        "--reserve-for-ptrace",
        "registers per CPU kept out of reach of requests below ptrace priority, so a debugger "
        "that does not ask debugregd (plain gdb) can always set that many watchpoints",
        d.reserve_for_ptrace,
        type=int,
    )
    serve.add_argument(
        "--yield-to-tracers",
        action=argparse.BooleanOptionalAction,
        default=_truthy(env(ENV + "YIELD_TO_TRACERS", "0")),
        help="when a debugger attaches (ptrace) to a task holding allocations below ptrace "
        "priority, evict them so it finds room (on_evict: wait ones come back after it "
        "detaches); needs --backend perf",
    )
    option(
        "--max-allocations-per-session",
        "live allocations (installed or waiting) one session may hold; past it a request gets a "
        "429 problem (0: no limit; the admin key is not a session and is not limited)",
        d.max_allocations_per_session,
        type=_count,
    )
    option(
        "--max-waiting-per-session",
        "allocations one session's wait: true requests may queue; past it a request that does "
        "not fit gets a 429 problem (0: no limit)",
        d.max_waiting_per_session,
        type=_count,
    )
    option(
        "--max-streams-per-session",
        "event streams one session's token may hold open at once; past it a new one gets a 429 "
        "problem (0: no limit; streams opened with the admin key are not counted)",
        d.max_streams_per_session,
        type=_count,
    )
    option("--log-level", "log level", d.log_level, choices=["debug", "info", "warning", "error"])
    option("--tls-cert", "serve HTTPS with this PEM certificate (chain)", None, type=Path)
    option("--tls-key", "the PEM private key of --tls-cert", None, type=Path)
    option(
        "--tls-client-ca",
        "mutual TLS: refuse clients without a certificate signed by this PEM CA bundle",
        None,
        type=Path,
    )
    serve.add_argument(
        "--recover",
        action="store_true",
        help="start even though the journal is damaged: continue from what is intact, keep a "
        "copy of the damaged journal, and log what was dropped (without it, a damaged journal "
        "stops the start with one line saying what is wrong)",
    )
    sub.add_parser("openapi", help="print the OpenAPI document (openapi.json)")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed `serve` arguments (and DEBUGREGD_ADMIN_KEY)."""
    return Settings(
        host=args.host,
        port=args.port,
        allowed_hosts=args.allowed_hosts,
        state_dir=args.state_dir,
        profile=args.profile,
        cpus=args.cpus,
        pools=args.pools,
        mode_switching=args.mode_switching,
        backend=args.backend,
        retention=args.retention,
        history=args.history,
        sse_buffer=args.sse_buffer,
        heartbeat_s=args.heartbeat,
        max_body=args.max_body,
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout,
        request_timeout_s=args.request_timeout,
        synchronous=args.synchronous,
        outside_interval_s=args.outside_interval,
        outside_scan_s=args.outside_scan,
        reserve_for_ptrace=args.reserve_for_ptrace,
        snapshot_every=args.snapshot_every,
        hit_interval_s=args.hit_interval,
        hit_budget=args.hit_budget,
        hit_sites=args.hit_sites,
        yield_to_tracers=args.yield_to_tracers,
        max_allocations_per_session=args.max_allocations_per_session,
        max_waiting_per_session=args.max_waiting_per_session,
        max_streams_per_session=args.max_streams_per_session,
        log_level=args.log_level,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        admin_key=os.environ.get(ENV + "ADMIN_KEY") or None,
        recover=args.recover,
    )


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)

"""`debugregd serve`: one process, one event loop, one uvicorn worker (the arbiter is a single
writer); `debugregd openapi` prints the API document."""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import secrets
import signal
import sys
from types import FrameType

import uvicorn

from debugregd import tls
from debugregd.api.app import (
    StartupError,
    create_app,
    lock_state_dir,
    open_backend,
    open_journal,
    openapi_document,
)
from debugregd.api.hosts import WILDCARD_BINDS
from debugregd.config import Settings, parse, settings_from
from debugregd.connections import (
    ConnectionLimits,
    default_max_connections,
    protocol_for,
    raise_open_file_limit,
)
from debugregd.recovery import JournalDamaged

log = logging.getLogger("debugregd")


def admin_key_for(settings: Settings) -> tuple[str, bool]:
    """The admin key: DEBUGREGD_ADMIN_KEY, else <state-dir>/admin.key (generated, mode 0600).
    Returns the key and whether it was just generated."""
    if settings.admin_key:
        return settings.admin_key, False
    path = settings.state_dir / "admin.key"
    if path.exists():
        try:
            key = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"cannot read the admin key from {path}: {exc}") from None
        if not key:
            raise StartupError(
                f"{path} is empty: write the admin key into it, or delete it to have one made"
            )
        return key, False
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server(uvicorn.Server):
    """Ends every event stream as soon as shutdown starts, so SIGTERM is not held up by them."""

    def __init__(self, config: uvicorn.Config, on_exit: list[object]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        for callback in self.on_exit:
            if callable(callback):
                callback()
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # SIGTERM is the orderly stop: once shut down cleanly, exit 0 rather than having
            # uvicorn re-raise the signal (SIGINT is still re-raised, as shells expect).
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The bound on connections (from the open-file limit unless given) and the timeouts."""
    open_files = raise_open_file_limit()
    bound = settings.max_connections or default_max_connections(open_files)
    if bound > open_files - 32:
        log.warning(
            "--max-connections %d leaves too few of the %d open files this process may have for "
            "the journal and the backend; lower it or raise the limit (LimitNOFILE=)",
            bound,
            open_files,
        )
    log.info("accepting up to %d connections (open-file limit %d)", bound, open_files)
    return ConnectionLimits(bound, settings.idle_timeout_s, settings.request_timeout_s)


def serve(settings: Settings) -> int:
    # Whatever this process creates (the journal, its WAL, the key, the lock) only its user
    # may read: the journal holds every session's allocations.
    os.umask(0o077)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    workers = os.environ.get("WEB_CONCURRENCY", "1")
    if workers.strip() not in ("", "1"):
        print(
            f"debugregd: WEB_CONCURRENCY={workers}, but the arbiter is a single writer: it runs "
            "as one process with one event loop and one worker. Unset WEB_CONCURRENCY.",
            file=sys.stderr,
        )
        return 2
    refused = tls.problem(settings)
    if refused is not None:
        print(f"debugregd: {refused}", file=sys.stderr)
        return 2
    try:
        # The hardware is checked before anything else: a contradiction is one line, no server.
        open_backend(settings)[0].close()
        lock = lock_state_dir(settings.state_dir)
    except StartupError as exc:
        print(f"debugregd: {exc}", file=sys.stderr)
        return 1
    try:
        key, generated = admin_key_for(settings)
    except StartupError as exc:
        lock.close()
        print(f"debugregd: {exc}", file=sys.stderr)
        return 1
    if not is_loopback(settings.host) and not settings.tls:
        log.warning(
            "LISTENING ON %s WITHOUT TLS: session tokens and the admin key cross the network in "
            "clear text. Bind to 127.0.0.1, or serve HTTPS (--tls-cert and --tls-key).",
            settings.host,
        )
    if settings.host in WILDCARD_BINDS and not settings.allowed_hosts:
        log.warning(
            "bound to %s, but only requests for Host localhost, 127.0.0.1 or [::1] are answered "
            "(besides /healthz and /metrics); add the names clients use with --allowed-hosts",
            settings.host,
        )
    try:
        # Before uvicorn starts, so a damaged journal stops the start with one line.
        opened = open_journal(settings)
    except (StartupError, JournalDamaged) as exc:
        lock.close()
        print(f"debugregd: {exc}", file=sys.stderr)
        return 1
    for line in opened.dropped:
        print(f"debugregd: --recover dropped {line}", file=sys.stderr)
    app = create_app(settings, key, lock, opened)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    if ":" in shown:
        shown = f"[{shown}]"  # an IPv6 address in a URL
    base = f"{'https' if settings.tls else 'http'}://{shown}:{settings.port}"
    print(f"debugregd: dashboard at {base}/", flush=True)
    if generated or sys.stdout.isatty():
        # A URL fragment never reaches the server, so the key stays out of access logs.
        print(f"debugregd: sign in with {base}/#key={key}", flush=True)
    if not settings.admin_key:
        print(f"debugregd: admin key in {settings.state_dir / 'admin.key'}", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=5,
        lifespan="on",
        **tls.uvicorn_options(settings),
        http=protocol_for(connection_limits(settings)),
        ws="none",  # the API has no WebSocket route; an upgrade would leave the bound's count
    )

    def end_streams() -> None:
        app.daemon.stopping = True
        runtime = app.daemon.runtime
        if runtime is not None:
            runtime.hub.close()

    server = Server(config, [end_streams])
    # The arbiter keeps many long-lived objects; collecting the young generation less often and
    # freezing what start-up built keeps full collections from pausing the event loop.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        server.run()
    except StartupError as exc:
        print(f"debugregd: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.close()
    runtime = app.daemon.runtime
    if runtime is not None and runtime.failed is not None:
        return 1  # the journal failed (logged): a service manager should notice
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "openapi":
        sys.stdout.write(openapi_document())
        return 0
    return serve(settings_from(args))


if __name__ == "__main__":
    sys.exit(main())

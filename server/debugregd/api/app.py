"""The FastAPI application: routers, error mapping, and the lifespan that owns the runtime."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from debugregd import __version__, recovery
from debugregd.api import (
    admin,
    allocations,
    dashboard,
    document,
    errors,
    events,
    inputs,
    monitoring,
    sessions,
)
from debugregd.api.context import Daemon, DaemonApp
from debugregd.api.limits import BodyLimit
from debugregd.backends import Backend, ProbeError, make_backend
from debugregd.config import Settings
from debugregd.core import Arbiter, make_profile
from debugregd.hub import EventHub
from debugregd.metrics import Metrics
from debugregd.recovery import Opened
from debugregd.runtime import Runtime
from debugregd.store.journal import Journal, LayoutError

log = logging.getLogger("debugregd")


class StartupError(RuntimeError):
    """The daemon cannot start as configured; the message says why and what to do."""


def host_config(settings: Settings) -> dict[str, object]:
    """What the journal was written for; a restart with a different host is refused."""
    profile = make_profile(settings.profile, settings.pools or None)
    return {
        "profile": profile.name,
        "pools": dict(profile.pools),
        "cpus": settings.cpus,
        "mode_switching": settings.mode_switching,
    }


def protect_state_dir(state_dir: Path) -> None:
    """The state directory and any directory in it 0700, its files 0600, whoever made them (a
    Kubernetes hostPath is made 0755, an older daemon made its journal 0644)."""
    for where, dirs, files in os.walk(state_dir):
        for name, mode in [("", 0o700), *((d, 0o700) for d in dirs), *((f, 0o600) for f in files)]:
            path = Path(where, name)
            try:
                if not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
                    path.chmod(mode)
            except OSError as exc:
                log.warning("cannot make %s mode %o: %s", path, mode, exc)


def lock_state_dir(state_dir: Path) -> IO[str]:
    """One writer per state directory: a second daemon (or a second worker) refuses to start."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    protect_state_dir(state_dir)
    fd = os.open(state_dir / "debugregd.lock", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    handle = os.fdopen(fd, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StartupError(
            f"another debugregd process owns {state_dir}; the arbiter is a single writer, so run "
            "one process with one worker per state directory"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def open_backend(settings: Settings) -> tuple[Backend, dict[str, Any]]:
    """The hardware backend and what its probe found, its machine checked against the settings
    (StartupError says what to change when they contradict each other)."""
    check_settings(settings)
    try:
        profile = make_profile(settings.profile, settings.pools or None)
        backend = make_backend(
            settings.backend,
            profile,
            settings.cpus,
            mode_switching=settings.mode_switching,
            hit_budget=settings.hit_budget,
            hit_sites=settings.hit_sites,
        )
        probe = backend.probe()
    except ProbeError as exc:
        raise StartupError(str(exc)) from None
    return backend, probe


def check_settings(settings: Settings) -> None:
    """StartupError unless the settings fit the host and one another (--reserve-for-ptrace,
    --snapshot-every, --hit-budget, --hit-sites, --yield-to-tracers)."""
    smallest = min(make_profile(settings.profile, settings.pools or None).pools.values())
    if not 0 <= settings.reserve_for_ptrace < smallest:
        raise StartupError(
            f"--reserve-for-ptrace {settings.reserve_for_ptrace} must be from 0 to "
            f"{smallest - 1}: this host's pools have {smallest} registers per CPU"
        )
    if settings.snapshot_every < 1:
        raise StartupError("--snapshot-every must be at least 1 command")
    if not 1 <= settings.hit_budget <= 10_000_000 or not 1 <= settings.hit_sites <= 1_000:
        raise StartupError("--hit-budget must be from 1 to 10000000 and --hit-sites from 1 to 1000")
    if settings.yield_to_tracers and settings.backend != "perf":
        raise StartupError(
            "--yield-to-tracers watches the host's real tasks for debuggers: use it with "
            "--backend perf"
        )


def open_journal(settings: Settings) -> Opened:
    """The journal, checked for damage (repaired with `settings.recover`), and the arbiter it
    rebuilds. Raises StartupError or JournalDamaged, each one line saying what to do."""

    def same_host(journal: Journal) -> None:
        wanted = host_config(settings)
        stored = journal.meta("host")
        if stored is None:
            journal.set_meta("host", json.dumps(wanted, sort_keys=True))
            return
        try:
            written_for = json.loads(stored)
        except ValueError:
            written_for = None
        if written_for != wanted:
            raise StartupError(
                f"the journal in {settings.state_dir} was written for host {stored}, but this "
                f"start asks for {json.dumps(wanted, sort_keys=True)}; start with the same "
                "--profile, --cpus, --pools and --mode-switching, or use a new --state-dir"
            )

    def fresh() -> Arbiter:
        return Arbiter(
            make_profile(settings.profile, settings.pools or None),
            settings.cpus,
            mode_switching=settings.mode_switching,
            history=settings.history,
        )

    try:
        opened = recovery.open_journal(
            settings.state_dir / "journal.sqlite3",
            fresh,
            synchronous=settings.synchronous,
            recover=settings.recover,
            check=same_host,
        )
    except LayoutError as exc:
        raise StartupError(str(exc)) from None
    log.info(
        "recovered %d sessions, %d live allocations (%d commands replayed)",
        len(opened.arbiter.sessions),
        len(opened.arbiter.allocations),
        opened.replayed,
    )
    return opened


def open_runtime(settings: Settings, metrics: Metrics, opened: Opened | None = None) -> Runtime:
    """The runtime around `opened` (or the journal `open_journal` opens now)."""
    if opened is None:
        opened = open_journal(settings)
    arbiter, journal = opened.arbiter, opened.journal
    hub = EventHub(buffer=settings.sse_buffer)
    try:
        backend, probe = open_backend(settings)
    except StartupError:
        journal.close()
        raise
    runtime = Runtime(
        arbiter,
        journal,
        hub,
        backend,
        probe=probe,
        retention=settings.retention,
        metrics=metrics,
        outside_interval=settings.outside_interval_s,
        outside_scan=settings.outside_scan_s,
        reserve_for_ptrace=settings.reserve_for_ptrace,
        yield_to_tracers=settings.yield_to_tracers,
        hit_interval=settings.hit_interval_s,
        snapshot_every=settings.snapshot_every,
        max_allocations_per_session=settings.max_allocations_per_session,
        max_waiting_per_session=settings.max_waiting_per_session,
    )
    metrics.watch(lambda: runtime.arbiter, lambda: runtime.hub, lambda: runtime.stats)
    return runtime


def create_app(
    settings: Settings,
    admin_key: str,
    lock: IO[str] | None = None,
    opened: Opened | None = None,
) -> DaemonApp:
    """The daemon's ASGI app. Its lifespan owns the runtime, around `opened` if the caller has
    opened the journal already (`open_journal`), else around the journal it opens; `lock` is
    the state directory's lock when the caller already holds it."""
    daemon = Daemon(settings, admin_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        held = lock or lock_state_dir(settings.state_dir)
        metrics = Metrics()
        runtime = open_runtime(settings, metrics, opened)
        daemon.runtime = runtime
        # Fail-stop: a journal that cannot commit ends the process; a restart replays it.
        runtime.on_fatal = lambda: os.kill(os.getpid(), signal.SIGTERM)
        runtime.start()
        metrics.up.set(1)
        try:
            yield
        finally:
            daemon.stopping = True
            metrics.up.set(0)
            await runtime.stop()
            if lock is None:
                held.close()

    app = DaemonApp(
        title="debugregd",
        version=__version__,
        summary="Arbitration daemon for CPU hardware debug registers",
        description=(
            "Allocate, evict and release hardware debug registers with priorities; eviction "
            "notices over server-sent events. Credentials: `Authorization: Bearer <admin key or "
            "session token>`. Errors are RFC 9457 `application/problem+json`."
        ),
        lifespan=lifespan,
    )
    app.daemon = daemon
    errors.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_body)
    # Routes are matched in order, so the hot allocation paths go first, ahead of /docs. They
    # join the app's own route list rather than going through include_router, whose
    # per-request matching layer cost a seventh of an allocate+release pair's instructions.
    modules = (allocations, sessions, events, admin, monitoring, dashboard)
    app.router.routes[:0] = [route for module in modules for route in module.router.routes]
    app.mount("/static", StaticFiles(directory=dashboard.STATIC, check_dir=False), name="static")
    inputs.install(app)
    document.install(app)
    return app


def openapi_document() -> str:
    """openapi.json as committed: independent of this machine's CPU count or state."""
    app = create_app(Settings(cpus=1), admin_key="unused")
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"

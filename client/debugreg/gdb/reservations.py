"""What the gdb extension holds: for each hardware breakpoint of gdb and each thread it is
inserted in, the daemon's reservations of its registers, in one session kept alive by a thread.

Nothing here knows gdb (`hooks` translates its events into these calls), so the bookkeeping is
tested against a daemon without a debugger. Every call is made from gdb's thread except the
keepalive; what goes wrong is said in one line through `say`, and a daemon that cannot be reached
or refuses the credentials is said once, after which gdb goes on as if the extension were not
there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from debugreg.gdb.daemon import Daemon, DaemonError, Refused, Unreachable

GIVE_UP = "gdb goes on without reserving debug registers"


class NoCredential(DaemonError):
    """Neither a session token nor the admin key: nothing to reserve with."""


class Span(NamedTuple):
    """Memory a breakpoint needs registers for: `access` is the daemon's (write, rw, exec)."""

    address: int
    length: int
    access: str


class HardwareBreakpoint(NamedTuple):
    """A gdb breakpoint that uses debug registers: `what` is how gdb's user calls it
    ("watchpoint", "read watchpoint", "access watchpoint", "hbreak"); no `spans` while gdb
    cannot tell where it is yet."""

    number: int
    what: str
    spans: tuple[Span, ...]

    @property
    def name(self) -> str:
        return f"{self.what} {self.number}"


class Thread(NamedTuple):
    """A thread of the inferior: its thread id and its process."""

    tid: int
    pid: int


class Held(NamedTuple):
    """What one breakpoint holds on one thread: the spans it was reserved for and the
    allocations (fewer than the spans when the daemon refused some)."""

    spans: tuple[Span, ...]
    allocations: tuple[str, ...]
    pid: int


class Lease:
    """The session reservations live in, renewed every third of its TTL from a thread that
    only talks to the daemon (never to gdb). `own`: opened by the extension with the admin key,
    so it closes it; else the user's token's session, which it only keeps alive."""

    def __init__(self, daemon: Daemon, session: str | None, token: str, *, own: bool) -> None:
        self.daemon = daemon
        self.session = session
        self.token = token
        self.own = own
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def keep_alive(self) -> None:
        """Start renewing the lease (once its session id is known)."""
        if self._keeper is not None or self.session is None or self._stop.is_set():
            return
        self._keeper = threading.Thread(
            target=self._renew, args=(self.session,), name="debugreg-keepalive", daemon=True
        )
        self._keeper.start()

    def stop(self) -> None:
        """Stop renewing (the thread ends at its next wake-up; gdb never waits for it)."""
        self._stop.set()

    def _renew(self, session: str) -> None:
        interval = self.daemon.settings.ttl_s / 3
        while not self._stop.wait(interval):
            try:
                self.daemon.keepalive(session, self.token)
            except Unreachable:
                continue  # the daemon restarting: the next renewal may find it
            except DaemonError:
                return  # the session is gone: the next reservation opens another


class Reservations:
    """The reservations of gdb's hardware breakpoints, per thread, held in one lease."""

    def __init__(self, daemon: Daemon, say: Callable[[str], None]) -> None:
        self.daemon = daemon
        self._say = say
        self._held: dict[tuple[int, int], Held] = {}  # by (breakpoint number, tid)
        self._lease: Lease | None = None
        self.off = False  # after one warning, gdb goes on as if the extension were not there

    @property
    def held(self) -> Mapping[tuple[int, int], Held]:
        """What is held, by (breakpoint number, tid)."""
        return self._held

    @property
    def session(self) -> str | None:
        return self._lease.session if self._lease is not None else None

    def reserve(self, bp: HardwareBreakpoint, threads: Iterable[Thread]) -> None:
        """Hold `bp`'s registers on each of `threads`, replacing what it holds there for other
        spans. A pair already tried for the same spans is left as it is: a refusal is said once,
        not at every event gdb sends about the breakpoint."""
        refused: Refused | None = None
        failed: DaemonError | None = None
        for thread in threads:
            key = (bp.number, thread.tid)
            old = self._held.get(key)
            if self.off or (old is not None and old.spans == bp.spans):
                continue
            if old is not None:
                self._release(self._held.pop(key))
            taken: list[str] = []
            try:
                for span in bp.spans:
                    taken.append(self._allocate(bp, thread, span))
            except Refused as exc:
                refused = refused or exc
            except DaemonError as exc:
                if self._give_up(exc):
                    return
                failed = failed or exc
            self._held[key] = Held(bp.spans, tuple(taken), thread.pid)
        if refused is not None:
            self._say(f"debugreg: no debug register for {bp.name}: held by {holders(refused)}")
        elif failed is not None:
            self._say(f"debugreg: {bp.name} not reserved: {failed.detail}")

    def release(self, number: int) -> None:
        """Release what breakpoint `number` holds on every thread (deleted, disabled, gone out
        of scope)."""
        for key in [k for k in self._held if k[0] == number]:
            self._release(self._held.pop(key))

    def release_gone(self, live: Iterable[int]) -> None:
        """Release what is held on threads of processes other than `live` (gdb no longer
        debugs them: exited, killed, detached); close the session once nothing is held."""
        pids = set(live)
        for key in [k for k, held in self._held.items() if held.pid not in pids]:
            self._release(self._held.pop(key))
        if not self._held:
            self.end()

    def end(self) -> None:
        """Release everything and close the session (gdb exits, or debugs nothing more)."""
        lease, self._lease = self._lease, None
        held = list(self._held.values())
        self._held.clear()
        if lease is None:
            return
        lease.stop()
        if not lease.own:
            for h in held:
                self._release(h, lease)
            return
        try:
            lease.daemon.close_session(str(lease.session), lease.token)  # releases all it held
        except DaemonError as exc:
            if exc.status not in (401, 404):  # else: already closed or expired
                self._give_up(exc)

    # -- the daemon

    def _allocate(self, bp: HardwareBreakpoint, thread: Thread, span: Span) -> str:
        lease = self._lease or self._open()
        label = f"gdb {bp.name} (pid {thread.pid})"
        args = (thread.tid, span.address, span.length, span.access, label)
        try:
            record = self.daemon.reserve(lease.token, *args)
        except DaemonError as exc:
            if not self._lost(exc, lease):
                raise
            lease = self._open()
            record = self.daemon.reserve(lease.token, *args)
        if lease.session is None:
            lease.session = str(record.get("session") or "") or None
            lease.keep_alive()
        return str(record["id"])

    def _open(self) -> Lease:
        settings = self.daemon.settings
        if settings.token:
            lease = Lease(self.daemon, settings.session, settings.token, own=False)
        elif settings.admin_key:
            session, token = self.daemon.open_session("gdb", settings.ttl_s)
            lease = Lease(self.daemon, session, token, own=True)
        else:
            raise NoCredential(
                0,
                "no credential for debugregd: set DEBUGREG_TOKEN (a session with the ptrace "
                "grant) or DEBUGREGD_ADMIN_KEY",
            )
        lease.keep_alive()
        self._lease = lease
        return lease

    def _release(self, held: Held, lease: Lease | None = None) -> None:
        lease = lease or self._lease
        if lease is None or self.off:
            return
        for allocation in held.allocations:
            try:
                self.daemon.release(allocation, lease.token)
            except DaemonError as exc:
                if exc.status == 404 or self._lost(exc, lease):
                    continue  # gone already: its task exited, or its session ended
                self._give_up(exc)
                return

    def _lost(self, exc: DaemonError, lease: Lease) -> bool:
        """Whether `exc` says the extension's own session ended (it expired while gdb was
        stopped, or an admin closed it): its reservations went with it, so the next one opens
        a new session."""
        if exc.status != 401 or not lease.own:
            return False
        lease.stop()
        if self._lease is lease:
            self._lease = None
            self._held.clear()
        return True

    def _give_up(self, exc: DaemonError) -> bool:
        """Whether `exc` means the extension can do nothing more in this gdb (no daemon, or
        credentials it refuses): said once, and from then on it stays out of gdb's way."""
        if isinstance(exc, NoCredential):
            why = exc.detail
        elif isinstance(exc, Unreachable):
            why = f"debugregd is unreachable ({exc.detail})"
        elif exc.status in (401, 403):
            why = f"debugregd refused the credentials ({exc.detail})"
        else:
            return False
        if not self.off:
            self.off = True
            self._say(f"debugreg: {why}; {GIVE_UP}")
        if self._lease is not None:
            self._lease.stop()
        return True


def holders(refusal: Refused) -> str:
    """Who holds the registers, as a refusal names them to this session: 'a1, a2 (session s3,
    priority 900, non-evictable)', another session's as 'another session's 2 (priority 900,
    non-evictable)' (the daemon names no other session's allocations), users outside debugregd
    by their label."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for blocker in refusal.blockers:
        if blocker.get("outside"):
            groups.setdefault((str(blocker.get("label") or "users outside debugregd"),), [])
            continue
        evictable = "evictable" if blocker.get("evictable") else "non-evictable"
        key = (blocker.get("session"), blocker.get("priority"), evictable)
        groups.setdefault(key, []).append(str(blocker.get("allocation")))
    if not groups:
        return refusal.detail
    parts = []
    for key, allocations in groups.items():
        if len(key) == 1:
            parts.append(key[0])
            continue
        session, priority, evictable = key
        if session is None:
            parts.append(f"another session's {len(allocations)} (priority {priority}, {evictable})")
        else:
            parts.append(
                f"{', '.join(allocations)} (session {session}, priority {priority}, {evictable})"
            )
    return "; ".join(parts)

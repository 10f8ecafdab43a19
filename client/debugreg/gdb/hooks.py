"""gdb's side: which of its events mean registers to reserve or release.

gdb runs Python event handlers synchronously, in its own thread, and inserts breakpoints into
the inferior only when it resumes it; so a reservation made from an event below is in place
before gdb writes the debug registers:

- `breakpoint_created`: the user made a hardware watchpoint (`watch`, `rwatch`, `awatch`, with
  or without `-l`) or `hbreak`: reserve it on every thread of the inferior (none before `run`);
- `new_thread`: a thread appeared (the first one of `run` or `attach` too): reserve every
  breakpoint on it before gdb lets it run;
- `breakpoint_modified` and `new_objfile`: where a breakpoint is may have changed (a PIE program
  relocated at `run`, a disabled or enabled breakpoint): replace its reservations;
- `breakpoint_deleted`: deleted, or a watchpoint gone out of scope: release;
- `exited` (the inferior exited, was killed, or gdb detached) and `gdb_exiting`: release
  everything and close the session.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

import gdb

from debugreg.gdb.daemon import Daemon
from debugreg.gdb.reservations import HardwareBreakpoint, Reservations, Span, Thread
from debugreg.gdb.settings import ADDED_ENV, Settings

# gdb's breakpoint types that take debug registers, and what the daemon calls their access.
# x86 cannot watch reads alone: gdb arms an `rwatch` as read/write and filters the hits itself.
KINDS: dict[int, tuple[str, str]] = {
    gdb.BP_HARDWARE_WATCHPOINT: ("watchpoint", "write"),
    gdb.BP_READ_WATCHPOINT: ("read watchpoint", "rw"),
    gdb.BP_ACCESS_WATCHPOINT: ("access watchpoint", "rw"),
    gdb.BP_HARDWARE_BREAKPOINT: ("hbreak", "exec"),
}

LOCATION_PREFIX = "-location "  # how gdb shows the expression of `watch -l EXPR`

E = TypeVar("E")


def say(line: str) -> None:
    """One line on gdb's error stream, where its own warnings go."""
    gdb.write(line + "\n", gdb.STDERR)


def guarded(handler: Callable[[E], None]) -> Callable[[E], None]:
    """An event handler that never gets in gdb's way: a failure of the extension itself is one
    line, instead of a Python traceback in the middle of gdb's output."""

    @functools.wraps(handler)
    def handle(event: E) -> None:
        try:
            handler(event)
        except Exception as exc:
            say(f"debugreg: the extension failed ({type(exc).__name__}: {exc}); gdb goes on")

    return handle


class Extension:
    """Turns gdb's events into reservations (`Reservations`), keeping what each hardware
    breakpoint needs."""

    def __init__(self, reservations: Reservations) -> None:
        self.reservations = reservations
        self.wanted: dict[int, HardwareBreakpoint] = {}  # by breakpoint number
        self._told: set[int] = set()  # breakpoints said to be unreservable, said once

    def connect(self) -> None:
        """Listen to gdb, and take over what exists already (sourced at gdb's prompt)."""
        events = gdb.events
        events.breakpoint_created.connect(guarded(self.breakpoint_changed))
        events.breakpoint_modified.connect(guarded(self.breakpoint_changed))
        events.breakpoint_deleted.connect(guarded(self.breakpoint_deleted))
        events.new_thread.connect(guarded(self.new_thread))
        events.new_objfile.connect(guarded(self.objfile_loaded))
        events.exited.connect(guarded(self.exited))
        events.gdb_exiting.connect(guarded(self.gdb_exiting))
        for bp in gdb.breakpoints():
            guarded(self.breakpoint_changed)(bp)

    # -- gdb's events

    def breakpoint_changed(self, bp: gdb.Breakpoint) -> None:
        self.refresh(bp, live_threads(bp))

    def breakpoint_deleted(self, bp: gdb.Breakpoint) -> None:
        if self.wanted.pop(bp.number, None) is not None:
            self.reservations.release(bp.number)
        self._told.discard(bp.number)

    def new_thread(self, event: gdb.NewThreadEvent) -> None:
        thread = event.inferior_thread
        for bp in gdb.breakpoints():
            if bp.type in KINDS and _applies(bp, thread):
                self.refresh(bp, [_thread(thread)])

    def objfile_loaded(self, event: gdb.NewObjFileEvent) -> None:
        if not self.wanted:
            return
        for bp in gdb.breakpoints():
            if bp.number in self.wanted:
                self.refresh(bp, live_threads(bp))

    def exited(self, event: gdb.ExitedEvent) -> None:
        self.reservations.release_gone(
            inferior.pid for inferior in gdb.inferiors() if inferior.pid and inferior.threads()
        )

    def gdb_exiting(self, event: gdb.GdbExitingEvent) -> None:
        self.reservations.end()

    # -- what a breakpoint needs

    def refresh(self, bp: gdb.Breakpoint, threads: Iterable[Thread]) -> None:
        """Reserve what `bp` needs now on `threads`; release it all if it needs nothing (not a
        hardware breakpoint any more, or disabled)."""
        need = self.need(bp)
        if need is None:
            if self.wanted.pop(bp.number, None) is not None:
                self.reservations.release(bp.number)
            return
        self.wanted[bp.number] = need
        self.reservations.reserve(need, threads)

    def need(self, bp: gdb.Breakpoint) -> HardwareBreakpoint | None:
        """What `bp` needs from the hardware (None: nothing). Where gdb has placed it (its
        locations) is the truth; a watchpoint's length is its value's size, found by evaluating
        its expression once (in the frame where the user set it, which is selected then)."""
        kind = KINDS.get(bp.type)
        if kind is None or not bp.enabled or not bp.is_valid():
            return None
        what, access = kind
        number = bp.number
        addresses = [loc.address for loc in _locations(bp) if loc.enabled]
        if bp.type == gdb.BP_HARDWARE_BREAKPOINT:
            spans = tuple(Span(address, 1, access) for address in addresses)
            return HardwareBreakpoint(number, what, spans)
        known = self.wanted.get(number)
        if known is not None and known.spans:
            address, length, _ = known.spans[0]
        else:
            found = self._evaluate(bp)
            if found is None:
                return HardwareBreakpoint(number, what, ())  # gdb cannot tell yet either
            address, length = found
        if len(addresses) == 1:
            address = addresses[0]
        return HardwareBreakpoint(number, what, (Span(address, length, access),))

    def _evaluate(self, bp: gdb.Breakpoint) -> tuple[int, int] | None:
        """The address and size of what a watchpoint watches, or None when it cannot be
        evaluated now (no process, or a frame where its names are not in scope)."""
        expression = bp.expression or ""
        if expression.startswith(LOCATION_PREFIX):
            expression = expression[len(LOCATION_PREFIX) :]
        try:
            value = gdb.parse_and_eval(expression)
            length = value.type.strip_typedefs().sizeof
            address = value.address
        except gdb.error:
            return None
        if address is None:
            if bp.number not in self._told:
                self._told.add(bp.number)
                say(
                    f"debugreg: watchpoint {bp.number}: {expression!r} is not one place in "
                    "memory; its registers are not reserved"
                )
            return None
        return int(address), length


def live_threads(bp: gdb.Breakpoint) -> list[Thread]:
    """The threads `bp` is inserted in, of every process gdb debugs."""
    return [
        _thread(thread)
        for inferior in gdb.inferiors()
        if inferior.pid
        for thread in inferior.threads()
        if _applies(bp, thread)
    ]


def _applies(bp: gdb.Breakpoint, thread: gdb.InferiorThread) -> bool:
    """Whether gdb inserts `bp` in `thread` (`watch x thread 2` only in that one)."""
    return bp.thread is None or bp.thread == thread.global_num


def _thread(thread: gdb.InferiorThread) -> Thread:
    pid, lwp, _ = thread.ptid
    # The first thread of a process starting or being attached is (pid, 0, 0) for a moment.
    return Thread(lwp or pid, pid)


def _locations(bp: gdb.Breakpoint) -> list[gdb.BreakpointLocation]:
    # Breakpoint.locations came in gdb 13; without it a watchpoint keeps its evaluated address.
    return list(getattr(bp, "locations", None) or ())


def _hide_settings() -> None:
    """Keep what `debugreg gdb` added to gdb's environment (the admin key above all) out of the
    environment of programs gdb runs."""
    for name in (os.environ.get(ADDED_ENV) or "").split():
        gdb.execute(f"unset environment {name}", to_string=True)
    gdb.execute(f"unset environment {ADDED_ENV}", to_string=True)


class InfoDebugreg(gdb.Command):
    """What debugregd holds for gdb's hardware breakpoints: the session and, per breakpoint and
    thread, the reservations (allocation ids)."""

    def __init__(self, extension: Extension) -> None:
        super().__init__("info debugreg", gdb.COMMAND_STATUS)
        self.extension = extension

    def invoke(self, argument: str, from_tty: bool) -> None:
        reservations = self.extension.reservations
        state = "off" if reservations.off else f"session {reservations.session or '-'}"
        gdb.write(f"debugregd {reservations.daemon.url}: {state}\n")
        for (number, tid), held in sorted(reservations.held.items()):
            need = self.extension.wanted.get(number)
            name = need.name if need is not None else f"breakpoint {number}"
            allocations = " ".join(held.allocations) or "none (refused or failed)"
            gdb.write(f"{name} on thread {tid}: {allocations}\n")


_installed: Extension | None = None


def install() -> Extension:
    """Start the extension in this gdb (once: sourcing it again changes nothing)."""
    global _installed
    if _installed is None:
        _hide_settings()
        _installed = Extension(Reservations(Daemon(Settings.from_environment()), say))
        _installed.connect()
        InfoDebugreg(_installed)
    return _installed

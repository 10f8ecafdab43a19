"""Journaled commands: every change to the arbiter, as plain data that replays exactly.

The daemon never calls a mutating `Arbiter` method directly: it builds a command, runs it through
`execute`, and journals it. On restart the same function replays the journal, so the path that
served a request and the path that restores it are one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from debugregd.core import Arbiter, Event, Request
from debugregd.core.kernel import Measurement, Replay

Command = dict[str, Any]
Outcome = tuple[Any, list[Event]]


def _tick(arb: Arbiter, c: Command) -> Outcome:
    return None, arb.tick(c["now"])


def _open_session(arb: Arbiter, c: Command) -> Outcome:
    return arb.open_session(
        c["name"],
        c["ttl_s"],
        c["now"],
        max_priority=c["max_priority"],
        allow_non_evictable=c["allow_non_evictable"],
        allow_kernel=c["allow_kernel"],
    )


def _keepalive(arb: Arbiter, c: Command) -> Outcome:
    return arb.keepalive(c["session"], c["now"]), []


def _grace(arb: Arbiter, c: Command) -> Outcome:
    # After a restart every lease gets at least one TTL from now, so clients can reconnect.
    now = c["now"]
    for session in list(arb.sessions.values()):
        if session.expires_at < now + session.ttl_s:
            arb.keepalive(session.id, now)
    return None, []


def _issue_token(arb: Arbiter, c: Command) -> Outcome:
    # A retried open got the session a new token (its digest commits with this command); the
    # arbiter only checks that the session is open.
    arb.session(c["session"])
    return None, []


def _close_session(arb: Arbiter, c: Command) -> Outcome:
    return None, arb.close_session(c["session"], c["now"])


def _allocate(arb: Arbiter, c: Command) -> Outcome:
    return arb.allocate(c["session"], Request.from_dict(c["request"]), c["now"])


def _release(arb: Arbiter, c: Command) -> Outcome:
    return arb.release(c["allocation"], c["now"], session_id=c["session"])


def _evict(arb: Arbiter, c: Command) -> Outcome:
    return arb.evict(c["allocation"], c["now"], c["reason"])


def _evict_matching(arb: Arbiter, c: Command) -> Outcome:
    return arb.evict_matching(
        c["now"], c["reason"], cpu=c["cpu"], tid=c["tid"], below_priority=c["below_priority"]
    )


def _set_debugregs(arb: Arbiter, c: Command) -> Outcome:
    a0, a1, a2, a3 = c["addresses"]
    return None, arb.set_debugregs(c["session"], c["tid"], (a0, a1, a2, a3), c["dr7"], c["now"])


def _access(arb: Arbiter, c: Command) -> Outcome:
    return arb.access(
        c["cpu"], c["tid"], c["address"], c["length"], c["access"], c["now"], c.get("ip")
    )


def _report_hit(arb: Arbiter, c: Command) -> Outcome:
    return None, arb.report_hit(c["allocation"], c["now"], c["data"])


def _observe(arb: Arbiter, c: Command) -> Outcome:
    return None, arb.observe(Measurement.from_dict(c["measured"]), c["now"])


def _task_exited(arb: Arbiter, c: Command) -> Outcome:
    return None, arb.task_exited(c["tid"], c["now"])


def _rearm(arb: Arbiter, c: Command) -> Outcome:
    return None, arb.rearm(c["now"])


def _configure(arb: Arbiter, c: Command) -> Outcome:
    # Each setting the command names (older journals name only reserved_for_ptrace).
    return None, arb.configure(
        c["now"],
        reserved_for_ptrace=c.get("reserved_for_ptrace"),
        max_allocations_per_session=c.get("max_allocations_per_session"),
        max_waiting_per_session=c.get("max_waiting_per_session"),
    )


def _trace(arb: Arbiter, c: Command) -> Outcome:
    return None, arb.trace(c["tid"], c["tracer"], c["now"])


def _untrace(arb: Arbiter, c: Command) -> Outcome:
    return None, arb.untrace(c["tid"], c["now"])


OPS: dict[str, Callable[[Arbiter, Command], Outcome]] = {
    "tick": _tick,
    "open_session": _open_session,
    "keepalive": _keepalive,
    "grace": _grace,
    "issue_token": _issue_token,
    "close_session": _close_session,
    "allocate": _allocate,
    "release": _release,
    "evict": _evict,
    "evict_matching": _evict_matching,
    "set_debugregs": _set_debugregs,
    "access": _access,
    "report_hit": _report_hit,
    "observe": _observe,
    "task_exited": _task_exited,
    "rearm": _rearm,
    "configure": _configure,
    "trace": _trace,
    "untrace": _untrace,
}


def execute(arb: Arbiter, command: Command) -> Outcome:
    """Run one command against the arbiter: applies fully or raises a CoreError."""
    return OPS[command["op"]](arb, command)


def replay(arb: Arbiter, command: Command) -> Outcome:
    """Run a journaled command again, the kernel answering what it answered then (the command's
    "kernel" facts) without being asked."""
    kernel, arb.kernel = arb.kernel, Replay(command.get("kernel"))
    try:
        return execute(arb, command)
    finally:
        arb.kernel = kernel

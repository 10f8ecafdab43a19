"""The audit: what must hold of a daemon under contention, checked from what a client can see.

Everything here is a pure function of plain data in wire form: events as the admin stream sends
them (`/v1/events`), snapshots as `GET /v1/state` returns them, the 409 refusals the clients got,
and the eviction notices the clients received on their own streams. So the audit runs the same on
a live run and on a doctored log in a unit test.

The rules (DESIGN sections 3, 4, 10):
- no snapshot shows an oversubscribed CPU: per CPU and pool (budget), the CPU-held registers plus
  the largest task's registers fit the slots, every index is in range, no register is claimed by two
  watchpoints, and CPU-held indices are disjoint from every task's; the daemon's own counts agree;
- a refusal names its blockers, and each of them is non-evictable or of a priority at least the
  request's (so a ptrace-class request never loses to an evictable lower holder);
- the event log is contiguous, and the initial snapshot with the log folded over it equals every
  later snapshot at that snapshot's `event_id`, the final one included;
- every eviction of a followed session's allocation reached that session's stream exactly once.

Identical requests of one scope share a register (DESIGN section 7), so a refusal can name an
evictable lower holder that shares a watchpoint with a higher one; the scenarios never make two
identical requests, and the audit treats such a blocker as a violation.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from debugreg.priorities import Priority

LIVE_STATES = frozenset({"installed", "waiting"})
MAX_DETAILS = 20  # differences listed per violation before the rest are only counted

Json = Mapping[str, Any]
RegisterKey = tuple[int, str, int]  # cpu, pool, index


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule, with enough detail to find it in the daemon's log."""

    kind: str
    detail: str
    event_id: int | None = None
    allocation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A 409 refused answer: the priority asked for and the blockers the daemon named."""

    op: str
    priority: int
    blockers: tuple[Json, ...]
    at: float = 0.0
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """An `evicted` event as the owning session's own stream delivered it."""

    session: str
    allocation: str
    event_id: int
    at: float  # when the daemon evicted (the event's `at`)
    received_at: float  # when the client read it, on the same clock

    @property
    def latency_s(self) -> float:
        return self.received_at - self.at


@dataclass(slots=True)
class AuditResult:
    violations: list[Violation] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.violations

    def kinds(self) -> Counter[str]:
        return Counter(v.kind for v in self.violations)

    def to_dict(self, limit: int = 100) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "violations": [v.to_dict() for v in self.violations[:limit]],
            "violation_count": len(self.violations),
            "violation_kinds": dict(self.kinds()),
            "checked": dict(self.checked),
        }


# ---------------------------------------------------------------------------- snapshots


def _scope_cpus(scope: Json, ncpus: int) -> set[int]:
    if scope.get("kind") == "cpu":
        return {int(scope["cpu"])}
    cpus = scope.get("cpus")
    if cpus is None or cpus == "all":
        return set(range(ncpus))
    return {int(c) for c in cpus}


def _budget(alloc: Json, pool: str, mode_switching: bool) -> str:
    return f"{pool}/{alloc.get('space', 'user')}" if mode_switching else pool


def _identity(alloc: Json) -> tuple[Any, ...]:
    """What makes two allocations share one watchpoint: same scope, range and access."""
    scope = alloc.get("scope") or {}
    cpus = scope.get("cpus")
    return (
        scope.get("kind"),
        scope.get("tid"),
        scope.get("cpu"),
        tuple(cpus) if isinstance(cpus, list) else cpus,
        alloc.get("address"),
        alloc.get("length"),
        alloc.get("access"),
        alloc.get("space"),
    )


def check_snapshot(snapshot: Json) -> list[Violation]:
    """Oversubscription, index and bookkeeping rules of one `GET /v1/state` body."""
    out: list[Violation] = []
    at = int(snapshot.get("event_id", 0))
    host = snapshot.get("host") or {}
    ncpus = int(host.get("cpus", len(snapshot.get("cpus") or ())))
    pools: Mapping[str, int] = host.get("pools") or {}
    mode_switching = bool(host.get("mode_switching", False))
    allocations: Sequence[Json] = snapshot.get("allocations") or ()

    # (cpu, budget) -> domain -> index -> identities; domain is "cpu" or a task id.
    claims: dict[tuple[int, str], dict[Any, dict[int, set[tuple[Any, ...]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(set))
    )
    for alloc in allocations:
        aid = str(alloc.get("id"))
        state = alloc.get("state")
        registers: Sequence[Json] = alloc.get("registers") or ()
        if state == "waiting":
            if registers:
                out.append(
                    Violation(
                        "waiting-with-registers", f"{aid} waits but holds {registers}", at, aid
                    )
                )
            continue
        if state != "installed":
            out.append(
                Violation("terminal-in-snapshot", f"{aid} is {state} in the live set", at, aid)
            )
            continue
        if not registers:
            out.append(Violation("installed-without-registers", f"{aid} holds nothing", at, aid))
            continue
        scope = alloc.get("scope") or {}
        allowed = _scope_cpus(scope, ncpus)
        domain: Any = "cpu" if scope.get("kind") in ("cpu", "cpus") else int(scope.get("tid", 0))
        ident = _identity(alloc)
        for reg in registers:
            cpu, pool, index = int(reg["cpu"]), str(reg["pool"]), int(reg["index"])
            slots = pools.get(pool)
            if slots is None:
                out.append(
                    Violation(
                        "unknown-pool", f"{aid} holds {pool}, not a pool of this host", at, aid
                    )
                )
                continue
            if not 0 <= index < slots:
                out.append(
                    Violation(
                        "index-out-of-range",
                        f"{aid} holds {pool}{index} of {slots} on CPU {cpu}",
                        at,
                        aid,
                    )
                )
            if cpu not in allowed or not 0 <= cpu < ncpus:
                out.append(
                    Violation(
                        "register-outside-scope",
                        f"{aid} holds a register on CPU {cpu}, outside {scope}",
                        at,
                        aid,
                    )
                )
            claims[(cpu, _budget(alloc, pool, mode_switching))][domain][index].add(ident)

    views: dict[tuple[int, str], Json] = {}
    for view in snapshot.get("cpus") or ():
        for budget, pool_view in (view.get("pools") or {}).items():
            views[(int(view["cpu"]), str(budget))] = pool_view

    for key in sorted(set(claims) | set(views)):
        cpu, budget = key
        slots = int(pools.get(budget.split("/")[0], (views.get(key) or {}).get("slots", 0)))
        domains = claims.get(key, {})
        cpu_indices = set(domains.get("cpu", {}))
        task_counts = {d: len(ix) for d, ix in domains.items() if d != "cpu"}
        for domain, indices in domains.items():
            for index, idents in indices.items():
                if len(idents) > 1:
                    who = "CPU holders" if domain == "cpu" else f"task {domain}"
                    out.append(
                        Violation(
                            "index-collision",
                            f"CPU {cpu} {budget}{index}: {len(idents)} different watchpoints "
                            f"of {who}",
                            at,
                        )
                    )
            if domain != "cpu" and cpu_indices & set(indices):
                shared = sorted(cpu_indices & set(indices))
                out.append(
                    Violation(
                        "index-collision",
                        f"CPU {cpu} {budget}: task {domain} and a CPU holder both use "
                        f"indices {shared}",
                        at,
                    )
                )
        top = max(task_counts.values(), default=0)
        if len(cpu_indices) + top > slots:
            out.append(
                Violation(
                    "oversubscribed",
                    f"CPU {cpu} {budget}: {len(cpu_indices)} CPU-held + {top} task registers "
                    f"> {slots} slots",
                    at,
                )
            )
        view = views.get(key)
        if view is not None:
            held, task_max = int(view.get("cpu_held", 0)), int(view.get("max_task_held", 0))
            if held + task_max > int(view.get("slots", slots)):
                out.append(
                    Violation(
                        "oversubscribed",
                        f"CPU {cpu} {budget}: the daemon counts {held} CPU-held + {task_max} "
                        f"task registers > {view.get('slots')} slots",
                        at,
                    )
                )
            if (held, task_max) != (len(cpu_indices), top):
                out.append(
                    Violation(
                        "count-mismatch",
                        f"CPU {cpu} {budget}: the daemon counts {held} CPU-held and {task_max} "
                        f"for the fullest task; the records hold {len(cpu_indices)} and {top}",
                        at,
                    )
                )

    live_waiting = {str(a.get("id")) for a in allocations if a.get("state") == "waiting"}
    listed_waiting = {str(w) for w in snapshot.get("waiting") or ()}
    if live_waiting != listed_waiting:
        out.append(
            Violation(
                "waiting-list-mismatch",
                f"waiting records {sorted(live_waiting - listed_waiting)[:5]} not listed, "
                f"listed {sorted(listed_waiting - live_waiting)[:5]} not waiting",
                at,
            )
        )
    sessions = {str(s.get("id")): s for s in snapshot.get("sessions") or ()}
    for alloc in allocations:
        owner = alloc.get("session")
        if owner is None:
            continue
        aid = str(alloc.get("id"))
        session = sessions.get(str(owner))
        if session is None:
            out.append(
                Violation("orphan-allocation", f"{aid} belongs to closed session {owner}", at, aid)
            )
        elif aid not in (session.get("allocations") or ()):
            out.append(
                Violation("session-mismatch", f"session {owner} does not list {aid}", at, aid)
            )
    return out


# ---------------------------------------------------------------------------- refusals


def check_refusals(refusals: Iterable[Refusal]) -> list[Violation]:
    """A refusal must name what blocked it, and only holders the request may not evict."""
    out: list[Violation] = []
    for refusal in refusals:
        cls = "ptrace-class " if refusal.priority >= Priority.PTRACE else ""
        if not refusal.blockers:
            out.append(
                Violation(
                    "refusal-without-blocker",
                    f"a {cls}{refusal.op} at priority {refusal.priority} was refused naming no "
                    "blocker",
                )
            )
            continue
        for blocker in refusal.blockers:
            evictable = bool(blocker.get("evictable", True))
            priority = int(blocker.get("priority", 0))
            if evictable and priority < refusal.priority:
                out.append(
                    Violation(
                        "refused-by-evictable-lower",
                        f"a {cls}{refusal.op} at priority {refusal.priority} was refused, blocked "
                        f"by evictable {blocker.get('allocation')} at priority {priority}",
                        allocation=str(blocker.get("allocation")),
                    )
                )
    return out


# ---------------------------------------------------------------------------- the event log


def check_event_log(events: Sequence[Json], after: int) -> list[Violation]:
    """Event ids run after..n in order with no gap, no repeat and no `reset`."""
    out: list[Violation] = []
    expected = after + 1
    for ev in events:
        eid = int(ev["id"])
        if ev.get("type") == "reset":
            out.append(Violation("event-log-reset", "the admin stream was reset: events lost", eid))
            continue
        if eid < expected:
            out.append(Violation("event-duplicate", f"event {eid} again after {expected - 1}", eid))
            continue
        if eid > expected:
            out.append(Violation("event-gap", f"events {expected}..{eid - 1} never arrived", eid))
        expected = eid + 1
    return out


@dataclass(frozen=True, slots=True)
class Record:
    """What replay compares of an allocation: state, generation and concrete registers."""

    state: str
    generation: int
    registers: tuple[RegisterKey, ...]

    @classmethod
    def of(cls, alloc: Json) -> Record:
        regs = tuple(
            sorted(
                (int(r["cpu"]), str(r["pool"]), int(r["index"]))
                for r in alloc.get("registers") or ()
            )
        )
        return cls(str(alloc.get("state")), int(alloc.get("generation", 0)), regs)


@dataclass(slots=True)
class Replay:
    """The live allocations and open sessions after folding events over a snapshot."""

    event_id: int
    allocations: dict[str, Record]
    sessions: set[str]

    @classmethod
    def start(cls, snapshot: Json) -> Replay:
        return cls(
            int(snapshot.get("event_id", 0)),
            {str(a["id"]): Record.of(a) for a in snapshot.get("allocations") or ()},
            {str(s["id"]) for s in snapshot.get("sessions") or ()},
        )

    def apply(self, ev: Json) -> None:
        self.event_id = max(self.event_id, int(ev["id"]))
        kind = ev.get("type")
        if kind == "session_opened" and ev.get("session"):
            self.sessions.add(str(ev["session"]))
        elif kind == "session_closed" and ev.get("session"):
            self.sessions.discard(str(ev["session"]))
        alloc = ev.get("allocation")
        if alloc is None:
            return
        aid = str(alloc["id"])
        if alloc.get("state") in LIVE_STATES:
            self.allocations[aid] = Record.of(alloc)
        else:
            self.allocations.pop(aid, None)

    def differences(self, snapshot: Json) -> list[str]:
        """How `snapshot` differs from this replay (empty when equal)."""
        actual = {str(a["id"]): Record.of(a) for a in snapshot.get("allocations") or ()}
        diffs: list[str] = []
        for aid in sorted(set(actual) | set(self.allocations), key=_natural):
            mine, theirs = self.allocations.get(aid), actual.get(aid)
            if mine != theirs:
                diffs.append(f"{aid}: replay {_show(mine)}, snapshot {_show(theirs)}")
        sessions = {str(s["id"]) for s in snapshot.get("sessions") or ()}
        if sessions != self.sessions:
            missing, extra = sorted(self.sessions - sessions), sorted(sessions - self.sessions)
            diffs.append(
                f"sessions: replay has {missing[:5]} not in snapshot, snapshot {extra[:5]}"
            )
        return diffs


def _natural(text: str) -> tuple[str, int]:
    head = text.rstrip("0123456789")
    tail = text[len(head) :]
    return head, int(tail) if tail else -1


def _show(record: Record | None) -> str:
    if record is None:
        return "absent"
    regs = ",".join(f"{c}:{p}{i}" for c, p, i in record.registers) or "-"
    return f"{record.state} gen {record.generation} [{regs}]"


def check_replay(
    initial: Json, events: Sequence[Json], snapshots: Sequence[Json]
) -> list[Violation]:
    """Each snapshot equals `initial` with the log folded over it up to the snapshot's id."""
    out: list[Violation] = []
    replay = Replay.start(initial)
    ordered = sorted(events, key=lambda e: int(e["id"]))
    last = int(ordered[-1]["id"]) if ordered else replay.event_id
    i = 0
    for snap in sorted(snapshots, key=lambda s: int(s.get("event_id", 0))):
        at = int(snap.get("event_id", 0))
        if at < replay.event_id:
            continue  # taken before the log starts: nothing to compare it with
        if at > last:
            out.append(
                Violation(
                    "event-log-incomplete",
                    f"a snapshot at event {at} is past the last event received ({last})",
                    at,
                )
            )
            continue
        while i < len(ordered) and int(ordered[i]["id"]) <= at:
            if ordered[i].get("type") != "reset":
                replay.apply(ordered[i])
            i += 1
        diffs = replay.differences(snap)
        if diffs:
            shown = "; ".join(diffs[:MAX_DETAILS])
            more = f" (and {len(diffs) - MAX_DETAILS} more)" if len(diffs) > MAX_DETAILS else ""
            out.append(Violation("replay-mismatch", f"at event {at}: {shown}{more}", at))
    return out


# ---------------------------------------------------------------------------- notices


def expected_notices(events: Iterable[Json], sessions: Collection[str]) -> dict[int, Json]:
    """The `evicted` events whose owner is a followed session, by event id."""
    return {
        int(ev["id"]): ev
        for ev in events
        if ev.get("type") == "evicted" and ev.get("session") in sessions
    }


def check_notices(
    events: Sequence[Json], notices: Sequence[Notice], sessions: Collection[str]
) -> list[Violation]:
    """Every eviction of a followed session's allocation reached that session exactly once."""
    out: list[Violation] = []
    expected = expected_notices(events, sessions)
    received: dict[int, list[Notice]] = defaultdict(list)
    for notice in notices:
        received[notice.event_id].append(notice)
    for eid, ev in sorted(expected.items()):
        alloc = str((ev.get("allocation") or {}).get("id"))
        got = received.get(eid, [])
        if not got:
            out.append(
                Violation(
                    "missing-notice",
                    f"session {ev.get('session')} never received the eviction of {alloc}",
                    eid,
                    alloc,
                )
            )
        elif len(got) > 1:
            out.append(
                Violation(
                    "duplicate-notice", f"{alloc}'s eviction arrived {len(got)} times", eid, alloc
                )
            )
        for notice in got:
            if notice.session != ev.get("session") or notice.allocation != alloc:
                out.append(
                    Violation(
                        "misdelivered-notice",
                        f"eviction of {alloc} (session {ev.get('session')}) arrived as "
                        f"{notice.allocation} on session {notice.session}",
                        eid,
                        alloc,
                    )
                )
    known = {int(ev["id"]) for ev in events}
    for eid, got in sorted(received.items()):
        if eid in expected:
            continue
        why = "is not an eviction of that session" if eid in known else "is not in the event log"
        for notice in got:
            out.append(
                Violation(
                    "unexpected-notice",
                    f"session {notice.session} got an eviction notice {eid} that {why}",
                    eid,
                    notice.allocation,
                )
            )
    return out


# ---------------------------------------------------------------------------- everything


def audit(
    events: Sequence[Json],
    snapshots: Sequence[Json],
    refusals: Sequence[Refusal],
    *,
    initial: Json,
    notices: Sequence[Notice] = (),
    sessions: Collection[str] = (),
) -> AuditResult:
    """Every rule over one run: `initial` is the snapshot the event log starts after."""
    result = AuditResult()
    for snap in (initial, *snapshots):
        result.violations.extend(check_snapshot(snap))
    result.violations.extend(check_refusals(refusals))
    result.violations.extend(check_event_log(events, int(initial.get("event_id", 0))))
    result.violations.extend(check_replay(initial, events, snapshots))
    result.violations.extend(check_notices(events, notices, sessions))
    result.checked = {
        "snapshots": len(snapshots) + 1,
        "events": len(events),
        "refusals": len(refusals),
        "evictions": len(expected_notices(events, sessions)),
        "notices": len(notices),
    }
    return result


# ---------------------------------------------------------------------------- compact forms

_ALLOCATION_FIELDS = (
    "id",
    "session",
    "state",
    "scope",
    "address",
    "length",
    "access",
    "space",
    "generation",
    "registers",
)


def compact_event(ev: Json) -> dict[str, Any]:
    """The part of an event the audit reads: a long run keeps hundreds of thousands."""
    out: dict[str, Any] = {"id": ev["id"], "type": ev.get("type"), "at": ev.get("at")}
    if ev.get("session") is not None:
        out["session"] = ev["session"]
    alloc = ev.get("allocation")
    if alloc is not None:
        out["allocation"] = {
            "id": alloc["id"],
            "session": alloc.get("session"),
            "state": alloc.get("state"),
            "generation": alloc.get("generation", 0),
            "registers": alloc.get("registers") or [],
        }
    return out


def compact_snapshot(snapshot: Json) -> dict[str, Any]:
    """The part of a `GET /v1/state` body the audit reads."""
    return {
        "event_id": snapshot.get("event_id", 0),
        "host": snapshot.get("host") or {},
        "sessions": [
            {"id": s["id"], "allocations": list(s.get("allocations") or ())}
            for s in snapshot.get("sessions") or ()
        ],
        "allocations": [
            {k: a.get(k) for k in _ALLOCATION_FIELDS} for a in snapshot.get("allocations") or ()
        ],
        "waiting": list(snapshot.get("waiting") or ()),
        "cpus": [
            {
                "cpu": view["cpu"],
                "pools": {
                    name: {k: p.get(k) for k in ("slots", "cpu_held", "max_task_held")}
                    for name, p in (view.get("pools") or {}).items()
                },
            }
            for view in snapshot.get("cpus") or ()
        ],
    }

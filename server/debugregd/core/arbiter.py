"""The arbiter: the whole per-task, per-CPU debug register state machine of one host.

Requests go in, events come out, and time is a parameter (`now`, seconds). Like h11, the arbiter
does no I/O and keeps no clock: the daemon, the tests and the benchmarks drive this same object.
Every public operation either applies fully and returns the events it caused, in order, or raises a
`CoreError` and changes nothing. The same operations give the same events.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from debugreg.limits import MAX_BLOCKERS, TID_LIMIT, TTL_MAX_S
from debugreg.priorities import OUTSIDE_PRIORITY, Priority
from debugregd.core import dr7 as dr7_abi
from debugregd.core import eviction, registers
from debugregd.core.admission import PoolBudget
from debugregd.core.errors import (
    CoreError,
    Forbidden,
    InvalidRequest,
    InvalidTransition,
    KernelRefused,
    LimitReached,
    NotFound,
    Refused,
    Unavailable,
)
from debugregd.core.kernel import (
    DENIED,
    INVALID,
    NO_TASK,
    Kernel,
    Measurement,
    NoRoom,
    Rejected,
    Unarmed,
)
from debugregd.core.model import (
    Allocation,
    Event,
    OnEvict,
    OutsideHolder,
    OutsideTarget,
    Request,
    Scope,
    ScopeKind,
    Session,
    Watchpoint,
    parse_priority,
    share_key,
)
from debugregd.core.profiles import Access, Profile, Space, make_profile, x86_64
from debugregd.core.states import (
    EVENT_OF,
    LIVE,
    TERMINAL,
    TRANSITIONS,
    State,
    Trigger,
    next_state,
)
from debugregd.core.watch import Chunk

# Enum members bound once: on Python 3.11 each `State.INSTALLED` lookup costs ~200 ns, and
# the hot path takes a dozen of them per operation.
ACCESS_EXEC = Access.EXEC
ACCESS_WRITE = Access.WRITE
EVICT_TO_WAIT = OnEvict.WAIT
KIND_TASK = ScopeKind.TASK
SPACE_KERNEL = Space.KERNEL
SPACE_USER = Space.USER
INSTALLED = State.INSTALLED
WAITING = State.WAITING
ON_ADMIT = Trigger.ADMIT
ON_EVICT = Trigger.EVICT
ON_EVICT_TO_WAIT = Trigger.EVICT_TO_WAIT
ON_EXPIRE = Trigger.EXPIRE
ON_QUEUE = Trigger.QUEUE
ON_REINSTALL = Trigger.REINSTALL
ON_RELEASE = Trigger.RELEASE
ON_REJECT = Trigger.REJECT
HIT_ACCESSES = ("exec", "read", "write")
REJECTION_ERRORS: dict[str, type[CoreError]] = {
    NO_TASK: NotFound,
    INVALID: InvalidRequest,
    DENIED: Forbidden,
}


@dataclass(slots=True)
class RawTask:
    """A task's debug registers as its ptrace user last wrote them (DESIGN section 8)."""

    tid: int
    session: str | None
    addresses: tuple[int, int, int, int] = (0, 0, 0, 0)
    dr7: int = 0
    allocations: dict[int, str] = field(default_factory=dict)  # DRn -> allocation id

    def to_dict(self) -> dict[str, Any]:
        return {
            "tid": self.tid,
            "session": self.session,
            "addresses": list(self.addresses),
            "dr7": self.dr7,
            "allocations": {str(n): a for n, a in self.allocations.items()},
        }


class Arbiter:
    """Owns every session, allocation and register file of one host."""

    def __init__(
        self,
        profile: Profile | None = None,
        ncpus: int = 1,
        *,
        mode_switching: bool = False,
        history: int = 10_000,
    ) -> None:
        if ncpus < 1:
            raise InvalidRequest(f"a host has at least one CPU, got {ncpus}")
        self.profile = profile or x86_64()
        self.ncpus = ncpus
        self.mode_switching = mode_switching
        self.history_limit = history
        self.all_cpus = tuple(range(ncpus))
        spaces = ("user", "kernel") if mode_switching else ("",)
        self.budgets: dict[str, PoolBudget] = {}
        for pool, slots in self.profile.pools.items():
            for space in spaces:
                key = f"{pool}/{space}" if space else pool
                self.budgets[key] = PoolBudget(key, slots, ncpus)
        self.sessions: dict[str, Session] = {}
        self.allocations: dict[str, Allocation] = {}  # live: installed or waiting
        self.history: OrderedDict[str, Allocation] = OrderedDict()  # terminal, bounded
        self.raw: dict[int, RawTask] = {}
        # Registers users outside debugregd hold, by (budget, kind, cpu or tid): see `observe`.
        self.outside: dict[tuple[str, str, int], OutsideHolder] = {}
        # The hardware: asked to arm what is installed (set by the daemon; none in tests).
        self.kernel: Kernel = Unarmed()
        # For debuggers that do not ask (DESIGN section 12): registers per CPU that requests
        # below ptrace must leave free, and the tasks a tracer is attached to, by who traces.
        self.reserved_for_ptrace = 0
        self.traced: dict[int, str] = {}
        # Per-session limits (0: none), so that no one session can make every decision slow:
        # its live allocations, and the waiting ones its requests may add to the queue.
        self.max_allocations_per_session = 0
        self.max_waiting_per_session = 0
        self.event_id = 0
        self.generation = 0
        self._seq = 0  # arrival and install order
        self._next_allocation = 0
        self._next_session = 0
        self._shared: dict[tuple[Any, ...], Watchpoint] = {}
        self._waiting: list[tuple[int, int, str]] = []  # (-priority, seq, id): service order
        # The same waiters indexed by what can serve them (`_waiter_keys`), each list in service
        # order: freeing registers looks only at the waiters of the CPUs and tasks it freed.
        self._waiters: dict[tuple[Any, ...], list[tuple[int, int, str]]] = {}
        self._waiting_of: dict[str, int] = {}  # session id -> its waiting allocations
        self._expiry: list[tuple[float, str]] = []  # lazy heap of (expires_at, session id)
        # Per-operation scratch: events so far, index baselines for `moved`, and the keys of
        # `_waiters` whose waiters may fit now (("budget", name): every waiter of a budget).
        self._events: list[Event] = []
        self._baseline: dict[Watchpoint, dict[int, tuple[int, ...]]] = {}
        self._freed: set[tuple[Any, ...]] = set()
        self._held_back: set[str] = set()
        self._announced: dict[str, dict[int, tuple[int, ...]]] = {}
        # Budgets to reconsider at the next operation: an admin requeued a waiter there that
        # the evicting operation itself must not reinstall. Part of the state (snapshotted).
        self._recheck: set[str] = set()

    # ------------------------------------------------------------------ sessions

    def open_session(
        self,
        name: str,
        ttl_s: float,
        now: float,
        *,
        max_priority: int | str = Priority.NORMAL,
        allow_non_evictable: bool = False,
        allow_kernel: bool = False,
    ) -> tuple[Session, list[Event]]:
        """Open a lease of `ttl_s` seconds; everything allocated under it dies with it."""
        if not 0 < ttl_s <= TTL_MAX_S:
            raise InvalidRequest(f"ttl_s must be more than 0 and at most 86400, got {ttl_s}")
        top = parse_priority(max_priority)
        self._next_session += 1
        session = Session(
            id=f"s{self._next_session}",
            name=name,
            ttl_s=ttl_s,
            expires_at=now + ttl_s,
            created_at=now,
            max_priority=top,
            allow_non_evictable=allow_non_evictable,
            allow_kernel=allow_kernel,
        )
        self.sessions[session.id] = session
        heapq.heappush(self._expiry, (session.expires_at, session.id))
        self._begin()
        record = session.to_dict()
        del record["id"], record["allocations"]
        self._emit("session_opened", now, session.id, data=record)
        return session, self._end(now)

    def keepalive(self, session_id: str, now: float) -> Session:
        """Renew a lease for another TTL. Causes no event."""
        session = self.session(session_id)
        if session.expires_at <= now:
            # The lease already ran out; the next tick expires it. Renewing it now would make
            # the outcome depend on whether the sweeper happened to run first.
            raise NotFound(f"session {session_id!r} expired at {session.expires_at}")
        session.expires_at = now + session.ttl_s
        heapq.heappush(self._expiry, (session.expires_at, session.id))
        return session

    def close_session(self, session_id: str, now: float) -> list[Event]:
        """End a session and release everything it held."""
        session = self.session(session_id)
        self._begin()
        self._end_session(session, now, ON_RELEASE, "closed")
        return self._end(now)

    def tick(self, now: float) -> list[Event]:
        """Expire every session whose lease ran out by `now`."""
        self._begin()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            at, sid = heapq.heappop(expiry)
            session = self.sessions.get(sid)
            if session is None or session.expires_at != at:
                continue  # closed, or renewed since: a stale heap entry
            self._end_session(session, now, ON_EXPIRE, "expired")
        return self._end(now)

    def next_expiry(self) -> float | None:
        """When the next lease may run out (for the daemon's sweeper)."""
        while self._expiry:
            at, sid = self._expiry[0]
            session = self.sessions.get(sid)
            if session is not None and session.expires_at == at:
                return at
            heapq.heappop(self._expiry)
        return None

    def session(self, session_id: str) -> Session:
        try:
            return self.sessions[session_id]
        except KeyError:
            raise NotFound(f"no open session {session_id!r}; it was closed or expired") from None

    # ------------------------------------------------------------------ allocations

    def allocate(
        self, session_id: str | None, request: Request, now: float
    ) -> tuple[Allocation, list[Event]]:
        """Admit, queue or refuse a request. `session_id=None` acts as the admin.

        Raises Refused (naming the blockers) when it does not fit even after evicting every
        strictly-lower evictable holder and the request did not ask to wait.
        """
        session = None
        if session_id is not None:
            session = self.sessions.get(session_id) or self.session(session_id)
        pool, space, chunks, cpus = self._validate(request, session)
        if session is not None:
            self._check_allocation_limit(session, 1)
        budget = self.budgets[pool if not self.mode_switching else f"{pool}/{space.value}"]
        tid = request.scope.tid
        key = share_key(budget.name, tid, cpus, chunks, request.access, request.arm)
        plan = eviction.FIT
        wp = self._shared.get(key)
        if wp is None:
            plan = self._plan_for(budget, tid, cpus, len(chunks), request.priority)
        if not plan.fits:
            if not request.wait:
                raise Refused(
                    self._refusal_detail(request, plan.blockers), self._name(plan.blockers)
                )
            if session is not None:
                self._check_waiting_limit(session)
        if plan.fits and wp is None:
            # The kernel is asked before anything changes: a refusal leaves no trace.
            wp = self._watchpoint(key, budget, tid, cpus, len(chunks), space)
            self._arm_or_raise(wp, plan.victims)
        alloc = self._new_allocation(session, request, pool, space, chunks, now)
        self._begin()
        if plan.fits:
            assert wp is not None
            if plan.victims:
                self._evict_all(plan.victims, now, *self._evicted_for(alloc))
            self._install(alloc, wp, budget, ON_ADMIT, now)
        else:
            self._queue(alloc, now, plan.blockers)
        return alloc, self._end(now)

    def release(
        self, allocation_id: str, now: float, *, session_id: str | None = None
    ) -> tuple[Allocation, list[Event]]:
        """Let go of an allocation (owner, or admin with `session_id=None`). Idempotent."""
        alloc = self.allocation(allocation_id)
        self._check_owner(alloc, session_id)
        self._begin()
        if alloc.state in LIVE:
            self._finish(alloc, ON_RELEASE, now, "released by owner")
        return alloc, self._end(now)

    def evict(self, allocation_id: str, now: float, reason: str) -> tuple[Allocation, list[Event]]:
        """Take an installed allocation away (admin). With on_evict: wait it is requeued, but
        not reinstalled by the same operation."""
        alloc = self.allocation(allocation_id)
        if alloc.state is not INSTALLED:
            shown = "new" if alloc.state is None else alloc.state.value
            raise InvalidTransition(
                f"allocation {alloc.id} is {shown}, not installed; only installed ones are evicted",
                state=shown,
            )
        self._begin()
        self._evict_one(alloc, now, reason or "evicted by admin", admin=True)
        return alloc, self._end(now)

    def evict_matching(
        self,
        now: float,
        reason: str,
        *,
        cpu: int | None = None,
        tid: int | None = None,
        below_priority: int | None = None,
    ) -> tuple[list[str], list[Event]]:
        """Evict every installed allocation on `cpu`, of task `tid`, below a priority (admin)."""
        if cpu is not None:
            self._check_cpu(cpu)
        chosen = [
            a
            for a in self.allocations.values()
            if a.state is INSTALLED
            and (cpu is None or (a.watchpoint is not None and cpu in a.watchpoint.indices))
            and (tid is None or (a.scope.kind is KIND_TASK and a.scope.tid == tid))
            and (below_priority is None or a.priority < below_priority)
        ]
        self._begin()
        for alloc in chosen:
            self._evict_one(alloc, now, reason or "evicted by admin", admin=True)
        return [a.id for a in chosen], self._end(now)

    def allocation(self, allocation_id: str) -> Allocation:
        alloc = self.allocations.get(allocation_id) or self.history.get(allocation_id)
        if alloc is None:
            raise NotFound(f"no allocation {allocation_id!r} (or it left the bounded history)")
        return alloc

    def waiting(self) -> list[Allocation]:
        """Waiting allocations in service order: priority, then first come first served."""
        return [self.allocations[aid] for _, _, aid in self._waiting]

    def waiting_of(self, session_id: str) -> int:
        """How many of a session's allocations are waiting."""
        return self._waiting_of.get(session_id, 0)

    def _check_allocation_limit(self, session: Session, more: int) -> None:
        limit = self.max_allocations_per_session
        if limit and len(session.allocations) + more > limit:
            raise LimitReached(
                f"session {session.id} holds {len(session.allocations)} live allocations "
                f"(installed or waiting) and may hold at most {limit}; release some first "
                "(DELETE /v1/allocations/{id}), or spread the work over more sessions",
                "allocations",
                limit,
            )

    def _check_waiting_limit(self, session: Session) -> None:
        limit = self.max_waiting_per_session
        waiting = self._waiting_of.get(session.id, 0)
        if limit and waiting >= limit:
            raise LimitReached(
                f"session {session.id} has {waiting} allocations waiting and may queue at most "
                f"{limit}; release a waiting one first, or ask without wait: true (a request "
                "that fits is still installed)",
                "waiting",
                limit,
            )

    # ------------------------------------------------------------------ raw x86 ABI

    def set_debugregs(
        self,
        session_id: str | None,
        tid: int,
        addresses: tuple[int, int, int, int],
        dr7: int,
        now: float,
    ) -> list[Event]:
        """Apply a ptrace-style write of DR0-DR3 and DR7 for task `tid` at ptrace priority,
        all or nothing. Unchanged registers keep their allocations."""
        if self.profile.name != "x86_64":
            raise InvalidRequest("the raw DR0-DR7 ABI exists only on the x86_64 profile")
        self._check_tid(tid)
        session = None if session_id is None else self.session(session_id)
        if session is not None and session.max_priority < Priority.PTRACE:
            raise Forbidden(
                "writing raw debug registers needs a session with max_priority ptrace (700) "
                "or more; open the session with the admin key to get that grant"
            )
        slots = dr7_abi.decode(dr7, addresses)
        raw = self.raw.get(tid)
        if raw is not None and raw.session != session_id and session_id is not None:
            raise Forbidden(f"task {tid}'s debug registers belong to another session")
        old = dict(raw.allocations) if raw else {}
        keep: dict[int, str] = {}
        wanted: list[dr7_abi.RawSlot] = []
        for slot in slots:
            aid = old.get(slot.index)
            current = self.allocations.get(aid) if aid else None
            if current is not None and (current.address, current.length, current.access) == (
                slot.address,
                slot.length,
                slot.access,
            ):
                keep[slot.index] = current.id
            else:
                wanted.append(slot)
        dropped = [
            self.allocations[aid]
            for n, aid in old.items()
            if n not in keep and aid in self.allocations
        ]
        if session is not None and len(wanted) > len(dropped):
            self._check_allocation_limit(session, len(wanted) - len(dropped))
        key = self._budget_key(self.profile.data_pool, SPACE_USER)
        budget = self.budgets[key]
        # A register goes away only when every allocation sharing it is being replaced.
        leaving = {a.id for a in dropped}
        exclude = list(
            {
                a.watchpoint: None
                for a in dropped
                if a.watchpoint is not None and all(h.id in leaving for h in a.watchpoint.holders)
            }
        )
        going = set(exclude)
        # Identical DRs share one register: the new ones, in DR order (the kernel is asked in
        # that order, so a replay asks the same).
        needed: dict[tuple[Any, ...], Watchpoint] = {}
        joined: dict[Watchpoint, None] = {}  # registers already there that a DR shares
        for s in wanted:
            chunks = ((s.address, s.length),)
            share = share_key(key, tid, self.all_cpus, chunks, s.access, True)
            existing = self._shared.get(share)
            if existing is not None and existing not in going:
                joined[existing] = None
            elif share not in needed:
                needed[share] = self._watchpoint(share, budget, tid, self.all_cpus, 1, SPACE_USER)
        weight = len(needed)
        kept = {
            share_key(key, tid, self.all_cpus, a.chunks, a.access, True)
            for a in (self.allocations[i] for i in keep.values())
        }
        if len(needed.keys() | kept) > budget.slots:
            raise InvalidRequest(
                f"dr7 enables {len(needed.keys() | kept)} different watchpoints but this host "
                f"has {budget.slots} debug registers"
            )
        # A register the write shares is counted as staying: evicting it would take the
        # register the write was promised.
        plan = eviction.plan_task(
            budget, tid, self.all_cpus, weight, Priority.PTRACE, exclude, keep=joined
        )
        if not plan.fits:
            raise Refused(
                f"the debug registers written for task {tid} do not fit at ptrace priority",
                self._name(plan.blockers),
            )
        if needed or plan.victims or exclude:
            freeing = [*exclude, *plan.victims]
            self._raise_unless_armed(self.kernel.arm(tuple(needed.values()), freeing))
        self._begin()
        for alloc in dropped:
            self._finish(alloc, ON_RELEASE, now, "replaced by a debug register write")
        self._evict_all(
            plan.victims,
            now,
            f"evicted to make room for a debug register write at priority {int(Priority.PTRACE)}",
            {"allocation": None, "session": session_id, "tid": tid},
        )
        if raw is None:
            raw = self.raw[tid] = RawTask(tid, session_id)
        raw.session, raw.addresses, raw.dr7, raw.allocations = session_id, addresses, dr7, keep
        for slot in wanted:
            request = Request(
                Scope.task(tid),
                slot.address,
                slot.length,
                slot.access,
                int(Priority.PTRACE),
                True,
                EVICT_TO_WAIT,
                False,
                f"ptrace DR{slot.index}",
            )
            chunks = ((slot.address, slot.length),)
            alloc = self._new_allocation(
                session, request, self.profile.data_pool, SPACE_USER, chunks, now
            )
            share = share_key(key, tid, self.all_cpus, chunks, slot.access, True)
            wp = needed.get(share) or self._shared[share]
            self._install(alloc, wp, budget, ON_ADMIT, now)
            raw.allocations[slot.index] = alloc.id
        raw.allocations = dict(sorted(raw.allocations.items()))
        return self._end(now)

    def debugregs(self, tid: int) -> dict[str, Any]:
        """DR0-DR3 and DR7 as last written, with the allocation behind each enabled register."""
        raw = self.raw.get(tid) or RawTask(tid, None)
        out: dict[str, Any] = {f"dr{n}": raw.addresses[n] for n in range(4)}
        out["dr7"] = raw.dr7
        out["tid"] = tid
        out["session"] = raw.session
        out["allocations"] = {f"dr{n}": aid for n, aid in raw.allocations.items()}
        return out

    # ------------------------------------------------------------------ simulated hits

    def access(
        self,
        cpu: int,
        tid: int | None,
        address: int,
        length: int,
        kind: str,
        now: float,
        ip: int | None = None,
    ) -> tuple[list[str], list[Event]]:
        """A simulated memory access on `cpu` by task `tid` (from instruction `ip`): which
        installed watchpoints fire. Each reports it as the hardware's do (`report_hit`): one hit,
        from one call site."""
        self._check_cpu(cpu)
        if kind not in HIT_ACCESSES:
            raise InvalidRequest(f"access must be one of {', '.join(HIT_ACCESSES)}, got {kind!r}")
        if length < 1:
            raise InvalidRequest(f"length must be at least 1, got {length}")
        end = address + length
        hits: list[Allocation] = []
        for budget in self.budgets.values():
            for wp in budget.holders_on(cpu, tid):
                for alloc in wp.holders:
                    if _triggers(alloc.access, kind) and any(
                        a < end and address < a + n for a, n in alloc.chunks
                    ):
                        hits.append(alloc)
        hits.sort(key=lambda a: a.seq)
        site = {
            "ip": None if ip is None else f"0x{ip:x}",
            "pid": tid,
            "symbol": None,
            "mapping": None,
            "first": now,
            "last": now,
            "count": 1,
            "tids": [] if tid is None else [tid],
            "threads": 0 if tid is None else 1,
            "cpus": [cpu],
        }
        data = {
            "count": 1,
            "sampled": 1,
            "lost": 0,
            "interval_s": 0.0,
            "sites": [site],
            "other_sites": 0,
            "other_count": 0,
            "cpu": cpu,
            "tid": tid,
            "address": address,
            "length": length,
            "access": kind,
            "backend": "sim",
        }
        self._begin()
        for alloc in hits:
            self._hit(alloc, now, data)
        return [a.id for a in hits], self._end(now)

    def report_hit(self, allocation_id: str, now: float, data: dict[str, Any]) -> list[Event]:
        """Hits a hardware backend observed on an allocation (`data["count"]` of them, with
        `data["lost"]` samples lost): a `hit` event carrying them and the allocation's totals.
        The last report of a watch may come after it ended."""
        alloc = self.allocation(allocation_id)
        self._begin()
        self._hit(alloc, now, data)
        return self._end(now)

    def _hit(self, alloc: Allocation, now: float, data: dict[str, Any]) -> None:
        alloc.hits += int(data.get("count") or 0)
        alloc.hits_lost += int(data.get("lost") or 0)
        self._emit("hit", now, alloc.session, alloc, {**data, "total": alloc.hits})

    # ------------------------------------------------------------------ the world outside

    def observe(self, measured: Measurement, now: float) -> list[Event]:
        """Record what users outside debugregd were measured to hold (DESIGN section 12).

        Each measured target's outside holder is set to what the kernel holds there beyond
        debugregd's own watchpoints and reservations (never more than leaves the register files
        consistent); a change is an `outside` event, and room that came back serves waiters.
        """
        if measured.budget not in self.budgets:
            raise InvalidRequest(f"no budget {measured.budget!r} on this host")
        self._begin()
        self._apply_measurement(measured, now)
        return self._end(now)

    def outside_after(self, measured: Measurement) -> bool:
        """Whether `observe(measured)` would change anything (so that a re-measurement that
        found the same is not journaled)."""
        budget = self.budgets.get(measured.budget)
        if budget is None:
            return False
        return any(
            (n, held) != self._outside_of(budget.name, target)
            for target, n, held in self._outside_counts(budget, measured)
        )

    def task_exited(self, tid: int, now: float) -> list[Event]:
        """Task `tid` is gone: its allocations expire and what was held outside on it goes."""
        self._check_tid(tid)
        self._begin()
        self._end_task(tid, now)
        return self._end(now)

    def rearm(self, now: float) -> list[Event]:
        """Arm again everything installed, in install order (after a restart: the journal says
        what was installed, the kernel has nothing of it). What the kernel refuses is evicted
        (requeued with on_evict: wait) and who holds the room is recorded."""
        self._begin()
        measured: dict[str, Measurement] = {}
        reason = "the kernel refused it when debugregd restarted"
        wps = sorted(
            {
                id(a.watchpoint): a.watchpoint
                for a in self.allocations.values()
                if a.watchpoint is not None
            }.values(),
            key=lambda w: w.seq,
        )
        for wp in wps:
            if not wp.armed or not wp.holders:
                continue
            answer = self.kernel.arm((wp,), ())
            if answer is None:
                continue
            if isinstance(answer, NoRoom):
                m = answer.measured
                into = measured.setdefault(m.budget, Measurement(m.budget))
                into.cpus.update(m.cpus)
                into.tasks.update(m.tasks)
                into.others.update(m.others)
                why = f"{reason}: users outside debugregd hold the registers"
            elif answer.why == NO_TASK and wp.tid is not None and wp.tid > 0:
                self._end_task(wp.tid, now)
                continue
            else:
                why = f"{reason}: {answer.detail}"
            for alloc in list(wp.holders):
                self._evict_one(alloc, now, why, admin=False)
        # Recorded once every refused holder is off the register files, so they stay consistent.
        for m in measured.values():
            self._apply_measurement(m, now)
        # Hits since a watch's last report before the stop (a crash loses up to an interval's)
        # and while nothing watched are unknown: said, not hidden.
        for alloc in sorted(self.allocations.values(), key=lambda a: a.seq):
            if alloc.state is INSTALLED and alloc.arm:
                self._emit(
                    "hit",
                    now,
                    alloc.session,
                    alloc,
                    {
                        "count": 0,
                        "unknown": True,
                        "total": alloc.hits,
                        "reason": "debugregd restarted: hits after its last report before it "
                        "stopped, and while it was down, are unknown",
                    },
                )
        return self._end(now)

    # ------------------------------------------------------------------ debuggers that do not ask

    def configure(
        self,
        now: float,
        *,
        reserved_for_ptrace: int | None = None,
        max_allocations_per_session: int | None = None,
        max_waiting_per_session: int | None = None,
    ) -> list[Event]:
        """Change host settings that decide admission (each one given; None leaves it):

        - `reserved_for_ptrace` registers per CPU are kept out of reach of requests below
          ptrace, so a debugger that does not ask (ptrace) always finds that many. Holders
          already above the line stay; fewer kept back serves waiters.
        - `max_allocations_per_session` live (installed or waiting) allocations, and
          `max_waiting_per_session` waiting ones its requests may queue, per session (0: no
          limit). What a session holds already stays; only new requests are refused.
        """
        smallest = min(b.slots for b in self.budgets.values())
        if reserved_for_ptrace is not None and not 0 <= reserved_for_ptrace < smallest:
            raise InvalidRequest(
                f"reserve_for_ptrace must be from 0 to {smallest - 1} (this host's pools have "
                f"{smallest} registers), got {reserved_for_ptrace}"
            )
        for name, limit in (
            ("max_allocations_per_session", max_allocations_per_session),
            ("max_waiting_per_session", max_waiting_per_session),
        ):
            if limit is not None and limit < 0:
                raise InvalidRequest(f"{name} must be 0 (no limit) or more, got {limit}")
        self._begin()
        if reserved_for_ptrace is not None:
            if reserved_for_ptrace < self.reserved_for_ptrace:
                self._free_budgets(self.budgets)
            self.reserved_for_ptrace = reserved_for_ptrace
        if max_allocations_per_session is not None:
            self.max_allocations_per_session = max_allocations_per_session
        if max_waiting_per_session is not None:
            self.max_waiting_per_session = max_waiting_per_session
        return self._end(now)

    def trace(self, tid: int, tracer: str, now: float) -> list[Event]:
        """A debugger (`tracer`, e.g. "PID 77 (gdb)") attached to task `tid`: its allocations
        below ptrace are evicted (on_evict: wait ones wait until it detaches), and requests below
        ptrace for the task get nothing while it stays."""
        self._check_tid(tid)
        self._begin()
        self.traced[tid] = tracer
        reason = f"task {tid} is being debugged by {tracer}"
        for alloc in [
            a
            for a in self.allocations.values()
            if a.state is INSTALLED
            and a.scope.kind is KIND_TASK
            and a.scope.tid == tid
            and a.priority < Priority.PTRACE
        ]:
            self._evict_one(alloc, now, reason, admin=False)
        return self._end(now)

    def untrace(self, tid: int, now: float) -> list[Event]:
        """The debugger of task `tid` detached: what waited for it may come back."""
        if self.traced.pop(tid, None) is None:
            return []
        self._begin()
        self._free_budgets(self.budgets)
        return self._end(now)

    def _outside_counts(
        self, budget: PoolBudget, measured: Measurement
    ) -> list[tuple[OutsideTarget, int, int]]:
        """Each measured target's outside holder: (target, measured, held). Measured is what
        users outside hold there; held is as much of it as keeps every CPU's register file
        within its slots.

        A reservation's debugger arms its registers through ptrace, so once it has, the kernel
        shows them as held outside too: they are counted twice while it holds them, and the
        cap absorbs what does not fit. Subtracting them instead would count too few whenever
        the debugger has not written them yet, and give its room away before it takes it."""
        slots = budget.slots
        out: list[tuple[OutsideTarget, int, int]] = []
        held = {
            c: budget.cpu_count(c) - self._outside_of(budget.name, ("cpu", c))[1]
            for c in measured.cpus
        }
        cpu_held = [budget.cpu_count(c) for c in self.all_cpus]
        for c, n in sorted(measured.cpus.items()):
            counted = max(0, min(n, slots - held[c] - budget.max_task(c)))
            out.append((("cpu", c), n, counted))
            cpu_held[c] = held[c] + counted  # the CPU holders just measured count for tasks
        for tid, n in sorted(measured.tasks.items()):
            mine = self._outside_of(budget.name, ("task", tid))[1]
            room = slots - max(
                cpu_held[c] + budget.task_count(tid, c) - mine for c in self.all_cpus
            )
            out.append((("task", tid), n, max(0, min(n, room))))
        for c, n in sorted(measured.others.items()):
            out.append((("others", c), n, max(0, min(n, slots - cpu_held[c]))))
        return out

    def _apply_measurement(self, measured: Measurement, now: float) -> None:
        budget = self.budgets[measured.budget]
        for target, n, held in self._outside_counts(budget, measured):
            self._set_outside(budget, target, n, held, now)

    def _outside_of(self, budget: str, target: OutsideTarget) -> tuple[int, int]:
        """(measured, held) of the outside holder of `target`; (0, 0) where there is none."""
        holder = self.outside.get((budget, *target))
        return (0, 0) if holder is None else (holder.measured, holder.held)

    def _outside_place(self, target: OutsideTarget) -> tuple[int | None, tuple[int, ...]]:
        """Where an outside holder of `target` counts: (task or None for CPU-wide, CPUs)."""
        kind, n = target
        if kind == "cpu":
            return None, (n,)
        if kind == "task":
            return n, self.all_cpus
        return -(n + 1), (n,)  # a task debugregd does not manage, seen on CPU n: runs only there

    def _outside_watchpoint(self, budget: str, target: OutsideTarget, weight: int) -> Watchpoint:
        kind, n = target
        tid, cpus = self._outside_place(target)
        key = ("outside", budget, kind, n)
        return Watchpoint(key, budget, tid, cpus, weight, False, 0, outside=target)

    def _set_outside(
        self, budget: PoolBudget, target: OutsideTarget, measured: int, held: int, now: float
    ) -> None:
        """Make the outside holder of `target` what was `measured`, `held` of it counted."""
        key = (budget.name, *target)
        holder = self.outside.get(key)
        before = (0, 0) if holder is None else (holder.measured, holder.held)
        if (measured, held) == before:
            return
        note = self._note_change
        if holder is not None and holder.wp is not None and held != holder.held:
            old = holder.wp
            holder.wp = None
            budget.remove(old)
            self._baseline.pop(old, None)
            registers.assign(budget, old, note)  # what stays packs down
            old.indices = {}
        if measured < before[0] or held < before[1]:
            self._free(budget.name, *self._outside_place(target))  # room came back, or less held
        if not measured:
            self.outside.pop(key, None)
        else:
            if holder is None:
                holder = self.outside[key] = OutsideHolder(target, measured, now)
            holder.measured = measured
            if held and holder.wp is None:
                wp = holder.wp = self._outside_watchpoint(budget.name, target, held)
                self._seq += 1
                wp.seq = self._seq
                budget.add(wp)
                if wp.tid is None:
                    for c in wp.cpus:
                        registers.assign_cpu(budget, c, note)
                else:
                    registers.place_task(budget, wp)
        data = {"pool": budget.name, "target": _target_of(target), "registers": held}
        data.update(previous=before[1], measured=measured)
        self._emit("outside", now, None, data=data)

    def _end_task(self, tid: int, now: float) -> None:
        """Expire every live allocation of task `tid` and forget what was held on it."""
        reason = f"task {tid} exited"
        for alloc in [
            a for a in self.allocations.values() if a.scope.kind is KIND_TASK and a.scope.tid == tid
        ]:
            self._finish(alloc, ON_EXPIRE, now, reason)
        for budget in self.budgets.values():
            if (budget.name, "task", tid) in self.outside:
                self._set_outside(budget, ("task", tid), 0, 0, now)
        self.raw.pop(tid, None)
        self.traced.pop(tid, None)

    # ------------------------------------------------------------------ views

    def cpu_view(self, cpu: int) -> dict[str, Any]:
        """One CPU's register files, index by index: CPU holders and every task's view."""
        self._check_cpu(cpu)
        pools: dict[str, Any] = {}
        for key, budget in self.budgets.items():
            cpu_regs: list[dict[str, Any] | None] = [None] * budget.slots
            for wp in budget.cpu_holders(cpu):
                for index in wp.indices.get(cpu, ()):
                    cpu_regs[index] = _cell(wp)
            tasks = {}
            for tid in budget.tasks_above(cpu, 0):
                if tid < 0:
                    continue  # tasks outside debugregd: in "outside" below
                tasks[str(tid)] = [
                    {"index": i, **_cell(wp)}
                    for wp in budget.task_holders(tid, cpu)
                    for i in wp.indices.get(cpu, ())
                ]
            cpu_wide = self._outside_of(key, ("cpu", cpu))
            others = self._outside_of(key, ("others", cpu))
            pools[key] = {
                "slots": budget.slots,
                "cpu_held": budget.cpu_count(cpu),
                "max_task_held": budget.max_task(cpu),
                "registers": cpu_regs,
                "tasks": tasks,
                "outside": {"cpu": cpu_wide[1], "others": others[1]},
            }
        return {"cpu": cpu, "pools": pools}

    def task_view(self, tid: int) -> dict[str, Any]:
        """A task's live allocations and the indices they hold."""
        allocs = [
            a.to_dict()
            for a in self.allocations.values()
            if a.scope.kind is KIND_TASK and a.scope.tid == tid
        ]
        outside = {
            budget: holder.held
            for (budget, kind, n), holder in self.outside.items()
            if kind == "task" and n == tid
        }
        return {"tid": tid, "allocations": allocs, "outside": outside}

    def outside_records(self) -> list[dict[str, Any]]:
        """What users outside debugregd hold, target by target, as last measured."""
        return [
            {
                "pool": budget,
                "target": _target_of(holder.target),
                "registers": holder.held,
                "measured": holder.measured,
                "since": holder.since,
            }
            for (budget, _, _), holder in sorted(
                self.outside.items(), key=lambda item: (item[1].since, item[0])
            )
        ]

    def outside_targets(self) -> dict[str, dict[str, set[int]]]:
        """Per budget, the targets whose outside holders are worth measuring again: the tasks
        and the CPUs (for users CPU-wide, or on tasks debugregd does not manage) that have one."""
        out: dict[str, dict[str, set[int]]] = {}
        for budget, kind, n in self.outside:
            out.setdefault(budget, {"cpus": set(), "tasks": set(), "others": set()})
            out[budget]["tasks" if kind == "task" else "cpus" if kind == "cpu" else "others"].add(n)
        return out

    def tasks_in_use(self) -> set[int]:
        """Every task with a live task-scope allocation or an outside record: the tasks whose
        exit the daemon watches."""
        tids = {
            a.scope.tid
            for a in self.allocations.values()
            if a.scope.kind is KIND_TASK and a.scope.tid is not None
        }
        tids.update(n for (_, kind, n) in self.outside if kind == "task")
        return tids

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data; `restore` rebuilds an identical arbiter from it."""
        wps: dict[Watchpoint, None] = {}
        for alloc in self.allocations.values():
            if alloc.watchpoint is not None:
                wps[alloc.watchpoint] = None
        return {
            "version": 1,
            "profile": {"name": self.profile.name, "pools": dict(self.profile.pools)},
            "ncpus": self.ncpus,
            "mode_switching": self.mode_switching,
            "history_limit": self.history_limit,
            "counters": {
                "event_id": self.event_id,
                "generation": self.generation,
                "seq": self._seq,
                "allocation": self._next_allocation,
                "session": self._next_session,
            },
            "sessions": [s.to_dict() for s in self.sessions.values()],
            "allocations": [_alloc_state(a) for a in self.allocations.values()],
            "history": [_alloc_state(a) for a in self.history.values()],
            "watchpoints": [
                {"seq": wp.seq, "holders": [a.id for a in wp.holders]}
                for wp in sorted(wps, key=lambda w: w.seq)
            ],
            "raw": [r.to_dict() for r in self.raw.values()],
            "recheck": sorted(self._recheck),
            "reserved_for_ptrace": self.reserved_for_ptrace,
            "max_allocations_per_session": self.max_allocations_per_session,
            "max_waiting_per_session": self.max_waiting_per_session,
            "traced": {str(tid): tracer for tid, tracer in self.traced.items()},
            "outside": [
                {
                    "budget": budget,
                    "kind": kind,
                    "target": n,
                    "measured": holder.measured,
                    "registers": holder.held,
                    "seq": None if holder.wp is None else holder.wp.seq,
                    "since": holder.since,
                }
                for (budget, kind, n), holder in self.outside.items()
            ],
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Arbiter:
        """An arbiter in exactly the state `snapshot` captured: same next ids and events."""
        profile = make_profile(data["profile"]["name"], data["profile"]["pools"])
        arb = cls(
            profile,
            data["ncpus"],
            mode_switching=data["mode_switching"],
            history=data["history_limit"],
        )
        counters = data["counters"]
        arb.event_id = counters["event_id"]
        arb.generation = counters["generation"]
        arb._seq = counters["seq"]
        arb._next_allocation = counters["allocation"]
        arb._next_session = counters["session"]
        for s in data["sessions"]:
            session = Session(
                s["id"],
                s["name"],
                s["ttl_s"],
                s["expires_at"],
                s["created_at"],
                s["max_priority"],
                s["allow_non_evictable"],
                s["allow_kernel"],
                dict.fromkeys(s["allocations"]),
            )
            arb.sessions[session.id] = session
            heapq.heappush(arb._expiry, (session.expires_at, session.id))
        for item in data["allocations"]:
            alloc = _alloc_from_state(item)
            arb.allocations[alloc.id] = alloc
            if alloc.state is WAITING:
                arb._enqueue(alloc)
        for item in data["history"]:
            alloc = _alloc_from_state(item)
            arb.history[alloc.id] = alloc
        # Watchpoints and outside holders go back in install order, which fixes their indices.
        placed: list[tuple[int, Watchpoint]] = []
        for w in data["watchpoints"]:
            holders = [arb.allocations[aid] for aid in w["holders"]]
            first = holders[0]
            budget = arb.budgets[arb._budget_key(first.pool, first.space)]
            cpus = arb._cpus_of(first.scope)
            tid = first.scope.tid if first.scope.kind is KIND_TASK else None
            key = share_key(budget.name, tid, cpus, first.chunks, first.access, first.arm)
            wp = Watchpoint(
                key, budget.name, tid, cpus, first.weight, first.space is SPACE_KERNEL, w["seq"]
            )
            wp.holders.extend(holders)
            for alloc in holders:
                alloc.watchpoint = wp
            arb._shared[key] = wp
            placed.append((wp.seq, wp))
        for o in data.get("outside", ()):
            target = (o["kind"], o["target"])
            holder = OutsideHolder(target, o["measured"], o["since"])
            arb.outside[(o["budget"], *target)] = holder
            if o["registers"]:
                wp = holder.wp = arb._outside_watchpoint(o["budget"], target, o["registers"])
                wp.seq = o["seq"]
                placed.append((wp.seq, wp))
        for _, wp in sorted(placed, key=lambda item: item[0]):
            budget = arb.budgets[wp.pool]
            budget.add(wp)
            registers.assign(budget, wp, lambda _wp: None)
        arb._recheck = set(data.get("recheck", ()))
        arb.reserved_for_ptrace = data.get("reserved_for_ptrace", 0)
        arb.max_allocations_per_session = data.get("max_allocations_per_session", 0)
        arb.max_waiting_per_session = data.get("max_waiting_per_session", 0)
        arb.traced = {int(tid): tracer for tid, tracer in data.get("traced", {}).items()}
        for r in data["raw"]:
            arb.raw[r["tid"]] = RawTask(
                r["tid"],
                r["session"],
                tuple(r["addresses"]),
                r["dr7"],
                {int(n): a for n, a in r["allocations"].items()},
            )
        return arb

    # ------------------------------------------------------------------ internals: validation

    def _validate(
        self, request: Request, session: Session | None
    ) -> tuple[str, Space, tuple[Chunk, ...], tuple[int, ...]]:
        scope = request.scope
        tid = scope.tid
        if tid is not None and not 0 < tid < TID_LIMIT:
            self._check_tid(tid)
        if scope.cpus is not None:
            if not scope.cpus:
                raise InvalidRequest("scope.cpus is empty; name at least one CPU or use 'all'")
            for cpu in scope.cpus:
                self._check_cpu(cpu)
        if not isinstance(request.access, Access):
            raise InvalidRequest(f"unknown access {request.access!r}; use exec, write or rw")
        pool = self.profile.pool_for(request.access)
        space = self.profile.addresses.space_of(request.address, request.length)
        chunks = self.profile.chunks(request.address, request.length, request.access)
        slots = self.profile.pools[pool]
        if len(chunks) > slots:
            raise InvalidRequest(
                f"0x{request.address:x}+{request.length} needs {len(chunks)} registers but the "
                f"{pool} pool has {slots}; watch a shorter or better aligned range"
            )
        if not request.arm and scope.kind is not KIND_TASK:
            raise InvalidRequest(
                "a reservation (arm: false) is for a task, whose debugger writes the registers "
                "through ptrace; a CPU-wide allocation is armed by debugregd"
            )
        if session is not None:
            if request.priority > session.max_priority:
                raise Forbidden(
                    f"priority {request.priority} is above this session's max_priority "
                    f"{session.max_priority}; ask an admin to open the session with that grant"
                )
            if not request.evictable and not session.allow_non_evictable:
                raise Forbidden(
                    "evictable: false needs the allow_non_evictable grant, which only the admin "
                    "key can give when the session opens"
                )
            if space is SPACE_KERNEL and not session.allow_kernel:
                raise Forbidden(
                    f"0x{request.address:x} is a kernel-space address; watching it needs the "
                    "allow_kernel grant, which only the admin key can give"
                )
        return pool, space, chunks, self._cpus_of(scope)

    def _check_cpu(self, cpu: int) -> None:
        # Not found, like a task that does not exist: the request is well formed, and valid on
        # a host with more CPUs.
        if not 0 <= cpu < self.ncpus:
            raise NotFound(f"CPU {cpu} does not exist; this host has CPUs 0-{self.ncpus - 1}")

    def _check_tid(self, tid: int) -> None:
        if not 0 < tid < TID_LIMIT:
            raise InvalidRequest(f"tid must be a positive 32-bit thread id, got {tid}")

    def _cpus_of(self, scope: Scope) -> tuple[int, ...]:
        return self.all_cpus if scope.cpus is None else scope.cpus

    def _budget_key(self, pool: str, space: Space) -> str:
        return f"{pool}/{space.value}" if self.mode_switching else pool

    def _check_owner(self, alloc: Allocation, session_id: str | None) -> None:
        if session_id is not None and alloc.session != session_id:
            raise Forbidden(
                f"allocation {alloc.id} belongs to another session; only its owner "
                "or an admin may release it"
            )

    # ------------------------------------------------------------------ internals: planning

    @staticmethod
    def _plan(
        budget: PoolBudget, tid: int | None, cpus: tuple[int, ...], weight: int, priority: int
    ) -> eviction.Plan:
        if budget.fits(tid, cpus, weight):
            return eviction.FIT
        if tid is None:
            return eviction.plan_cpu(budget, cpus, weight, priority)
        return eviction.plan_task(budget, tid, cpus, weight, priority)

    def _plan_for(
        self, budget: PoolBudget, tid: int | None, cpus: tuple[int, ...], weight: int, priority: int
    ) -> eviction.Plan:
        """What admitting `weight` registers at `priority` takes, with the host's rules for
        debuggers that do not ask: below ptrace, a task a debugger traces gets nothing, and
        `reserved_for_ptrace` registers per CPU stay free (asked for as extra weight: the
        request must leave them)."""
        if priority >= Priority.PTRACE:
            return self._plan(budget, tid, cpus, weight, priority)
        if tid is not None and tid in self.traced:
            return eviction.Plan(False, blockers=[self._tracer(budget, tid)])
        return self._plan(budget, tid, cpus, weight + self.reserved_for_ptrace, priority)

    def _tracer(self, budget: PoolBudget, tid: int) -> Watchpoint:
        """A stand-in holder that names the debugger tracing `tid` in refusals."""
        target = ("tracer", tid)
        key = ("tracer", tid, self.traced[tid])
        return Watchpoint(key, budget.name, tid, self.all_cpus, 0, False, 0, outside=target)

    def _name(self, blockers: Iterable[Watchpoint]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for wp in blockers:
            if wp.outside is not None:
                target = _target(wp)
                out.append(
                    {
                        "allocation": None,
                        "session": None,
                        "priority": OUTSIDE_PRIORITY,
                        "evictable": False,
                        "scope": target,
                        "label": _outside_phrase(wp),
                        "outside": True,
                        "registers": wp.weight,
                    }
                )
                if len(out) >= MAX_BLOCKERS:
                    return out
            for alloc in wp.holders:
                out.append(
                    {
                        "allocation": alloc.id,
                        "session": alloc.session,
                        "priority": alloc.priority,
                        "evictable": alloc.evictable,
                        "scope": alloc.scope.to_dict(),
                        "label": alloc.label,
                        "outside": False,
                    }
                )
                if len(out) >= MAX_BLOCKERS:
                    return out
        return out

    def _refusal_detail(self, request: Request, blockers: list[Watchpoint]) -> str:
        # Counted, not named: a refusal goes to sessions that may not see other sessions' ids
        # (the blockers list them, for the reader who may).
        held = sum(len(wp.holders) for wp in blockers if wp.outside is None)
        allocations = "allocation" if held == 1 else "allocations"
        why = (
            f"held by {held} {allocations} that priority {request.priority} may not evict "
            "(see blockers)"
            if held
            else ""
        )
        outside = "; ".join(
            dict.fromkeys(_outside_phrase(wp) for wp in blockers if wp.outside is not None)
        )
        if outside:
            why = f"{why}; {outside}" if why else outside
        return (
            f"no room for 0x{request.address:x}+{request.length} at priority {request.priority}"
            + (f": {why}" if why else "")
            + "; retry later, ask with wait: true, or with a higher priority"
        )

    # ------------------------------------------------------------------ internals: mutation

    def _begin(self) -> None:
        self._events = []  # handed to the caller at the end: always a new list
        if self._baseline:
            self._baseline.clear()
        if self._announced:
            self._announced.clear()
        if self._held_back:
            self._held_back.clear()
        if self._freed:
            self._freed.clear()
        if self._recheck:
            self._free_budgets(self._recheck)
            self._recheck.clear()

    def _end(self, now: float) -> list[Event]:
        if self._freed and self._waiting:
            self._serve_waiters(now)
        announced = self._announced
        for wp, before in self._baseline.items():
            for alloc in wp.holders:
                # An allocation installed in this operation was announced with the indices it
                # had then; every other holder last heard of `before`.
                seen = announced.get(alloc.id, before)
                if wp.indices != seen:
                    previous = [
                        {"cpu": c, "pool": alloc.pool, "index": i}
                        for c, held in seen.items()
                        for i in held
                    ]
                    self._emit("moved", now, alloc.session, alloc, {"previous": previous})
        events = self._events
        self._events = []
        self._baseline.clear()
        announced.clear()
        return events

    def _note_change(self, wp: Watchpoint) -> None:
        # A watchpoint placed for the first time has nothing to move from: its holders learn
        # its indices from their `installed` event (see `_announced`).
        if wp.indices and wp not in self._baseline:
            self._baseline[wp] = dict(wp.indices)

    def _emit(
        self,
        type_: str,
        now: float,
        session: str | None,
        alloc: Allocation | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.event_id += 1
        self._events.append(Event(self.event_id, type_, now, session, None, data, alloc))

    def _new_allocation(
        self,
        session: Session | None,
        request: Request,
        pool: str,
        space: Space,
        chunks: tuple[Chunk, ...],
        now: float,
    ) -> Allocation:
        self._next_allocation += 1
        self._seq += 1
        alloc = Allocation(
            f"a{self._next_allocation}",
            None if session is None else session.id,
            request,
            pool,
            space,
            chunks,
            self._seq,
            now,
        )
        self.allocations[alloc.id] = alloc
        if session is not None:
            session.allocations[alloc.id] = None
        return alloc

    def _watchpoint(
        self,
        key: tuple[Any, ...],
        budget: PoolBudget,
        tid: int | None,
        cpus: tuple[int, ...],
        weight: int,
        space: Space,
    ) -> Watchpoint:
        """A watchpoint not yet installed (its install order is given when it is)."""
        return Watchpoint(key, budget.name, tid, cpus, weight, space is SPACE_KERNEL, 0)

    def _arm_or_raise(self, wp: Watchpoint, victims: list[Watchpoint]) -> None:
        """Have the kernel arm `wp` in the victims' place (for a reservation: find that it has
        the room its holder will take), or raise what it answered (nothing changed: the kernel
        is left as it was)."""
        self._raise_unless_armed(self.kernel.arm((wp,), victims))

    @staticmethod
    def _raise_unless_armed(answer: NoRoom | Rejected | None) -> None:
        if answer is None:
            return
        if isinstance(answer, NoRoom):
            raise KernelRefused(
                "the kernel has no room: users outside debugregd hold debug registers",
                answer.measured,
            )
        raise REJECTION_ERRORS.get(answer.why, Unavailable)(answer.detail)

    def _install(
        self,
        alloc: Allocation,
        wp: Watchpoint,
        budget: PoolBudget,
        trigger: Trigger,
        now: float,
    ) -> None:
        """Put `alloc` on `wp`: a watchpoint it shares, or a new one the kernel armed."""
        alloc.state = TRANSITIONS[(alloc.state, trigger)]  # callers only admit or reinstall
        self.generation += 1
        alloc.generation = self.generation
        alloc.updated_at = now
        alloc.reason = None
        if not wp.holders:
            self._seq += 1
            wp.seq = self._seq
            self._shared[wp.key] = wp
            budget.add(wp)
            wp.holders.append(alloc)
            alloc.watchpoint = wp
            note = self._note_change
            if wp.tid is None:
                for c in wp.cpus:
                    registers.assign_cpu(budget, c, note)
            else:
                registers.place_task(budget, wp)
        else:
            wp.holders.append(alloc)
            alloc.watchpoint = wp
        self._emit("installed" if trigger is ON_ADMIT else "reinstalled", now, alloc.session, alloc)
        self._announced[alloc.id] = dict(wp.indices)  # what the event just told its owner

    def _queue(self, alloc: Allocation, now: float, blockers: list[Watchpoint]) -> None:
        alloc.state = next_state(alloc.state, ON_QUEUE)
        alloc.updated_at = now
        self._enqueue(alloc)
        self._emit("waiting", now, alloc.session, alloc, {"blockers": self._name(blockers)})

    def _detach(self, alloc: Allocation) -> None:
        """Take an installed allocation off its watchpoint, freeing the registers if it was the
        last holder."""
        wp = alloc.watchpoint
        assert wp is not None
        alloc.watchpoint = None
        if wp.armed and wp.holders == [alloc]:
            # Disarmed while its last holder is still on it: the hardware's last report (hits
            # since the previous one) is told to that holder.
            self.kernel.disarm(wp)
        wp.holders.remove(alloc)
        # Even when others still hold it, the register may now be weaker (lower priority, or
        # evictable), so the waiters it competes with are reconsidered.
        self._free(wp.pool, wp.tid, wp.cpus)
        if wp.holders:
            return
        budget = self.budgets[wp.pool]
        del self._shared[wp.key]
        budget.remove(wp)
        self._baseline.pop(wp, None)
        registers.assign(budget, wp, self._note_change)
        wp.indices = {}

    def _finish(self, alloc: Allocation, trigger: Trigger, now: float, reason: str) -> None:
        """Move a live allocation to a terminal state (released or expired)."""
        state = alloc.state
        alloc.state = next_state(state, trigger)
        if state is INSTALLED:
            self._detach(alloc)
        else:
            self._dequeue(alloc)
        alloc.updated_at = now
        alloc.reason = reason
        self._retire(alloc)
        self._emit(alloc.state, now, alloc.session, alloc)

    def _retire(self, alloc: Allocation) -> None:
        del self.allocations[alloc.id]
        if alloc.session is not None:
            session = self.sessions.get(alloc.session)
            if session is not None:
                session.allocations.pop(alloc.id, None)
        self.history[alloc.id] = alloc
        while len(self.history) > self.history_limit:
            self.history.popitem(last=False)

    @staticmethod
    def _evicted_for(alloc: Allocation) -> tuple[str, dict[str, Any]]:
        """The reason given to holders evicted to make room for `alloc`, and who it is.

        The reason names no allocation: it is kept in the victim's record, which its owner
        reads, and the evictor may belong to another session. The `evictor` goes in the event
        only (streams show it to the admin, and to its own session)."""
        reason = f"evicted to make room for a request at priority {alloc.priority}"
        if not alloc.arm and alloc.label:
            # A reservation is a debugger's, which its victims are told of by name (its label,
            # e.g. "gdb watchpoint 1 (pid 4242)"): what they wait for is that debugger.
            reason = f"{reason}: {alloc.label}"
        return reason, {"allocation": alloc.id, "session": alloc.session}

    def _evict_all(
        self,
        victims: list[Watchpoint],
        now: float,
        reason: str,
        evictor: dict[str, Any] | None = None,
    ) -> None:
        for wp in victims:
            for alloc in list(wp.holders):
                self._evict_one(alloc, now, reason, admin=False, evictor=evictor)

    def _evict_one(
        self,
        alloc: Allocation,
        now: float,
        reason: str,
        *,
        admin: bool,
        evictor: dict[str, Any] | None = None,
    ) -> None:
        requeue = alloc.on_evict is EVICT_TO_WAIT
        alloc.state = next_state(alloc.state, ON_EVICT_TO_WAIT if requeue else ON_EVICT)
        self._detach(alloc)
        alloc.updated_at = now
        alloc.reason = reason
        if requeue:
            self._enqueue(alloc)
            if admin:
                self._held_back.add(alloc.id)
                self._recheck.add(self._budget_key(alloc.pool, alloc.space))
        else:
            self._retire(alloc)
        data: dict[str, Any] = {"reason": reason}
        if evictor is not None:
            data["evictor"] = evictor
        self._emit("evicted", now, alloc.session, alloc, data)

    def _end_session(self, session: Session, now: float, trigger: Trigger, why: str) -> None:
        for aid in list(session.allocations):
            alloc = self.allocations.get(aid)
            if alloc is not None and alloc.state in LIVE:
                self._finish(alloc, trigger, now, f"session {why}")
        del self.sessions[session.id]
        for raw in [r for r in self.raw.values() if r.session == session.id]:
            del self.raw[raw.tid]
        self._emit("session_closed", now, session.id, data={"reason": why})

    # ------------------------------------------------------------------ internals: the queue

    def _waiter_keys(self, alloc: Allocation) -> list[tuple[Any, ...]]:
        """The keys of `_waiters` a waiting allocation is filed under: what can serve it.

        A task's request competes with CPU-wide holders on its CPUs and with its own task's
        holders, never with other tasks (only one task runs on a CPU at a time); a CPU-wide one
        with every holder on its CPUs. Waiters on every CPU are filed once per budget."""
        budget = self._budget_key(alloc.pool, alloc.space)
        scope = alloc.scope
        if scope.kind is KIND_TASK:
            keys: list[tuple[Any, ...]] = [("task", budget, scope.tid)]
            if scope.cpus is None:
                keys.append(("tasks*", budget))
            else:
                keys.extend(("tasks", budget, c) for c in scope.cpus)
            return keys
        if scope.cpus is None:
            return [("cpus*", budget)]
        return [("cpus", budget, c) for c in scope.cpus]

    def _free(self, budget: str, tid: int | None, cpus: Iterable[int]) -> None:
        """Registers of `budget` held CPU-wide (`tid` None) or by task `tid` on `cpus` were
        freed, or their holders weakened: the waiters they competed with may fit now."""
        freed = self._freed
        if tid is None:
            for c in cpus:
                freed.add(("cpus", budget, c))
                freed.add(("tasks", budget, c))
            freed.add(("tasks*", budget))
        else:
            # Fewer registers for one task: its own waiters, and CPU-wide ones that competed
            # with it as the fullest task of a CPU.
            freed.add(("task", budget, tid))
            for c in cpus:
                freed.add(("cpus", budget, c))
        freed.add(("cpus*", budget))

    def _free_budgets(self, budgets: Iterable[str]) -> None:
        """Every waiter of these budgets may fit now (a host setting changed)."""
        self._freed.update(("budget", b) for b in budgets)

    def _waiters_for(self, keys: Collection[tuple[Any, ...]]) -> list[tuple[int, int, str]]:
        """The queue entries filed under `keys`, in service order, each once."""
        found: set[tuple[int, int, str]] = set()
        whole = {key[1] for key in keys if key[0] == "budget"}
        if whole:
            for key, queue in self._waiters.items():
                if key[1] in whole:
                    found.update(queue)
        for key in keys:
            filed = self._waiters.get(key)
            if filed:
                found.update(filed)
        return sorted(found)

    def _enqueue(self, alloc: Allocation) -> None:
        entry = (-alloc.priority, alloc.seq, alloc.id)
        insort(self._waiting, entry)
        waiters = self._waiters
        for key in self._waiter_keys(alloc):
            queue = waiters.get(key)
            if queue is None:
                waiters[key] = [entry]
            else:
                insort(queue, entry)
        if alloc.session is not None:
            self._waiting_of[alloc.session] = self._waiting_of.get(alloc.session, 0) + 1

    def _dequeue(self, alloc: Allocation) -> None:
        entry = (-alloc.priority, alloc.seq, alloc.id)
        _discard(self._waiting, entry)
        waiters = self._waiters
        for key in self._waiter_keys(alloc):
            queue = waiters[key]
            _discard(queue, entry)
            if not queue:
                del waiters[key]
        if alloc.session is not None:
            left = self._waiting_of[alloc.session] - 1
            if left:
                self._waiting_of[alloc.session] = left
            else:
                del self._waiting_of[alloc.session]

    def _serve_waiters(self, now: float) -> None:
        """Install waiting allocations that fit now, by priority then arrival; repeat while a
        reinstallation (which may evict lower holders) frees room for an earlier one.

        Only the waiters filed under what was freed are looked at: any other waiter did not fit
        when the operation began and competes with nothing that changed since. A pass takes
        them in service order; registers an installation frees by eviction bring their waiters
        into the same pass when they come later in that order, and into the next one else.

        The kernel has the last word: a reinstallation it refuses for room leaves the waiter
        waiting and records who holds the registers (so the same waiter is not tried again until
        they leave: no evict/reinstall loop); one whose task is gone ends with its task."""
        while self._freed and self._waiting:
            freed, self._freed = self._freed, set()
            taken = set(freed)
            pending = self._waiters_for(freed)  # sorted: a heap already
            listed = set(pending)
            # Refusals seen in this pass, by request shape: whether a request fits is monotone
            # (more weight or a lower priority never fits where the other did not), so a waiter
            # no better placed than one already refused is skipped without planning. Valid until
            # the next installation changes the register files (more outside holders only make
            # it truer).
            refused: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
            while pending:
                entry = heapq.heappop(pending)
                aid = entry[2]
                alloc = self.allocations.get(aid)
                if alloc is None or alloc.state is not WAITING or aid in self._held_back:
                    continue
                key = self._budget_key(alloc.pool, alloc.space)
                budget = self.budgets[key]
                cpus = self._cpus_of(alloc.scope)
                tid = alloc.scope.tid if alloc.scope.kind is KIND_TASK else None
                share = share_key(key, tid, cpus, alloc.chunks, alloc.access, alloc.arm)
                wp = self._shared.get(share)
                if wp is None:
                    # A task holding nothing here competes only with CPU holders: which task
                    # it is does not matter.
                    who = tid if tid is None or budget.holds(tid) else "idle task"
                    shape = (key, who, cpus, alloc.arm)
                    weight, priority = alloc.weight, alloc.priority
                    seen = refused.get(shape)
                    if seen and any(w <= weight and p >= priority for w, p in seen):
                        continue
                    plan = self._plan_for(budget, tid, cpus, weight, priority)
                    if not plan.fits:
                        refused.setdefault(shape, []).append((weight, priority))
                        continue
                    wp = self._watchpoint(share, budget, tid, cpus, weight, alloc.space)
                    answer = self.kernel.arm((wp,), plan.victims)
                    if answer is not None:
                        self._refused_reinstall(alloc, answer, now)
                        refused.setdefault(shape, []).append((weight, priority))
                        continue
                    victims = plan.victims
                else:
                    victims = []
                refused.clear()
                self._dequeue(alloc)
                self._evict_all(victims, now, *self._evicted_for(alloc))
                self._install(alloc, wp, budget, ON_REINSTALL, now)
                new = self._freed - taken
                if new:
                    taken |= new
                    for later in self._waiters_for(new):
                        if later > entry and later not in listed:
                            listed.add(later)
                            heapq.heappush(pending, later)

    def _refused_reinstall(self, alloc: Allocation, answer: NoRoom | Rejected, now: float) -> None:
        """The kernel refused to reinstall waiting `alloc`: record who holds the room, or end it
        (its task is gone, or the kernel will never take it)."""
        if isinstance(answer, NoRoom):
            self._apply_measurement(answer.measured, now)
        elif answer.why == NO_TASK and alloc.scope.kind is KIND_TASK:
            assert alloc.scope.tid is not None
            self._end_task(alloc.scope.tid, now)
        else:
            self._dequeue(alloc)
            alloc.state = next_state(alloc.state, ON_REJECT)
            alloc.updated_at = now
            alloc.reason = f"the kernel rejected it: {answer.detail}"
            self._retire(alloc)
            self._emit(EVENT_OF[ON_REJECT], now, alloc.session, alloc, {"reason": alloc.reason})


def _discard(queue: list[tuple[int, int, str]], entry: tuple[int, int, str]) -> None:
    """Take `entry` out of the sorted `queue` (a bisection, not a scan)."""
    i = bisect_left(queue, entry)
    assert queue[i] == entry, f"{entry} is not queued"
    del queue[i]


def _triggers(watched: Access, kind: str) -> bool:
    if watched is ACCESS_EXEC:
        return kind == "exec"
    if watched is ACCESS_WRITE:
        return kind == "write"
    return kind in ("read", "write")


def _alloc_state(alloc: Allocation) -> dict[str, Any]:
    # A snapshot holds every history record (10,000 by default) and stalls the daemon while it
    # is taken, so this builds the request's plain form directly (as `Request.to_dict` writes
    # it), and keeps StrEnum members, which are their values, instead of reading `.value`.
    return {
        "id": alloc.id,
        "session": alloc.session,
        "request": {
            "scope": alloc.scope.to_dict(),
            "address": alloc.address,
            "length": alloc.length,
            "access": alloc.access,
            "priority": alloc.priority,
            "evictable": alloc.evictable,
            "on_evict": alloc.on_evict,
            "wait": alloc.wait,
            "label": alloc.label,
            "arm": alloc.arm,
        },
        "pool": alloc.pool,
        "space": alloc.space,
        "chunks": [list(c) for c in alloc.chunks],
        "seq": alloc.seq,
        "state": alloc.state,
        "generation": alloc.generation,
        "hits": alloc.hits,
        "hits_lost": alloc.hits_lost,
        "created_at": alloc.created_at,
        "updated_at": alloc.updated_at,
        "reason": alloc.reason,
    }


def _alloc_from_state(item: dict[str, Any]) -> Allocation:
    alloc = Allocation(
        item["id"],
        item["session"],
        Request.from_dict(item["request"]),
        item["pool"],
        Space(item["space"]),
        tuple((a, n) for a, n in item["chunks"]),
        item["seq"],
        item["created_at"],
    )
    alloc.state = None if item["state"] is None else State(item["state"])
    alloc.generation = item["generation"]
    alloc.updated_at = item["updated_at"]
    alloc.reason = item["reason"]
    alloc.hits = item.get("hits", 0)
    alloc.hits_lost = item.get("hits_lost", 0)
    return alloc


def _target_of(target: OutsideTarget) -> dict[str, Any]:
    kind, n = target
    return {"kind": kind, "tid": n} if kind in ("task", "tracer") else {"kind": kind, "cpu": n}


def _target(wp: Watchpoint) -> dict[str, Any]:
    assert wp.outside is not None
    return _target_of(wp.outside)


def _outside_phrase(wp: Watchpoint) -> str:
    """How a refusal names an outside holder: "outside debugregd: 2 registers on CPU 1"."""
    assert wp.outside is not None
    kind, n = wp.outside
    if kind == "tracer":
        return f"task {n} is being debugged by {wp.key[2]}"
    where = {"cpu": f"on CPU {n}", "task": f"on task {n}"}.get(kind, f"on another task on CPU {n}")
    plural = "register" if wp.weight == 1 else "registers"
    return f"outside debugregd: {wp.weight} {plural} {where}"


def _cell(wp: Watchpoint) -> dict[str, Any]:
    """One register of a CPU's view: who holds it."""
    if wp.outside is not None:
        return {"allocations": [], "outside": _target(wp)}
    cell: dict[str, Any] = {"allocations": [a.id for a in wp.holders]}
    if not wp.armed:
        cell["reservation"] = True
    return cell


__all__ = ["TERMINAL", "Arbiter", "RawTask"]

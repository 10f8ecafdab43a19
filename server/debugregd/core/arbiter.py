"""The arbiter: the whole per-task, per-CPU debug register state machine of one host.

Requests go in, events come out, and time is a parameter (`now`, seconds). Like h11, the arbiter
does no I/O and keeps no clock: the daemon, the tests and the benchmarks drive this same object.
Every public operation either applies fully and returns the events it caused, in order, or raises a
`CoreError` and changes nothing. The same operations give the same events.

This module holds the state, sessions and allocations; each other concern is a module of its own
whose functions the `Arbiter` offers as methods: the raw x86 ABI (`raw`), the world outside
(`outside`), debuggers that do not ask (`debuggers`), hits (`hits`), read-only views (`views`) and
snapshots (`snapshots`). Changes go through an `Operation` (`operation`), waiters through the
queue (`waiting`), and every transition through the state table (`states`).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any

from debugreg.limits import TID_LIMIT, TTL_MAX_S
from debugreg.priorities import Priority
from debugregd.core import debuggers, eviction, hits, outside, raw, snapshots, views
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
from debugregd.core.kernel import DENIED, INVALID, NO_TASK, Kernel, NoRoom, Rejected, Unarmed
from debugregd.core.model import (
    Allocation,
    Event,
    OutsideHolder,
    Request,
    Scope,
    ScopeKind,
    Session,
    Watchpoint,
    parse_priority,
    share_key,
)
from debugregd.core.operation import Operation
from debugregd.core.profiles import Access, Profile, Space, make_profile, x86_64
from debugregd.core.raw import RawTask
from debugregd.core.states import LIVE, TERMINAL, EventType, State, Trigger
from debugregd.core.waiting import WaitingQueue
from debugregd.core.watch import Chunk

# Enum members bound once: on Python 3.11 each `State.INSTALLED` lookup costs ~200 ns, and the hot
# path takes several per operation.
INSTALLED = State.INSTALLED
KIND_TASK = ScopeKind.TASK
SPACE_KERNEL = Space.KERNEL
REJECTION_ERRORS: dict[str, type[CoreError]] = {
    NO_TASK: NotFound,
    INVALID: InvalidRequest,
    DENIED: Forbidden,
}


class Arbiter:
    """Owns every session, allocation and register file of one host.

    Its attributes are the state, which the core's modules read and change (allocations and
    registers only through an `Operation`); everything outside the core uses the methods."""

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
        self.shared: dict[tuple[Any, ...], Watchpoint] = {}  # installed, by sharing key
        self.queue = WaitingQueue()
        self.expiry: list[tuple[float, str]] = []  # lazy heap of (expires_at, session id)
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
        # Budgets to reconsider at the next operation: an admin requeued a waiter there that the
        # evicting operation itself must not reinstall.
        self.recheck: set[str] = set()
        self.event_id = 0
        self.generation = 0
        self.seq = 0  # arrival and install order
        self.next_allocation = 0
        self.next_session = 0

    def begin(self, now: float) -> Operation:
        """Start a change at `now` (after every check that may refuse it): see `Operation`."""
        return Operation(self, now)

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
            raise InvalidRequest(f"ttl_s must be more than 0 and at most {TTL_MAX_S}, got {ttl_s}")
        top = parse_priority(max_priority)
        self.next_session += 1
        session = Session(
            id=f"s{self.next_session}",
            name=name,
            ttl_s=ttl_s,
            expires_at=now + ttl_s,
            created_at=now,
            max_priority=top,
            allow_non_evictable=allow_non_evictable,
            allow_kernel=allow_kernel,
        )
        self.sessions[session.id] = session
        heapq.heappush(self.expiry, (session.expires_at, session.id))
        op = self.begin(now)
        record = session.to_dict()
        del record["id"], record["allocations"]
        op.emit(EventType.SESSION_OPENED, session.id, data=record)
        return session, op.end()

    def keepalive(self, session_id: str, now: float) -> Session:
        """Renew a lease for another TTL. Causes no event."""
        session = self.session(session_id)
        if session.expires_at <= now:
            # The lease already ran out; the next tick expires it. Renewing it now would make
            # the outcome depend on whether the sweeper happened to run first.
            raise NotFound(f"session {session_id!r} expired at {session.expires_at}")
        session.expires_at = now + session.ttl_s
        heapq.heappush(self.expiry, (session.expires_at, session.id))
        return session

    def close_session(self, session_id: str, now: float) -> list[Event]:
        """End a session and release everything it held."""
        session = self.session(session_id)
        op = self.begin(now)
        op.end_session(session, Trigger.RELEASE, "closed")
        return op.end()

    def tick(self, now: float) -> list[Event]:
        """Expire every session whose lease ran out by `now`."""
        op = self.begin(now)
        expiry = self.expiry
        while expiry and expiry[0][0] <= now:
            at, sid = heapq.heappop(expiry)
            session = self.sessions.get(sid)
            if session is None or session.expires_at != at:
                continue  # closed, or renewed since: a stale heap entry
            op.end_session(session, Trigger.EXPIRE, "expired")
        return op.end()

    def next_expiry(self) -> float | None:
        """When the next lease may run out (for the daemon's sweeper)."""
        while self.expiry:
            at, sid = self.expiry[0]
            session = self.sessions.get(sid)
            if session is not None and session.expires_at == at:
                return at
            heapq.heappop(self.expiry)
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
            self.check_allocation_limit(session, 1)
        budget = self.budgets[pool if not self.mode_switching else f"{pool}/{space.value}"]
        tid = request.scope.tid
        key = share_key(budget.name, tid, cpus, chunks, request.access, request.arm)
        plan = eviction.FIT
        wp = self.shared.get(key)
        if wp is None:
            plan = debuggers.plan_for(self, budget, tid, cpus, len(chunks), request.priority)
        if not plan.fits:
            if not request.wait:
                raise Refused(
                    views.refusal_detail(request, plan.blockers),
                    views.name_blockers(plan.blockers),
                )
            if session is not None:
                self._check_waiting_limit(session)
        if plan.fits and wp is None:
            # The kernel is asked before anything changes: a refusal leaves no trace.
            wp = self.new_watchpoint(key, budget, tid, cpus, len(chunks), space)
            self.raise_unless_armed(self.kernel.arm((wp,), plan.victims))
        alloc = self.new_allocation(session, request, pool, space, chunks, now)
        op = self.begin(now)
        if plan.fits:
            assert wp is not None
            if plan.victims:
                op.evict_all(plan.victims, *self.evicted_for(alloc))
            op.install(alloc, wp, budget, Trigger.ADMIT)
        else:
            op.queue(alloc, plan.blockers)
        return alloc, op.end()

    def release(
        self, allocation_id: str, now: float, *, session_id: str | None = None
    ) -> tuple[Allocation, list[Event]]:
        """Let go of an allocation (owner, or admin with `session_id=None`). Idempotent."""
        alloc = self.allocation(allocation_id)
        self.check_owner(alloc, session_id)
        op = self.begin(now)
        if alloc.state in LIVE:
            op.finish(alloc, Trigger.RELEASE, "released by owner")
        return alloc, op.end()

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
        op = self.begin(now)
        op.evict(alloc, reason or "evicted by admin", admin=True)
        return alloc, op.end()

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
            self.check_cpu(cpu)
        chosen = [
            a
            for a in self.allocations.values()
            if a.state is INSTALLED
            and (cpu is None or (a.watchpoint is not None and cpu in a.watchpoint.indices))
            and (tid is None or (a.scope.kind is KIND_TASK and a.scope.tid == tid))
            and (below_priority is None or a.priority < below_priority)
        ]
        op = self.begin(now)
        for alloc in chosen:
            op.evict(alloc, reason or "evicted by admin", admin=True)
        return [a.id for a in chosen], op.end()

    def allocation(self, allocation_id: str) -> Allocation:
        alloc = self.allocations.get(allocation_id) or self.history.get(allocation_id)
        if alloc is None:
            raise NotFound(f"no allocation {allocation_id!r} (or it left the bounded history)")
        return alloc

    def waiting(self) -> list[Allocation]:
        """Waiting allocations in service order: priority, then first come first served."""
        return [self.allocations[aid] for aid in self.queue.ids()]

    # ------------------------------------------------------------------ the other concerns

    # The raw x86 ABI (raw.py).
    set_debugregs = raw.set_debugregs
    debugregs = raw.debugregs
    # Hits (hits.py).
    access = hits.access
    report_hit = hits.report_hit
    # The world outside (outside.py).
    observe = outside.observe
    outside_after = outside.outside_after
    task_exited = outside.task_exited
    rearm = outside.rearm
    # Debuggers that do not ask, and the host's settings (debuggers.py).
    configure = debuggers.configure
    trace = debuggers.trace
    untrace = debuggers.untrace
    # Views (views.py).
    cpu_view = views.cpu_view
    task_view = views.task_view
    outside_records = views.outside_records
    outside_targets = views.outside_targets
    tasks_in_use = views.tasks_in_use
    # Snapshots (snapshots.py).
    snapshot = snapshots.snapshot

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
        snapshots.restore(arb, data)
        return arb

    # ------------------------------------------------------------------ checks

    def _validate(
        self, request: Request, session: Session | None
    ) -> tuple[str, Space, tuple[Chunk, ...], tuple[int, ...]]:
        scope = request.scope
        tid = scope.tid
        if tid is not None and not 0 < tid < TID_LIMIT:
            self.check_tid(tid)
        if scope.cpus is not None:
            if not scope.cpus:
                raise InvalidRequest("scope.cpus is empty; name at least one CPU or use 'all'")
            for cpu in scope.cpus:
                self.check_cpu(cpu)
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
        return pool, space, chunks, self.cpus_of(scope)

    def check_cpu(self, cpu: int) -> None:
        """NotFound unless `cpu` exists on this host."""
        # Not found, like a task that does not exist: the request is well formed, and valid on
        # a host with more CPUs.
        if not 0 <= cpu < self.ncpus:
            raise NotFound(f"CPU {cpu} does not exist; this host has CPUs 0-{self.ncpus - 1}")

    def check_tid(self, tid: int) -> None:
        """InvalidRequest unless `tid` is a positive 32-bit thread id."""
        if not 0 < tid < TID_LIMIT:
            raise InvalidRequest(f"tid must be a positive 32-bit thread id, got {tid}")

    def check_owner(self, alloc: Allocation, session_id: str | None) -> None:
        """Forbidden unless session `session_id` (None: the admin) may release `alloc`."""
        if session_id is not None and alloc.session != session_id:
            raise Forbidden(
                f"allocation {alloc.id} belongs to another session; only its owner "
                "or an admin may release it"
            )

    def check_allocation_limit(self, session: Session, more: int) -> None:
        """LimitReached when `more` live allocations would take `session` over its limit."""
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
        waiting = self.queue.count_of(session.id)
        if limit and waiting >= limit:
            raise LimitReached(
                f"session {session.id} has {waiting} allocations waiting and may queue at most "
                f"{limit}; release a waiting one first, or ask without wait: true (a request "
                "that fits is still installed)",
                "waiting",
                limit,
            )

    # ------------------------------------------------------------------ building blocks

    def cpus_of(self, scope: Scope) -> tuple[int, ...]:
        """The CPUs a scope runs on."""
        return self.all_cpus if scope.cpus is None else scope.cpus

    def budget_key(self, pool: str, space: Space) -> str:
        """The budget a pool's watchpoints of `space` count in."""
        return f"{pool}/{space.value}" if self.mode_switching else pool

    def new_allocation(
        self,
        session: Session | None,
        request: Request,
        pool: str,
        space: Space,
        chunks: tuple[Chunk, ...],
        now: float,
    ) -> Allocation:
        """A live allocation for `request`, in no state yet (the operation decides)."""
        self.next_allocation += 1
        self.seq += 1
        alloc = Allocation(
            f"a{self.next_allocation}",
            None if session is None else session.id,
            request,
            pool,
            space,
            chunks,
            self.seq,
            now,
        )
        self.allocations[alloc.id] = alloc
        if session is not None:
            session.allocations[alloc.id] = None
        return alloc

    @staticmethod
    def new_watchpoint(
        key: tuple[Any, ...],
        budget: PoolBudget,
        tid: int | None,
        cpus: tuple[int, ...],
        weight: int,
        space: Space,
    ) -> Watchpoint:
        """A watchpoint not yet installed (its install order is given when it is)."""
        return Watchpoint(key, budget.name, tid, cpus, weight, space is SPACE_KERNEL, 0)

    @staticmethod
    def raise_unless_armed(answer: NoRoom | Rejected | None) -> None:
        """Raise what the kernel answered to an arming, unless it armed (nothing changed: the
        kernel is left as it was)."""
        if answer is None:
            return
        if isinstance(answer, NoRoom):
            raise KernelRefused(
                "the kernel has no room: users outside debugregd hold debug registers",
                answer.measured,
            )
        raise REJECTION_ERRORS.get(answer.why, Unavailable)(answer.detail)

    @staticmethod
    def evicted_for(alloc: Allocation) -> tuple[str, dict[str, Any]]:
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


__all__ = ["TERMINAL", "Arbiter", "RawTask"]

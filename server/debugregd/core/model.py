"""The records the arbiter keeps: scopes, requests, allocations, sessions, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from debugreg.priorities import (
    OUTSIDE_PRIORITY,
    Priority,
    priority_value,
)
from debugregd.core.errors import InvalidRequest
from debugregd.core.profiles import Access, Space
from debugregd.core.states import State
from debugregd.core.watch import Chunk


def parse_priority(value: int | str) -> int:
    """A class name or an integer 0-1000 as an integer priority (the wire's rule, defined once
    in `debugreg.priorities`)."""
    try:
        return priority_value(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def priority_class(value: int) -> str:
    """The name of the highest class at or below `value` ("below-background" under 100)."""
    name = "below-background"
    for cls in Priority:
        if value >= cls:
            name = cls.name.lower()
    return name


class ScopeKind(StrEnum):
    TASK = "task"
    CPU = "cpu"
    CPUS = "cpus"


class OnEvict(StrEnum):
    RELEASE = "release"
    WAIT = "wait"


@dataclass(slots=True)
class Scope:
    """Where an allocation applies: a task (optionally pinned to CPUs), one CPU, or a CPU set.

    `cpus=None` means every CPU of the host.
    """

    kind: ScopeKind
    tid: int | None = None
    cpus: tuple[int, ...] | None = None

    @classmethod
    def task(cls, tid: int, cpus: tuple[int, ...] | None = None) -> Scope:
        return cls(ScopeKind.TASK, tid, None if cpus is None else tuple(sorted(set(cpus))))

    @classmethod
    def cpu(cls, cpu: int) -> Scope:
        return cls(ScopeKind.CPU, None, (cpu,))

    @classmethod
    def cpu_set(cls, cpus: tuple[int, ...] | None) -> Scope:
        return cls(ScopeKind.CPUS, None, None if cpus is None else tuple(sorted(set(cpus))))

    def to_dict(self) -> dict[str, Any]:
        if self.kind is ScopeKind.TASK:
            out: dict[str, Any] = {"kind": "task", "tid": self.tid}
            if self.cpus is not None:
                out["cpus"] = list(self.cpus)
            return out
        if self.kind is ScopeKind.CPU:
            assert self.cpus is not None
            return {"kind": "cpu", "cpu": self.cpus[0]}
        return {"kind": "cpus", "cpus": "all" if self.cpus is None else list(self.cpus)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scope:
        kind = data["kind"]
        if kind == "task":
            cpus = data.get("cpus")
            return cls.task(int(data["tid"]), None if cpus is None else tuple(cpus))
        if kind == "cpu":
            return cls.cpu(int(data["cpu"]))
        cpus = data["cpus"]
        return cls.cpu_set(None if cpus == "all" else tuple(cpus))


@dataclass(slots=True)
class Request:
    """What a client asks for: a range to watch, where, at which priority."""

    scope: Scope
    address: int
    length: int
    access: Access
    priority: int = Priority.NORMAL
    evictable: bool = True
    on_evict: OnEvict = OnEvict.RELEASE
    wait: bool = False
    label: str = ""
    arm: bool = True  # False: a reservation, counted but armed by its holder (a debugger)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope.to_dict(),
            "address": self.address,
            "length": self.length,
            "access": self.access.value,
            "priority": self.priority,
            "evictable": self.evictable,
            "on_evict": self.on_evict.value,
            "wait": self.wait,
            "label": self.label,
            "arm": self.arm,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        return cls(
            scope=Scope.from_dict(data["scope"]),
            address=int(data["address"]),
            length=int(data["length"]),
            access=Access(data["access"]),
            priority=parse_priority(data.get("priority", int(Priority.NORMAL))),
            evictable=bool(data.get("evictable", True)),
            on_evict=OnEvict(data.get("on_evict", "release")),
            wait=bool(data.get("wait", False)),
            label=str(data.get("label", "")),
            arm=bool(data.get("arm", True)),
        )


class Allocation:
    """One client's claim on debug registers, from request to a terminal state."""

    __slots__ = (
        "access",
        "address",
        "arm",
        "chunks",
        "created_at",
        "evictable",
        "generation",
        "hits",
        "hits_lost",
        "id",
        "label",
        "length",
        "on_evict",
        "pool",
        "priority",
        "reason",
        "scope",
        "seq",
        "session",
        "space",
        "state",
        "updated_at",
        "wait",
        "watchpoint",
    )

    def __init__(
        self,
        id: str,
        session: str | None,
        request: Request,
        pool: str,
        space: Space,
        chunks: tuple[Chunk, ...],
        seq: int,
        now: float,
    ) -> None:
        self.id = id
        self.session = session
        self.scope = request.scope
        self.address = request.address
        self.length = request.length
        self.access = request.access
        self.priority = request.priority
        self.evictable = request.evictable
        self.on_evict = request.on_evict
        self.wait = request.wait
        self.label = request.label
        self.arm = request.arm
        self.pool = pool
        self.space = space
        self.chunks = chunks
        self.seq = seq  # arrival order: first come, first served among equal waiters
        self.state: State | None = None
        self.generation = 0
        self.created_at = now
        self.updated_at = now
        self.reason: str | None = None
        self.watchpoint: Watchpoint | None = None
        self.hits = 0  # every hit reported so far, and samples lost: a stream that missed some
        self.hits_lost = 0  # events (a reset) learns from the record what it missed

    @property
    def weight(self) -> int:
        """Registers this allocation needs on each CPU it occupies."""
        return len(self.chunks)

    def request(self) -> Request:
        return Request(
            self.scope,
            self.address,
            self.length,
            self.access,
            self.priority,
            self.evictable,
            self.on_evict,
            self.wait,
            self.label,
            self.arm,
        )

    def registers(self) -> list[dict[str, Any]]:
        """Concrete registers held: one entry per CPU and chunk, empty unless installed."""
        wp = self.watchpoint
        return [] if wp is None else _registers(self.pool, wp.indices)

    def view(self) -> AllocationView:
        """What may change about this allocation, captured now (cheap: events keep this and
        build the full record only when someone reads it)."""
        wp = self.watchpoint
        return (
            self.state,
            self.generation,
            None if wp is None else dict(wp.indices),
            self.updated_at,
            self.reason,
            self.hits,
            self.hits_lost,
        )

    def to_dict(self, view: AllocationView | None = None) -> dict[str, Any]:
        """The allocation record of the API contract (addresses as integers), as it is now or
        as it was when `view` was captured."""
        state, generation, indices, updated_at, reason, hits, hits_lost = view or self.view()
        # StrEnum members are str: they compare and serialize as their values.
        out: dict[str, Any] = {
            "id": self.id,
            "session": self.session,
            "state": state,
            "scope": self.scope.to_dict(),
            "address": self.address,
            "length": self.length,
            "access": self.access,
            "priority": self.priority,
            "evictable": self.evictable,
            "on_evict": self.on_evict,
            "arm": self.arm,
            "generation": generation,
            "registers": [] if indices is None else _registers(self.pool, indices),
            "hits": hits,
            "hits_lost": hits_lost,
            "space": self.space,
            "label": self.label,
            "created_at": self.created_at,
            "updated_at": updated_at,
        }
        if reason is not None:
            out["reason"] = reason
        return out


AllocationView = tuple[
    "State | None", int, "dict[int, tuple[int, ...]] | None", float, "str | None", int, int
]


def _registers(pool: str, indices: dict[int, tuple[int, ...]]) -> list[dict[str, Any]]:
    return [
        {"cpu": cpu, "pool": pool, "index": index}
        for cpu, held in indices.items()
        for index in held
    ]


class Watchpoint:
    """The hardware side of one or more identical allocations: the registers they share.

    Allocations of one scope watching the same range with the same access share a watchpoint
    (reference counted by `holders`), so it is counted once by admission. A watchpoint with
    `outside` set stands for registers that users outside debugregd hold on a target: it has no
    holders, ranks above every priority and is never evicted.
    """

    __slots__ = (
        "cpus",
        "holders",
        "indices",
        "kernel",
        "key",
        "outside",
        "pool",
        "seq",
        "tid",
        "weight",
    )

    def __init__(
        self,
        key: tuple[Any, ...],
        pool: str,
        tid: int | None,
        cpus: tuple[int, ...],
        weight: int,
        kernel: bool,
        seq: int,
        outside: OutsideTarget | None = None,
    ) -> None:
        self.key = key
        self.pool = pool  # the budget key: pool name, or pool and space with mode switching
        self.tid = tid
        self.cpus = cpus
        self.weight = weight
        self.kernel = kernel
        self.seq = seq  # install order: index order and "most recently installed"
        self.outside = outside
        self.holders: list[Allocation] = []
        self.indices: dict[int, tuple[int, ...]] = {}

    # The parts of the sharing key (`share_key`) the hardware needs.
    @property
    def chunks(self) -> tuple[Chunk, ...]:
        chunks: tuple[Chunk, ...] = self.key[3]
        return chunks

    @property
    def access(self) -> Access:
        access: Access = self.key[4]
        return access

    @property
    def armed(self) -> bool:
        """Whether the daemon arms it (False: a reservation, or users outside debugregd)."""
        return self.outside is None and bool(self.key[5])

    # Read for every holder an eviction plan considers; most watchpoints have one holder.
    @property
    def priority(self) -> int:
        holders = self.holders
        if len(holders) == 1:
            return holders[0].priority
        if not holders:
            return OUTSIDE_PRIORITY
        return max(h.priority for h in holders)

    @property
    def evictable(self) -> bool:
        holders = self.holders
        if len(holders) == 1:
            return holders[0].evictable
        return bool(holders) and all(h.evictable for h in holders)


# What users outside debugregd hold registers on: ("cpu", c) CPU-wide, ("task", tid) one task,
# ("others", c) the fullest task on CPU c that debugregd does not manage.
OutsideTarget = tuple[str, int]


@dataclass(slots=True)
class OutsideHolder:
    """What users outside debugregd hold on one target: `measured`, as the kernel last showed
    it, and `wp`, the registers admission counts for it: as many, unless the register files
    could not hold them all (a reservation whose holder has not armed it yet keeps its place)."""

    target: OutsideTarget
    measured: int
    since: float
    wp: Watchpoint | None = None

    @property
    def held(self) -> int:
        return 0 if self.wp is None else self.wp.weight


def share_key(
    budget: str,
    tid: int | None,
    cpus: tuple[int, ...],
    chunks: tuple[Chunk, ...],
    access: Access,
    arm: bool,
) -> tuple[Any, ...]:
    """What identical watchpoints have in common, so they share one register: budget, task,
    CPUs, chunks, access, and whether the daemon arms it (a reservation never shares with an
    armed watchpoint: its holder writes the hardware itself, and the kernel counts both)."""
    return (budget, tid, cpus, chunks, access, arm)


@dataclass(slots=True)
class Session:
    """A client's lease: its allocations live as long as it is kept alive."""

    id: str
    name: str
    ttl_s: float
    expires_at: float
    created_at: float
    max_priority: int = int(Priority.NORMAL)
    allow_non_evictable: bool = False
    allow_kernel: bool = False
    allocations: dict[str, None] = field(default_factory=dict)  # ordered set of live ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "ttl_s": self.ttl_s,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "max_priority": self.max_priority,
            "allow_non_evictable": self.allow_non_evictable,
            "allow_kernel": self.allow_kernel,
            "allocations": list(self.allocations),
        }


class Event:
    """One state change, numbered host-wide. `allocation` is the record as it was then."""

    __slots__ = ("_record", "_source", "_view", "at", "data", "id", "session", "type")

    def __init__(
        self,
        id: int,
        type: str,
        at: float,
        session: str | None = None,
        allocation: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        source: Allocation | None = None,
    ) -> None:
        """`allocation` is the record itself; or `source`, whose record is built when read,
        as it is now (what may change is captured here)."""
        self.id = id
        self.type = type
        self.at = at
        self.session = session
        self.data = data
        self._record = allocation
        self._source = source
        self._view = None if source is None else source.view()

    @property
    def allocation(self) -> dict[str, Any] | None:
        if self._record is None and self._source is not None:
            self._record = self._source.to_dict(self._view)
        return self._record

    def describes(self, alloc: Allocation) -> bool:
        """Whether this event's record is `alloc` as it is now."""
        return self._source is alloc and self._view == alloc.view()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type, "at": self.at}
        if self.session is not None:
            out["session"] = self.session
        allocation = self.allocation
        if allocation is not None:
            out["allocation"] = allocation
        if self.data:
            out.update(self.data)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.id, self.type))

    def __repr__(self) -> str:
        return f"Event({self.to_dict()!r})"

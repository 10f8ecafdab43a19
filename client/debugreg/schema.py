"""The wire schema of API v1 (DESIGN section 14), shared by the daemon and the clients.

Addresses are accepted as integers or "0x..." strings and always returned as "0x..." strings.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from debugreg.limits import ADDRESS_LIMIT, CPU_MAX, LENGTH_MAX, TID_LIMIT, TTL_MAX_S
from debugreg.priorities import PRIORITY_MAX, PRIORITY_MIN, PriorityClass

ADDRESS_MAX = ADDRESS_LIMIT - 1
# JSON numbers are exact only up to 2**53 - 1 (I-JSON): larger addresses, kernel space among
# them, travel as "0x..." strings, so that every reader of a document agrees on the value.
ADDRESS_INT_MAX = (1 << 53) - 1
# Up to 16 hex digits, or up to 19 decimal ones, with single underscores between digits: every
# string this matches is an address (at most 0xffffffffffffffff), and the daemon reads exactly
# the strings it matches, as a JSON Schema validator does (`re.search`).
ADDRESS_PATTERN = r"^(0[xX](_?[0-9a-fA-F]){1,16}|[0-9](_?[0-9]){0,18})$"


def _parse_address(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("an address is an integer or a '0x...' string, not a boolean")
    value = _integral(value)
    if isinstance(value, int):
        if not 0 <= value <= ADDRESS_INT_MAX:
            raise ValueError(
                f"address {value} is outside 0..{ADDRESS_INT_MAX} (2**53 - 1, what JSON numbers "
                "hold exactly); write larger ones as '0x...' strings"
            )
        return value
    if not isinstance(value, str):
        raise ValueError("an address is an integer or a '0x...' string")
    if re.search(ADDRESS_PATTERN, value) is None:
        raise ValueError(
            f"{value[:40]!r} is not an address; write it as 0x7ffd1000 (up to 16 hex digits) "
            "or 2147422208"
        )
    text = value.strip().lower().replace("_", "")  # the pattern allows a final newline
    return int(text, 16) if text.startswith("0x") else int(text, 10)


def _integral(value: Any) -> Any:
    """A JSON number with no fraction (8.0) as the integer it is: JSON Schema counts it an
    integer, and so does the daemon. Everything else as it came (strict types refuse it)."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# The integers of request bodies below take 8 or 8.0, never "8" or true (the models are
# strict): `Whole` converts, after the bounds in the annotation, so the JSON Schema shows them.
Whole = BeforeValidator(_integral)


Address = Annotated[
    int,
    BeforeValidator(_parse_address),
    PlainSerializer(lambda v: f"0x{v:x}", return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": ADDRESS_PATTERN},
                {"type": "integer", "minimum": 0, "maximum": ADDRESS_INT_MAX},
            ],
            "description": (
                "an address: an integer up to 2**53 - 1, or a '0x...' hex string of up to 16 "
                "digits (returned as hex)"
            ),
            "examples": ["0x7ffd1000"],
        },
        mode="validation",
    ),
    WithJsonSchema({"type": "string", "examples": ["0x7ffd1000"]}, mode="serialization"),
]

TID_MAX = TID_LIMIT - 1
Cpu = Annotated[int, Field(ge=0, le=CPU_MAX, description="a CPU number"), Whole]
Tid = Annotated[int, Field(ge=1, le=TID_MAX, description="a thread id"), Whole]
PriorityValue = Annotated[
    Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX), Whole] | PriorityClass,
    Field(description=f"a class name or an integer {PRIORITY_MIN}-{PRIORITY_MAX}"),
]
Length = Annotated[int, Field(ge=1, le=LENGTH_MAX, description="bytes to watch"), Whole]
Dr7 = Annotated[int, Field(ge=0, le=(1 << 32) - 1, description="DR7 as ptrace writes it"), Whole]
Registers = Annotated[int, Field(ge=1, le=16, description="registers it takes"), Whole]
Access = Literal["exec", "write", "rw"]
State = Literal["installed", "waiting", "released", "evicted", "expired"]
EventType = Literal[
    "installed",
    "waiting",
    "evicted",
    "moved",
    "reinstalled",
    "released",
    "expired",
    "hit",
    "session_opened",
    "session_closed",
    "outside",
    "reset",
]


class Strict(BaseModel):
    """Request bodies: unknown fields are an error, so a typo is not silently ignored, and types
    are strict, so `true` is not a thread id and `"8"` is not a length."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TaskScope(Strict):
    kind: Literal["task"]
    tid: Tid
    cpus: list[Cpu] | None = Field(
        default=None, min_length=1, max_length=4096, description="CPU affinity; default all"
    )


class CpuScope(Strict):
    kind: Literal["cpu"]
    cpu: Cpu


class CpusScope(Strict):
    kind: Literal["cpus"]
    cpus: Annotated[list[Cpu], Field(min_length=1, max_length=4096)] | Literal["all"] = Field(
        description="a CPU set, or 'all'"
    )


Scope = Annotated[TaskScope | CpuScope | CpusScope, Field(discriminator="kind")]


class AllocationRequest(Strict):
    """POST /v1/allocations."""

    scope: Scope
    address: Address
    length: Length
    access: Access
    priority: PriorityValue = "normal"
    evictable: bool = True
    on_evict: Literal["release", "wait"] = "release"
    wait: bool = False
    label: str = Field(default="", max_length=200)
    arm: bool = Field(
        default=True,
        description=(
            "false: a reservation, counted, evicted and evicting like any allocation, but never "
            "armed by the daemon: its holder (a debugger, through ptrace) writes the registers"
        ),
    )


class Register(BaseModel):
    cpu: int
    pool: str
    index: int


class Blocker(BaseModel):
    """A holder in the way of a refused request: an allocation, or (`outside`) registers held
    by users outside debugregd, which nothing can evict. Another session's holder is named
    only to the admin: to a session it is "held by another session at priority P", with
    `allocation`, `session`, `scope` and `label` null."""

    allocation: str | None = None
    session: str | None = None
    priority: int
    evictable: bool
    scope: dict[str, Any] | None = None
    label: str | None = ""
    outside: bool = False
    registers: int | None = Field(default=None, description="registers held outside debugregd")


class Allocation(BaseModel):
    """An allocation record. `address` is null when it is kernel space and the reader may not
    see kernel addresses."""

    id: str
    session: str | None
    state: State
    scope: dict[str, Any]
    address: Address | None
    length: int
    access: Access
    priority: int
    evictable: bool
    on_evict: Literal["release", "wait"]
    arm: bool = True
    generation: int
    registers: list[Register]
    hits: int = Field(default=0, description="every hit reported so far")
    hits_lost: int = Field(default=0, description="samples of those hits that were lost")
    space: Literal["user", "kernel"]
    label: str
    created_at: float
    updated_at: float
    reason: str | None = None


class AllocationList(BaseModel):
    """GET /v1/allocations. `event_id`, when the daemon sends it, is the last event the list
    reflects: a client that re-reads state after a stream `reset` skips events up to it."""

    allocations: list[Allocation]
    event_id: int | None = None


class SessionRequest(Strict):
    """POST /v1/sessions. Grants above the defaults need the admin key."""

    name: str = Field(min_length=1, max_length=200)
    ttl_s: float = Field(
        default=30, ge=1, le=TTL_MAX_S, description="seconds the lease lasts unless kept alive"
    )
    max_priority: PriorityValue | None = None
    allow_non_evictable: bool | None = None
    allow_kernel: bool | None = None


class Session(BaseModel):
    """A session as returned when it opens: `token` is shown this once."""

    id: str
    name: str
    token: str | None = None
    ttl_s: float
    expires_at: float
    max_priority: int
    allow_non_evictable: bool
    allow_kernel: bool


class SessionInfo(BaseModel):
    id: str
    name: str
    ttl_s: float
    expires_at: float
    created_at: float
    max_priority: int
    allow_non_evictable: bool
    allow_kernel: bool
    allocations: list[str]


class Keepalive(BaseModel):
    expires_at: float


class EvictRequest(Strict):
    reason: str = Field(default="evicted by admin", max_length=500)


class BulkEvictRequest(Strict):
    cpu: Cpu | None = None
    tid: Tid | None = None
    below_priority: PriorityValue | None = None
    reason: str = Field(default="evicted by admin", max_length=500)


class BulkEvictResult(BaseModel):
    evicted: list[str]


class OutsideTarget(BaseModel):
    """Where users outside debugregd hold registers: CPU-wide on a CPU (`cpu`), on a task
    (`task`), or on the fullest task of a CPU that debugregd does not manage (`others`)."""

    kind: Literal["cpu", "task", "others"]
    cpu: int | None = None
    tid: int | None = None


class Outside(BaseModel):
    """Registers held by users outside debugregd (gdb, perf, bpftrace, kernel tools), as last
    measured: admission counts them, and nothing evicts them."""

    pool: str
    target: OutsideTarget
    registers: int = Field(description="registers admission counts for them")
    measured: int = Field(
        description="registers the kernel showed them holding (more than `registers` only "
        "where a reservation whose holder has not armed it yet keeps its place)"
    )
    since: float


class OutsideList(BaseModel):
    outside: list[Outside]


class Traced(BaseModel):
    """A task a debugger traces, as --yield-to-tracers saw it attach."""

    tid: int
    tracer: str = Field(description="who traces it, e.g. 'PID 4242 (gdb)'")


class Host(BaseModel):
    profile: str
    cpus: int
    pools: dict[str, int]
    mode_switching: bool
    backend: str
    version: str
    probe: dict[str, Any] = Field(
        default_factory=dict, description="what the backend found on the hardware at start"
    )
    outside: list[Outside] = Field(default_factory=list)
    reserve_for_ptrace: int = Field(
        default=0, description="registers per CPU that requests below ptrace must leave free"
    )
    yield_to_tracers: bool = Field(
        default=False, description="whether holders below ptrace make room for a tracer"
    )
    traced: list[Traced] = Field(default_factory=list, description="tasks a debugger traces")


class DebugRegs(Strict):
    """A task's DR0-DR3 and DR7 as a ptrace user writes them."""

    dr0: Address = 0
    dr1: Address = 0
    dr2: Address = 0
    dr3: Address = 0
    dr7: Dr7 = 0


class DebugRegsState(BaseModel):
    tid: int
    dr0: Address
    dr1: Address
    dr2: Address
    dr3: Address
    dr7: int
    session: str | None
    allocations: dict[str, str]


class SimAccess(Strict):
    cpu: Cpu
    tid: Tid | None = None
    address: Address
    length: Length = 1
    access: Literal["exec", "read", "write"]
    ip: Address | None = Field(
        default=None, description="the instruction that made the access, reported as its site"
    )


class SimAccessResult(BaseModel):
    hits: list[str]


class SimOutsideRequest(Strict):
    """POST /v1/sim/outside: a user outside debugregd takes registers in the fake kernel, on a
    task (optionally on some CPUs), one CPU or a CPU set, as an allocation's scope says."""

    scope: Scope
    registers: Registers
    pool: str | None = Field(default=None, description="the profile's data pool unless given")


class SimOutside(BaseModel):
    id: str
    pool: str
    scope: dict[str, Any]
    registers: int


class HitMapping(BaseModel):
    file: str = Field(description="the mapped file (or [vdso], [anon]...)")
    offset: str = Field(description="the instruction's offset in it, hex")


class HitSite(BaseModel):
    """One call site of a `hit` event: the instruction that touched the watched range."""

    ip: str | None = Field(description="the instruction pointer, hex")
    pid: int | None = None
    symbol: str | None = Field(default=None, description="'function+0xoffset' where known")
    mapping: HitMapping | None = None
    first: float = Field(description="its first sample of the interval (Unix seconds)")
    last: float
    count: int = Field(description="its samples in the interval")
    tids: list[int] = Field(default_factory=list, description="threads, lowest first (bounded)")
    threads: int = Field(default=0, description="how many distinct threads")
    cpus: list[int] = Field(default_factory=list)


class HitReport(BaseModel):
    """What a `hit` event carries besides its allocation: the exact count of one interval,
    samples lost, the top call sites, and the allocation's total so far. `unknown` says hits
    could not be counted (a restart)."""

    model_config = ConfigDict(extra="allow")

    count: int | None = None
    sampled: int | None = None
    lost: int = 0
    interval_s: float | None = None
    sites: list[HitSite] = Field(default_factory=list)
    other_sites: int = 0
    other_count: int = 0
    total: int | None = None
    unknown: bool = False


class Event(BaseModel):
    """One event as it travels in an SSE `data:` line. Type-specific fields (`previous` of
    `moved`, `blockers` of `waiting`, a hit's `cpu`/`address`...) are kept as extras."""

    model_config = ConfigDict(extra="allow")

    id: int
    type: EventType
    at: float
    session: str | None = None
    allocation: Allocation | None = None
    reason: str | None = Field(
        default=None, description="why: of `evicted` and `session_closed` events"
    )

    @property
    def hit(self) -> HitReport | None:
        """A `hit` event's report: the count, samples lost and call sites (`.sites`)."""
        if self.type != "hit":
            return None
        return HitReport.model_validate(self.model_extra or {})


class Snapshot(BaseModel):
    """GET /v1/state: everything, consistent with `event_id`."""

    event_id: int
    host: Host
    sessions: list[SessionInfo]
    allocations: list[Allocation]
    waiting: list[str]
    cpus: list[dict[str, Any]]
    outside: list[Outside] = Field(default_factory=list)


class Problem(BaseModel):
    """An RFC 9457 problem: what was wrong, and how to fix it."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    blockers: list[Blocker] | None = None
    errors: list[dict[str, Any]] | None = None


class Health(BaseModel):
    """Whether the daemon serves: only ok (anything else is a 503 problem)."""

    status: Literal["ok"]

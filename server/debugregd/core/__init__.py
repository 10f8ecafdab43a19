"""The pure arbitration core: feed it requests and the time, get events back.

Nothing here does I/O, reads a clock, or knows about HTTP: the daemon, the tests and the benchmarks
drive the same `Arbiter`.
"""

from debugreg.priorities import Priority
from debugregd.core.arbiter import Arbiter, RawTask
from debugregd.core.errors import (
    CoreError,
    Forbidden,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    Refused,
)
from debugregd.core.model import (
    Allocation,
    Event,
    OnEvict,
    Request,
    Scope,
    ScopeKind,
    Session,
    Watchpoint,
    parse_priority,
    priority_class,
)
from debugregd.core.profiles import Access, Profile, Space, make_profile
from debugregd.core.states import EVENT_OF, TRANSITIONS, EventType, State, Trigger

__all__ = [
    "EVENT_OF",
    "TRANSITIONS",
    "Access",
    "Allocation",
    "Arbiter",
    "CoreError",
    "Event",
    "EventType",
    "Forbidden",
    "InvalidRequest",
    "InvalidTransition",
    "NotFound",
    "OnEvict",
    "Priority",
    "Profile",
    "RawTask",
    "Refused",
    "Request",
    "Scope",
    "ScopeKind",
    "Session",
    "Space",
    "State",
    "Trigger",
    "Watchpoint",
    "make_profile",
    "parse_priority",
    "priority_class",
]

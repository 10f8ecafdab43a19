"""Typed errors of the core. An operation that raises one of these has changed nothing."""

from __future__ import annotations

from typing import Any


class CoreError(Exception):
    """Base of every error the core raises; `detail` says what was wrong and how to fix it."""

    kind = "invalid"
    title = "Invalid request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidRequest(CoreError):
    """The request cannot be satisfied on this host as written (bad length, alignment, CPU...)."""

    kind = "invalid-request"
    title = "Invalid request"


class NotFound(CoreError):
    """No session, allocation or task by that id (or it has left the bounded history)."""

    kind = "not-found"
    title = "Not found"


class Forbidden(CoreError):
    """The caller lacks the ownership or grant that the operation needs."""

    kind = "forbidden"
    title = "Forbidden"


class InvalidTransition(CoreError):
    """The allocation's state does not allow that operation (e.g. evicting a released one)."""

    kind = "invalid-transition"
    title = "Operation not allowed in this state"


class Refused(CoreError):
    """The request does not fit even after evicting every strictly-lower evictable holder.

    `blockers` names the holders in the way that could not be evicted.
    """

    kind = "refused"
    title = "No debug register available"

    def __init__(self, detail: str, blockers: list[dict[str, Any]]) -> None:
        super().__init__(detail, blockers=blockers)
        self.blockers = blockers


class LimitReached(CoreError):
    """A session asked for more than a per-session limit allows (`limit`: "allocations",
    "waiting" or "streams", at most `maximum`); it must let something go first."""

    kind = "limit-reached"
    title = "Session limit reached"

    def __init__(self, detail: str, limit: str, maximum: int) -> None:
        super().__init__(detail, limit=limit, maximum=maximum)
        self.limit = limit
        self.maximum = maximum


class Unavailable(CoreError):
    """The host cannot do it now for want of a resource of its own (file descriptors, memory);
    retrying later may work."""

    kind = "unavailable"
    title = "Temporarily unavailable"


class KernelRefused(CoreError):
    """The kernel had no room for what the count rule admitted: users outside debugregd hold
    registers the core did not know of. Nothing changed; the daemon records `measured` (a journaled
    `Arbiter.observe`) and asks again, now deciding on the truth."""

    kind = "kernel-refused"
    title = "The kernel refused"

    def __init__(self, detail: str, measured: Any) -> None:
        super().__init__(detail)
        self.measured = measured

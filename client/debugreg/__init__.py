"""Client library for debugregd: sessions, allocations you hold as handles, eviction notices.

    from debugreg import Client
    with Client("http://127.0.0.1:8765") as client, client.session("tracer") as session:
        alloc = session.allocate(scope={"kind": "cpu", "cpu": 0}, address=0x7F0000001000,
                                 length=8, access="write", on_evicted=print)

`AsyncClient` (and its `AsyncSession`, `AsyncAllocation`) offers the same calls for asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from debugreg.client import DEFAULT_URL, Allocation, Client, Session
from debugreg.errors import (
    Conflict,
    DebugregError,
    Forbidden,
    InvalidRequest,
    LimitReached,
    NotFound,
    Refused,
    ServerError,
    Unauthorized,
    Unreachable,
)
from debugreg.events import Backoff, Handler
from debugreg.schema import AllocationRequest, Event

if TYPE_CHECKING:
    from debugreg.aio import AsyncAllocation, AsyncClient, AsyncSession

_ASYNC = frozenset({"AsyncAllocation", "AsyncClient", "AsyncSession"})


def __getattr__(name: str) -> Any:
    # The async client loads on first use: the CLI and sync programs skip importing asyncio.
    if name in _ASYNC:
        from debugreg import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'debugreg' has no attribute {name!r}")


__all__ = [
    "DEFAULT_URL",
    "Allocation",
    "AllocationRequest",
    "AsyncAllocation",
    "AsyncClient",
    "AsyncSession",
    "Backoff",
    "Client",
    "Conflict",
    "DebugregError",
    "Event",
    "Forbidden",
    "Handler",
    "InvalidRequest",
    "LimitReached",
    "NotFound",
    "Refused",
    "ServerError",
    "Session",
    "Unauthorized",
    "Unreachable",
]

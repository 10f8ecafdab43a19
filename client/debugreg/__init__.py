"""Client library for debugregd: sessions, allocations you hold as handles, eviction notices.

    from debugreg import Client
    with Client("http://127.0.0.1:8765") as client, client.session("tracer") as session:
        alloc = session.allocate(scope={"kind": "cpu", "cpu": 0}, address=0x7F0000001000,
                                 length=8, access="write", on_evicted=print)

`AsyncClient` (and its `AsyncSession`, `AsyncAllocation`) offers the same calls for asyncio.
"""

from __future__ import annotations

import importlib

# Not `typing.TYPE_CHECKING`: importing typing costs `debugreg gdb` 5 ms (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from debugreg.aio import AsyncAllocation, AsyncClient, AsyncSession
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
    from debugreg.events import Backoff, Handler, Handlers
    from debugreg.schema import AllocationRequest, Event

# Every name loads its module on first use, so that `debugreg gdb` starts gdb without loading
# httpx and pydantic (a third of a second), and sync programs skip asyncio.
_HOMES = {
    "debugreg.aio": ("AsyncAllocation", "AsyncClient", "AsyncSession"),
    "debugreg.client": ("DEFAULT_URL", "Allocation", "Client", "Session"),
    "debugreg.errors": (
        "Conflict",
        "DebugregError",
        "Forbidden",
        "InvalidRequest",
        "LimitReached",
        "NotFound",
        "Refused",
        "ServerError",
        "Unauthorized",
        "Unreachable",
    ),
    "debugreg.events": ("Backoff", "Handler", "Handlers"),
    "debugreg.schema": ("AllocationRequest", "Event"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'debugreg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
    "Handlers",
    "InvalidRequest",
    "LimitReached",
    "NotFound",
    "Refused",
    "ServerError",
    "Session",
    "Unauthorized",
    "Unreachable",
]

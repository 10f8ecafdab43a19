"""What the daemon asks of a hardware backend (DESIGN section 12).

The daemon's single event loop thread hands the backend every event the core produced, after the
journal committed them, and polls it for hits. A backend never decides anything: when it cannot
arm what the core installed, it says so, and the daemon evicts that allocation with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from debugregd.core.model import Event

# Event types that put an allocation on the hardware, and those that take it off. `moved` changes
# only the index the core assigned, which perf does not choose, so it arms nothing.
ARM_EVENTS = frozenset({"installed", "reinstalled"})
DISARM_EVENTS = frozenset({"evicted", "released", "expired"})


@dataclass(frozen=True, slots=True)
class ArmFailure:
    """An installed allocation the hardware refused; the daemon evicts it with `reason`."""

    allocation: str
    reason: str
    errno: int | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """Accesses the hardware saw on an allocation since the last poll; `data` goes in the event."""

    allocation: str
    data: dict[str, Any]


class Backend(Protocol):
    """Arms and disarms what the core decided; called from one thread only, so it needs no
    locks."""

    name: str

    def apply(self, events: Sequence[Event]) -> list[ArmFailure]:
        """Arm on installed/reinstalled, disarm on evicted/released/expired; the failures."""
        ...

    def poll_hits(self) -> list[Hit]:
        """Hits observed since the last poll."""
        ...

    def close(self) -> None:
        """Disarm everything and release every kernel resource."""
        ...

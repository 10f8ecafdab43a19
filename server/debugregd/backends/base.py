"""What the daemon asks of a hardware backend (DESIGN section 12).

A backend is the core's kernel (`debugregd.core.kernel.Kernel`): inside a command, before its
commit and its response, the core asks it to arm what it installs and disarm what it lets go, and
its answers are facts the journal keeps. Outside commands, the daemon asks it to measure what users
outside debugregd hold (`measure`), and polls it for hits. A backend never decides anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from debugregd.core.kernel import Answer, Measurement
from debugregd.core.model import Watchpoint


@dataclass(frozen=True, slots=True)
class Hit:
    """Accesses the hardware saw on an allocation since the last poll; `data` goes in the event."""

    allocation: str
    data: dict[str, Any]


@dataclass(slots=True)
class Targets:
    """What to measure in one budget: CPUs for users CPU-wide (`cpus`), tasks (`tasks`), and CPUs
    for the fullest task debugregd does not manage (`others`)."""

    cpus: set[int] = field(default_factory=set)
    tasks: set[int] = field(default_factory=set)
    others: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.cpus or self.tasks or self.others)

    @classmethod
    def refused(cls, wp: Watchpoint) -> Targets:
        """Where the kernel refused `wp`: its task, or its CPUs and the fullest task on each."""
        if wp.tid is None:
            return cls(cpus=set(wp.cpus), others=set(wp.cpus))
        return cls(tasks={wp.tid})


class Backend(Protocol):
    """Arms and disarms what the core decided, measures the rest of the world; called from one
    thread only, so it needs no locks."""

    name: str
    real_tasks: bool  # whether thread ids are this host's (so the daemon watches them exit)

    def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
        """The core's `Kernel.arm`: disarm `freeing`, arm all of `wps`, or leave all as it was."""
        ...

    def disarm(self, wp: Watchpoint) -> None:
        """The core's `Kernel.disarm`: take `wp` off the hardware (nothing if not armed)."""
        ...

    def measure(self, targets: dict[str, Targets]) -> list[Measurement]:
        """What users outside debugregd hold now on `targets`, per budget."""
        ...

    def probe(self) -> dict[str, Any]:
        """What the hardware offers, as found when the daemon starts (shown at /v1/host)."""
        ...

    def lost(self) -> list[Watchpoint]:
        """Armed watchpoints the backend could not arm again after a refused change (another
        user took their registers in between); each is reported once."""
        ...

    def poll_hits(self) -> list[Hit]:
        """Hits observed since the last poll: one report per allocation (DESIGN section 16)."""
        ...

    def resolve(self, hits: Sequence[Hit]) -> None:
        """Name the file and function of each report's call sites, in place (may read files:
        the daemon calls it off its event loop)."""
        ...

    def forget_task(self, tid: int) -> None:
        """Task `tid` exited: drop what is cached about it."""
        ...

    def close(self) -> None:
        """Disarm everything and release every kernel resource."""
        ...

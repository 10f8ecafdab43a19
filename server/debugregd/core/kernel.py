"""The kernel port: how the core asks the hardware to arm what it decides (DESIGN section 12).

The kernel is the truth. Before the core installs a watchpoint, it asks its `Kernel` to arm it,
after disarming the watchpoints it is about to evict; it disarms a watchpoint as soon as its last
holder leaves. A reservation (`arm: false`, whose holder writes the registers itself) is not
armed: the kernel only finds that the room is there. Since it holds nothing of it until the
debugger writes the registers (after the response), a waiter reinstalled in the same operation is
armed only if the kernel still admits the reservation too (`waiting.serve`). The kernel answers
with a fact: armed (None), no room (`NoRoom`, with what users outside debugregd were measured to
hold), or rejected (`Rejected`: no such task, an invalid breakpoint, not permitted, out of
resources).

The core does no I/O: the daemon's kernel is a backend, and a `Recorder` writes every answer that
was not "armed" into the command being run, so that replaying the journal (`Replay`) gets the same
answers without asking the hardware again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from debugregd.core.model import Watchpoint


@dataclass(slots=True)
class Measurement:
    """Registers held by users outside debugregd, as measured on one budget's targets.

    `cpus[c]`: held CPU-wide on CPU c (every task running there competes with them).
    `tasks[t]`: held on task t (it competes with them on every CPU it may run on).
    `others[c]`: held by the fullest task on CPU c that debugregd does not manage (it competes
    only with CPU-wide watchpoints). A target absent from a dict was not measured.
    """

    budget: str
    cpus: dict[int, int] = field(default_factory=dict)
    tasks: dict[int, int] = field(default_factory=dict)
    others: dict[int, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.cpus or self.tasks or self.others)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "cpus": {str(c): n for c, n in self.cpus.items()},
            "tasks": {str(t): n for t, n in self.tasks.items()},
            "others": {str(c): n for c, n in self.others.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(
            data["budget"],
            {int(c): int(n) for c, n in data.get("cpus", {}).items()},
            {int(t): int(n) for t, n in data.get("tasks", {}).items()},
            {int(c): int(n) for c, n in data.get("others", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class NoRoom:
    """The kernel refused for lack of registers (ENOSPC); `measured` says who holds them."""

    measured: Measurement

    def to_dict(self) -> dict[str, Any]:
        return {"answer": "no-room", "measured": self.measured.to_dict()}


# Why the kernel rejected a watchpoint, each with the status a request would get for it.
NO_TASK = "no-task"  # ESRCH: the task exited or never existed
INVALID = "invalid"  # EINVAL, ENODEV, EOPNOTSUPP: this machine cannot watch that
DENIED = "denied"  # EACCES, EPERM: not permitted
UNAVAILABLE = "unavailable"  # EMFILE, ENOMEM...: the daemon ran out of something
REJECTIONS = (NO_TASK, INVALID, DENIED, UNAVAILABLE)


@dataclass(frozen=True, slots=True)
class Rejected:
    """The kernel rejected the watchpoint for another reason than room; `detail` says why and,
    where there is one, what to change."""

    why: str  # one of REJECTIONS
    detail: str
    tid: int | None = None  # the task that does not exist, for NO_TASK

    def to_dict(self) -> dict[str, Any]:
        return {"answer": "rejected", "why": self.why, "detail": self.detail, "tid": self.tid}


Answer = NoRoom | Rejected | None  # None: armed


def answer_from(data: dict[str, Any]) -> Answer:
    """An answer as `to_dict` wrote it into the journal."""
    if data["answer"] == "no-room":
        return NoRoom(Measurement.from_dict(data["measured"]))
    return Rejected(data["why"], data["detail"], data.get("tid"))


class Kernel(Protocol):
    """What the core asks of the hardware. Called only from the thread that runs the core."""

    def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
        """Disarm `freeing`, then arm every one of `wps` (of a reservation, only find that the
        kernel would admit it), all or nothing: unless the answer is None, the kernel is left
        exactly as it was (`freeing` armed again)."""
        ...

    def disarm(self, wp: Watchpoint) -> None:
        """Take `wp` off the hardware; nothing happens if it is not armed."""
        ...


class Unarmed:
    """A kernel that accepts everything and arms nothing: a core with no hardware behind it
    (its own tests, benchmarks of the decision alone)."""

    def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
        return None

    def disarm(self, wp: Watchpoint) -> None:
        pass


class Recorder:
    """Asks a live kernel and keeps, per command, every answer that was not "armed", numbered by
    the call that got it: the facts a replay needs (`Replay`)."""

    __slots__ = ("answers", "calls", "kernel")

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.calls = 0
        self.answers: list[list[Any]] = []

    def begin(self) -> None:
        """Start recording the answers of a new command."""
        self.calls = 0
        if self.answers:
            self.answers = []

    def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
        call = self.calls
        self.calls = call + 1
        answer = self.kernel.arm(wps, freeing)
        if answer is not None:
            self.answers.append([call, answer.to_dict()])
        return answer

    def disarm(self, wp: Watchpoint) -> None:
        self.kernel.disarm(wp)


class Replay:
    """The answers a command got when it ran, given again in the same order without asking the
    hardware (the core asks the same questions in the same order: it is deterministic)."""

    __slots__ = ("_answers", "_calls")

    def __init__(self, recorded: list[list[Any]] | None = None) -> None:
        self._answers = {int(n): answer_from(a) for n, a in recorded or ()}
        self._calls = 0

    def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
        call = self._calls
        self._calls = call + 1
        return self._answers.get(call)

    def disarm(self, wp: Watchpoint) -> None:
        pass

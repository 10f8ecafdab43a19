"""Priorities as API v1 defines them: the named classes, their range, and who may ask for what.

Plain Python with no dependency beyond the standard library, so that the wire schema
(`debugreg.schema`), the clients and the daemon's pure core all use these same values.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal, get_args


class Priority(IntEnum):
    """Named priority classes; any integer from PRIORITY_MIN to PRIORITY_MAX is a priority too."""

    BACKGROUND = 100
    NORMAL = 300
    PTRACE = 700
    CRITICAL = 900


PriorityClass = Literal["background", "normal", "ptrace", "critical"]
"""A class as the wire names it: a `Priority` member's name in lower case."""

PRIORITY_CLASSES: tuple[PriorityClass, ...] = get_args(PriorityClass)
PRIORITY_MIN, PRIORITY_MAX = 0, 1000

OUTSIDE_PRIORITY = PRIORITY_MAX + 1
"""The priority a refusal gives registers held outside debugregd (gdb through ptrace, perf,
bpftrace): above every priority, since the daemon can neither evict them nor tell them anything."""

DEFAULT_MAX_PRIORITY = Priority.NORMAL
"""A session's `max_priority` when it asks for none; asking for more needs the admin key."""


def priority_value(value: int | str) -> int:
    """A class name or an integer from PRIORITY_MIN to PRIORITY_MAX as an integer priority;
    raises ValueError, worded for the user, for anything else."""
    if isinstance(value, str):
        try:
            return int(Priority[value.upper()])
        except KeyError:
            raise ValueError(
                f"unknown priority class {value!r}; use one of {', '.join(PRIORITY_CLASSES)} "
                f"or an integer {PRIORITY_MIN}-{PRIORITY_MAX}"
            ) from None
    if isinstance(value, bool) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(
            f"priority must be {PRIORITY_MIN}-{PRIORITY_MAX} or a class name, got {value!r}"
        )
    return int(value)

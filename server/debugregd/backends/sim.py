"""The simulated backend: no hardware, only a record of what would be armed.

Hits in simulation come from the core itself (`Arbiter.access`), so this backend never has any.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from debugregd.backends.base import ARM_EVENTS, DISARM_EVENTS, ArmFailure, Hit
from debugregd.core.model import Event

LOG_LIMIT = 10_000  # the newest (type, allocation) entries kept: a daemon runs for months


class SimBackend:
    """Records every allocation the core armed, with its latest record, for tests to look at."""

    name = "sim"

    def __init__(self) -> None:
        self.armed: dict[str, dict[str, Any]] = {}  # allocation id -> record as last announced
        # (event type, allocation id), in order, the newest LOG_LIMIT
        self.log: deque[tuple[str, str]] = deque(maxlen=LOG_LIMIT)

    def apply(self, events: Sequence[Event]) -> list[ArmFailure]:
        """Record arming, moving and disarming; the simulation never refuses."""
        for event in events:
            record = event.allocation
            if record is None:
                continue
            aid: str = record["id"]
            if event.type in ARM_EVENTS:
                self.armed[aid] = record
            elif event.type in DISARM_EVENTS:
                self.armed.pop(aid, None)
            elif event.type == "moved" and aid in self.armed:
                self.armed[aid] = record
            else:
                continue
            self.log.append((event.type, aid))
        return []

    def poll_hits(self) -> list[Hit]:
        """Always empty: simulated hits are injected through the core."""
        return []

    def close(self) -> None:
        """Forget everything armed."""
        self.armed.clear()

"""Counting and latency percentiles for the load tester."""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p999", 99.9),
)


class Outcome(StrEnum):
    """How one operation ended: done, refused by the arbiter (409), or anything else."""

    SUCCESS = "success"
    REFUSAL = "refusal"
    ERROR = "error"


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100) of already sorted values; 0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max of latencies in seconds, as milliseconds."""
    ordered = sorted(values_s)
    out = {name: round(percentile(ordered, q) * 1000, 3) for name, q in PERCENTILES}
    out["max"] = round((ordered[-1] if ordered else 0.0) * 1000, 3)
    return out


@dataclass(slots=True)
class OpStats:
    """One operation kind: its outcomes and every latency (seconds)."""

    successes: int = 0
    refusals: int = 0
    errors: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))

    @property
    def count(self) -> int:
        return self.successes + self.refusals + self.errors

    def record(self, latency_s: float, outcome: Outcome) -> None:
        self.latencies.append(latency_s)
        if outcome is Outcome.SUCCESS:
            self.successes += 1
        elif outcome is Outcome.REFUSAL:
            self.refusals += 1
        else:
            self.errors += 1

    def summary(self) -> dict[str, Any]:
        ms = summarize_ms(self.latencies)
        mean = sum(self.latencies) / len(self.latencies) * 1000 if self.latencies else 0.0
        return {
            "count": self.count,
            "successes": self.successes,
            "refusals": self.refusals,
            "errors": self.errors,
            "p50_ms": ms["p50"],
            "p90_ms": ms["p90"],
            "p99_ms": ms["p99"],
            "p999_ms": ms["p999"],
            "max_ms": ms["max"],
            "mean_ms": round(mean, 3),
        }


class Recorder:
    """Every operation's outcome and latency, plus a short window for the live display."""

    WINDOW_S = 5.0

    def __init__(self) -> None:
        self.ops: dict[str, OpStats] = {}
        self.error_kinds: Counter[str] = Counter()
        self.recent: deque[tuple[float, str, float]] = deque()  # (when, op, latency)

    def record(self, op: str, latency_s: float, outcome: Outcome, error: str = "") -> None:
        stats = self.ops.get(op)
        if stats is None:
            stats = self.ops[op] = OpStats()
        stats.record(latency_s, outcome)
        if outcome is Outcome.ERROR:
            self.error_kinds[f"{op}: {error or 'error'}"] += 1
        now = time.monotonic()
        self.recent.append((now, op, latency_s))
        while self.recent and self.recent[0][0] < now - self.WINDOW_S:
            self.recent.popleft()

    @property
    def total(self) -> int:
        return sum(s.count for s in self.ops.values())

    def totals(self) -> dict[str, int]:
        return {
            "operations": self.total,
            "successes": sum(s.successes for s in self.ops.values()),
            "refusals": sum(s.refusals for s in self.ops.values()),
            "errors": sum(s.errors for s in self.ops.values()),
        }

    def recent_rate(self) -> float:
        """Operations per second over the window."""
        if not self.recent:
            return 0.0
        span = max(time.monotonic() - self.recent[0][0], 1e-3)
        return len(self.recent) / min(span, self.WINDOW_S) if span else 0.0

    def recent_p99_ms(self, prefix: str = "allocate") -> float:
        """p99 of the window's operations whose name starts with `prefix`."""
        values = sorted(lat for _, op, lat in self.recent if op.startswith(prefix))
        return percentile(values, 99.0) * 1000

"""Prometheus metrics of one daemon (its own registry, so tests can run several apps)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from debugregd.core import Arbiter, Priority, State, priority_class
from debugregd.hub import EventHub

LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)
# From a commit to the bytes handed to a stream's socket: a loaded loop takes milliseconds.
NOTICE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Every class is exported from the start, at 0, so a first refusal is a rate, not a new series.
PRIORITY_CLASSES = ("below-background", *(p.name.lower() for p in Priority))


def refused_class(command: dict[str, Any]) -> str:
    """The priority class of a refused command; a raw debug-register write asks at ptrace's."""
    if command.get("op") == "set_debugregs":
        return priority_class(Priority.PTRACE)
    # The journaled request carries the priority as an integer already.
    return priority_class(int(command.get("request", {}).get("priority", Priority.NORMAL)))


@dataclass
class Stats:
    """Monotonic counters, plain integers the runtime bumps on the hot path; Prometheus reads
    them at scrape time (a `prometheus_client.Counter` takes a lock on every increment)."""

    allocations: int = 0
    evictions: int = 0
    refusals: int = 0
    events: dict[str, int] = field(default_factory=dict)
    refusals_by_class: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(PRIORITY_CLASSES, 0)
    )
    commit_failures: int = 0

    def refused(self, command: dict[str, Any]) -> None:
        """Count a refusal, by the priority class that asked."""
        self.refusals += 1
        cls = refused_class(command)
        self.refusals_by_class[cls] = self.refusals_by_class.get(cls, 0) + 1


class LatencyHistogram(Collector):
    """A histogram the event loop fills with plain arithmetic, exposed at scrape time.

    `prometheus_client.Histogram.observe` takes a lock and walks every bucket; it ran twice per
    request. Only the loop thread observes, and /metrics is scraped on that thread too: no lock.
    """

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.bounds = name, doc, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one counts observations past the top
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le is "less or equal").
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            cumulative.append((bound, total))
        family = HistogramMetricFamily(self.name, self.doc)
        family.add_metric([], cumulative, self.sum)
        yield family


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class _ArbiterCollector(Collector):
    """Gauges and counters read at scrape time, so they never drift from the truth."""

    def __init__(
        self,
        arbiter: Callable[[], Arbiter],
        hub: Callable[[], EventHub],
        stats: Callable[[], Stats],
    ) -> None:
        self.arbiter = arbiter
        self.hub = hub
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats()
        events = CounterMetricFamily("debugregd_events", "Events by type", labels=["type"])
        for kind, n in sorted(st.events.items()):
            events.add_metric([kind], n)
        yield events
        yield _counter("debugregd_evictions", "Allocations evicted", st.evictions)
        refusals = CounterMetricFamily(
            "debugregd_refusals",
            "Requests refused (409), by the priority class that asked",
            labels=["priority_class"],
        )
        for cls, n in st.refusals_by_class.items():
            refusals.add_metric([cls], n)
        yield refusals
        yield _counter(
            "debugregd_journal_commit_failures",
            "Group commits the journal failed (the daemon then stops: fail-stop)",
            st.commit_failures,
        )
        yield _counter("debugregd_allocations_installed", "Installations", st.allocations)
        yield _counter(
            "debugregd_sse_slow_disconnects",
            "Streams cut off for not keeping up",
            self.hub().disconnected_slow,
        )
        arb = self.arbiter()
        by_state = GaugeMetricFamily(
            "debugregd_allocations", "Live allocations by state", labels=["state"]
        )
        counts = {State.INSTALLED: 0, State.WAITING: 0}
        for alloc in arb.allocations.values():
            if alloc.state in counts:
                counts[alloc.state] += 1
        for state, n in counts.items():
            by_state.add_metric([state.value], n)
        yield by_state
        yield GaugeMetricFamily("debugregd_sessions", "Open sessions", value=len(arb.sessions))
        used = GaugeMetricFamily(
            "debugregd_registers_used",
            "Registers in use per CPU and pool while the fullest task runs",
            labels=["cpu", "pool"],
        )
        slots = GaugeMetricFamily(
            "debugregd_register_slots",
            "Registers per CPU and pool (the denominator of occupancy)",
            labels=["cpu", "pool"],
        )
        for key, budget in arb.budgets.items():
            for cpu in range(arb.ncpus):
                used.add_metric([str(cpu), key], budget.used(cpu))
                slots.add_metric([str(cpu), key], budget.slots)
        yield used
        yield slots
        outside = GaugeMetricFamily(
            "debugregd_outside_registers",
            "Registers users outside debugregd hold, as last measured, per CPU and pool: "
            "kind cpu (CPU-wide), task (the most any one task debugregd manages holds outside "
            "it), others (the fullest task debugregd does not manage)",
            labels=["cpu", "pool", "kind"],
        )
        held: dict[tuple[str, str, str], int] = {}
        for (pool, kind, _), holder in arb.outside.items():
            if holder.wp is None:
                continue
            for c in holder.wp.cpus:
                where = (str(c), pool, kind)
                held[where] = max(held.get(where, 0), holder.held)
        for labels, n in sorted(held.items()):
            outside.add_metric(list(labels), n)
        yield outside
        yield GaugeMetricFamily(
            "debugregd_sse_subscribers", "Open event streams", value=len(self.hub().subscribers)
        )
        yield GaugeMetricFamily("debugregd_last_event_id", "Last event id", value=arb.event_id)


class Metrics:
    """The daemon's registry: histograms it observes as it works, and a collector that reads
    the arbiter and the counters when scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.decisions = LatencyHistogram(
            "debugregd_decision_seconds",
            "Time the arbiter takes to decide one command",
            LATENCY_BUCKETS,
        )
        self.commits = LatencyHistogram(
            "debugregd_journal_commit_seconds",
            "Time of one group commit to the journal",
            LATENCY_BUCKETS,
        )
        self.notices = LatencyHistogram(
            "debugregd_notice_delivery_seconds",
            "Time from an event's commit to its delivery on a live event stream",
            NOTICE_BUCKETS,
        )
        r.register(self.decisions)
        r.register(self.commits)
        r.register(self.notices)
        self.up = Gauge("debugregd_up", "1 while the daemon serves", registry=r)
        # process_start_time_seconds (restarts: the fail-stop of a failing journal shows here)
        # and process_open_fds against process_max_fds (LimitNOFILE: every stream holds one).
        ProcessCollector(registry=r)

    def watch(
        self,
        arbiter: Callable[[], Arbiter],
        hub: Callable[[], EventHub],
        stats: Callable[[], Stats],
    ) -> None:
        self.registry.register(_ArbiterCollector(arbiter, hub, stats))

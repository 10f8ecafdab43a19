"""Prometheus metrics of one daemon (its own registry, so tests can run several apps)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from debugregd.core import Arbiter, State
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


@dataclass
class Stats:
    """Monotonic counters, plain integers the runtime bumps on the hot path; Prometheus reads
    them at scrape time (a `prometheus_client.Counter` takes a lock on every increment)."""

    allocations: int = 0
    evictions: int = 0
    refusals: int = 0
    events: dict[str, int] = field(default_factory=dict)


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
        yield _counter("debugregd_refusals", "Requests refused (409)", st.refusals)
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
        for key, budget in arb.budgets.items():
            for cpu in range(arb.ncpus):
                used.add_metric([str(cpu), key], budget.used(cpu))
        yield used
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
        r.register(self.decisions)
        r.register(self.commits)
        self.up = Gauge("debugregd_up", "1 while the daemon serves", registry=r)

    def watch(
        self,
        arbiter: Callable[[], Arbiter],
        hub: Callable[[], EventHub],
        stats: Callable[[], Stats],
    ) -> None:
        self.registry.register(_ArbiterCollector(arbiter, hub, stats))

"""Sampled hits aggregated per allocation per interval, so that a hot watchpoint can neither flood
the event stream nor take the daemon's CPU (DESIGN section 16).

Pure: no I/O and no clock; time is a parameter. The caller feeds, per key (an allocation id, or
the perf backend's key of a watchpoint that identical allocations share):
- `count(key, hits, lost)`: how much the exact counter and the kernel's lost-sample count grew
  (deltas of `SampleReader.totals()`);
- `add(key, samples)`: samples drained from the key's rings, at most `room(key)` of them;
and once per interval calls `flush(now, resolve)`, which returns one report per key that had hits,
samples or losses since the previous flush, and starts the next interval.

Bounded: at most `budget` samples per key per interval are attributed to call sites; any beyond
are dropped and counted as lost. A reader asked to drain only `room(key)` samples leaves the rest in
its ring, where the kernel drops (and counts) what no longer fits, so the excess costs the daemon
nothing at all. Memory per key is at most `budget` sites; `flush` sorts them and keeps only the
`sites` it reports, named at once when given `resolve` (`symbols.Resolver.resolve`); the daemon
names them later instead, off its event loop, through `name_site`.

A report, the payload of a `hit` event:

    {
      "count": 4500,          # hits in the interval: exact, from the counter
      "sampled": 4500,        # samples attributed to the sites below and to other_*
      "lost": 0,              # samples not attributed: dropped by the kernel (ring full) or over
                              # the interval's budget
      "interval_s": 0.1,      # since the previous flush
      "sites": [              # up to `sites` call sites, most samples first
        {
          "ip": "0x55d1c0a01139",
          "pid": 4242,
          "symbol": "writer_b+0x12",                        # null: no symbol covers the ip
          "mapping": {"file": "/tmp/t", "offset": "0x1139"}, # null: not resolved
          "first": 1764147000.1234,  # the time of its first and last sample this interval
          "last": 1764147000.2011,
          "count": 3000,             # its samples
          "tids": [4242],            # up to `tids` thread ids, lowest first
          "threads": 1,              # how many distinct threads
          "cpus": [0, 1],
        },
      ],
      "other_sites": 0,       # distinct sites sampled beyond those listed
      "other_count": 0,       # their samples
    }

Over the life of a watch, count = sampled + lost + the samples still in the ring; within one
interval they differ by the samples in flight (a hit counted before its sample was drained). When a
watch ends, `add(key, reader.drain().samples)` (no limit) before closing its reader: what a budget
left in the ring is then counted as lost, and count = sampled + lost holds exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypedDict

from debugregd.backends.ring import Column, SampleBatch
from debugregd.backends.symbols import Location

DEFAULT_SITES = 8
DEFAULT_BUDGET = 2_000  # samples per key per interval: 20,000 a second at the default 100 ms
DEFAULT_TIDS = 8

Resolve = Callable[[int, int], Location | None]  # (pid, ip) -> where


class MappingReport(TypedDict):
    file: str
    offset: str


class SiteReport(TypedDict):
    ip: str
    pid: int
    symbol: str | None
    mapping: MappingReport | None
    first: float
    last: float
    count: int
    tids: list[int]
    threads: int
    cpus: list[int]


class HitReport(TypedDict):
    count: int
    sampled: int
    lost: int
    interval_s: float
    sites: list[SiteReport]
    other_sites: int
    other_count: int


def name_site(site: SiteReport, location: Location | None) -> None:
    """Fill in where `site` is (its mapping and symbol), when `location` is known."""
    if location is not None:
        site["mapping"] = {"file": location.file, "offset": f"{location.offset:#x}"}
        site["symbol"] = location.symbol


@dataclass(slots=True)
class _Site:
    first: int  # ns, the samples' clock
    last: int
    count: int
    tids: set[int] = field(default_factory=set)
    cpus: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Interval:
    hits: int = 0
    lost: int = 0  # the kernel's
    dropped: int = 0  # ours, over the budget
    sampled: int = 0
    sites: dict[tuple[int, int], _Site] = field(default_factory=dict)  # by (pid, ip)


class HitAggregator:
    """Per-key counts and call sites of the current interval (see the module for the report)."""

    def __init__(
        self,
        now: float,
        *,
        sites: int = DEFAULT_SITES,
        budget: int = DEFAULT_BUDGET,
        tids: int = DEFAULT_TIDS,
        time_offset: float = 0.0,
    ) -> None:
        """Start the first interval at `now`. Sample times are nanoseconds of CLOCK_MONOTONIC;
        reports give them in seconds plus `time_offset` (time.time() - time.monotonic() puts them
        on the wall clock)."""
        self.sites = sites
        self.budget = budget
        self.tids = tids
        self.time_offset = time_offset
        self._since = now
        self._intervals: dict[Hashable, _Interval] = {}

    def room(self, key: Hashable) -> int:
        """How many more samples this interval attributes for `key`."""
        interval = self._intervals.get(key)
        return self.budget - (interval.sampled if interval is not None else 0)

    def count(self, key: Hashable, hits: int, lost: int = 0) -> None:
        """Hits the counter counted and samples the kernel lost, since the last call."""
        interval = self._interval(key)
        interval.hits += hits
        interval.lost += lost

    def add(self, key: Hashable, samples: SampleBatch) -> None:
        """Attribute samples to their call sites, up to the interval's budget; count the rest."""
        interval = self._interval(key)
        taken = min(len(samples), self.budget - interval.sampled)
        interval.dropped += len(samples) - taken
        if taken <= 0:
            return
        if taken < len(samples):
            samples = samples.head(taken)
        interval.sampled += taken
        ip, pid = samples.shared("ip"), samples.shared("pid")
        if ip is not None and pid is not None:
            self._add_one_site(interval, (pid, ip), samples)
        else:
            where = list(zip(samples.pids(), samples.ips(), strict=True))
            self._add_sites(interval, where, samples)

    @staticmethod
    def _add_one_site(interval: _Interval, where: tuple[int, int], samples: SampleBatch) -> None:
        # The usual batch: one instruction of one process writes the watched word, often from one
        # thread on one CPU. Columns are compared as bytes and only varied ones become Python ints:
        # about 20 ns a sample against 500 for the general case.
        times = samples.column("time")
        site = interval.sites.get(where)
        if site is None:
            site = interval.sites[where] = _Site(times[0], times[-1], 0)
        site.count += len(times)
        site.first = min(site.first, times[0])
        site.last = max(site.last, times[-1])
        varied: tuple[tuple[Column, set[int]], ...] = (("tid", site.tids), ("cpu", site.cpus))
        for name, seen in varied:
            value = samples.shared(name)
            if value is not None:
                seen.add(value)
            else:
                seen.update(samples.column(name).tolist())

    @staticmethod
    def _add_sites(interval: _Interval, where: list[tuple[int, int]], samples: SampleBatch) -> None:
        # Column at a time, so the per-sample work runs in C (zip, Counter, dict, set); Python
        # loops only over distinct sites and distinct (site, thread) pairs.
        times = samples.times()
        last = dict(zip(where, times, strict=True))
        first = dict(zip(reversed(where), reversed(times), strict=True))
        sites = interval.sites
        for site_key, n in Counter(where).items():
            site = sites.get(site_key)
            if site is None:
                sites[site_key] = _Site(first[site_key], last[site_key], n)
            else:
                site.count += n
                site.first = min(site.first, first[site_key])
                site.last = max(site.last, last[site_key])
        for site_key, tid in set(zip(where, samples.tids(), strict=True)):
            sites[site_key].tids.add(tid)
        for site_key, cpu in set(zip(where, samples.cpus(), strict=True)):
            sites[site_key].cpus.add(cpu)

    def flush(self, now: float, resolve: Resolve | None = None) -> dict[Hashable, HitReport]:
        """The reports of the interval ending `now`, one per key with anything to say; the next
        interval starts empty."""
        interval_s = max(now - self._since, 0.0)
        reports: dict[Hashable, HitReport] = {}
        for key, interval in self._intervals.items():
            if interval.hits or interval.sampled or interval.lost or interval.dropped:
                reports[key] = self._report(interval, interval_s, resolve)
        self._intervals.clear()
        self._since = now
        return reports

    def take(self, key: Hashable, now: float) -> HitReport | None:
        """The report of `key` alone, its interval so far ending `now` (its watch ends): None
        when it has nothing to say."""
        interval = self._intervals.pop(key, None)
        if interval is None or not (
            interval.hits or interval.sampled or interval.lost or interval.dropped
        ):
            return None
        return self._report(interval, max(now - self._since, 0.0), None)

    def _interval(self, key: Hashable) -> _Interval:
        interval = self._intervals.get(key)
        if interval is None:
            interval = self._intervals[key] = _Interval()
        return interval

    def _report(self, interval: _Interval, interval_s: float, resolve: Resolve | None) -> HitReport:
        ranked = sorted(interval.sites.items(), key=lambda kv: (-kv[1].count, kv[1].first))
        shown, rest = ranked[: self.sites], ranked[self.sites :]
        return {
            "count": interval.hits,
            "sampled": interval.sampled,
            "lost": interval.lost + interval.dropped,
            "interval_s": round(interval_s, 6),
            "sites": [self._site(pid, ip, site, resolve) for (pid, ip), site in shown],
            "other_sites": len(rest),
            "other_count": sum(site.count for _key, site in rest),
        }

    def _site(self, pid: int, ip: int, site: _Site, resolve: Resolve | None) -> SiteReport:
        report: SiteReport = {
            "ip": f"{ip:#x}",
            "pid": pid,
            "symbol": None,
            "mapping": None,
            "first": self._seconds(site.first),
            "last": self._seconds(site.last),
            "count": site.count,
            "tids": sorted(site.tids)[: self.tids],
            "threads": len(site.tids),
            "cpus": sorted(site.cpus),
        }
        if resolve is not None:
            name_site(report, resolve(pid, ip))
        return report

    def _seconds(self, ns: int) -> float:
        return ns / 1e9 + self.time_offset

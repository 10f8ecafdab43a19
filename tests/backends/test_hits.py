"""Aggregating sampled hits: one report per allocation per interval, with the counter's exact count,
the samples lost, and a bounded list of call sites; whatever is left out is counted."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from debugregd.backends.hits import HitAggregator
from debugregd.backends.ring import Sample, SampleBatch
from debugregd.backends.symbols import Location

PID = 4242


def hits_at(ip: int, n: int, *, tid: int = PID, cpu: int = 0, t0: int = 0) -> list[Sample]:
    return [Sample(ip, PID, tid, t0 + i, cpu, 0x4040) for i in range(n)]


def batch(*groups: list[Sample]) -> SampleBatch:
    return SampleBatch.of(s for group in groups for s in group)


def test_the_count_is_the_counters_not_the_samples() -> None:
    agg = HitAggregator(0.0)
    agg.count("a1", hits=20_000, lost=19_990)
    agg.add("a1", batch(hits_at(0x1000, 10)))
    report = agg.flush(0.1)["a1"]
    assert (report["count"], report["sampled"], report["lost"]) == (20_000, 10, 19_990)
    assert report["interval_s"] == 0.1


def test_sites_are_sorted_by_count_and_name_threads_and_cpus() -> None:
    agg = HitAggregator(0.0, budget=10_000)
    agg.count("a1", hits=4_500)
    agg.add("a1", batch(hits_at(0xA, 1_000), hits_at(0xB, 3_000), hits_at(0xC, 500, tid=7, cpu=1)))
    report = agg.flush(0.1)["a1"]
    sites = [(s["ip"], s["count"], s["tids"], s["cpus"]) for s in report["sites"]]
    assert sites == [("0xb", 3_000, [PID], [0]), ("0xa", 1_000, [PID], [0]), ("0xc", 500, [7], [1])]
    assert (report["other_sites"], report["other_count"]) == (0, 0)


def test_sites_beyond_the_limit_are_counted_not_listed() -> None:
    agg = HitAggregator(0.0, sites=8, budget=10_000)
    groups = [hits_at(0x1000 + ip, 100 - ip) for ip in range(50)]  # 50 sites, 100 .. 51 hits
    agg.add("a1", batch(*groups))
    report = agg.flush(1.0)["a1"]
    assert [s["count"] for s in report["sites"]] == list(range(100, 92, -1))
    assert report["other_sites"] == 42
    assert report["other_count"] == sum(range(51, 93))
    assert report["sampled"] == sum(range(51, 101))


def test_samples_over_the_budget_are_counted_as_lost_and_cost_no_sites() -> None:
    agg = HitAggregator(0.0, budget=1_000)
    agg.count("a1", hits=5_000)
    agg.add("a1", batch(hits_at(0xA, 600)))
    assert agg.room("a1") == 400
    agg.add("a1", batch([Sample(0x2000 + i, PID, PID, i, 0, 0) for i in range(4_400)]))
    assert agg.room("a1") == 0
    report = agg.flush(0.1)["a1"]
    assert (report["count"], report["sampled"], report["lost"]) == (5_000, 1_000, 4_000)
    assert len(report["sites"]) + report["other_sites"] == 1 + 400  # only what was in the budget
    assert agg.room("a1") == 1_000  # a new interval, a new budget


def test_the_thread_list_is_bounded_and_the_total_is_given() -> None:
    agg = HitAggregator(0.0, tids=3)
    agg.add("a1", batch(*(hits_at(0xA, 2, tid=tid) for tid in range(100, 110))))
    (site,) = agg.flush(0.1)["a1"]["sites"]
    assert (site["tids"], site["threads"]) == ([100, 101, 102], 10)


def test_first_and_last_are_the_sample_times_on_the_reports_clock() -> None:
    agg = HitAggregator(0.0, time_offset=1_000.0)
    agg.add("a1", batch(hits_at(0xA, 2, t0=3_000_000_000)))
    agg.add("a1", batch(hits_at(0xA, 1, t0=2_000_000_000), hits_at(0xA, 1, t0=5_000_000_000)))
    (site,) = agg.flush(0.1)["a1"]["sites"]
    assert (site["first"], site["last"], site["count"]) == (1_002.0, 1_005.0, 4)


def test_only_keys_with_something_to_say_are_reported_and_each_interval_starts_empty() -> None:
    agg = HitAggregator(0.0)
    agg.count("quiet", hits=0)
    agg.count("busy", hits=3)
    assert set(agg.flush(0.1)) == {"busy"}
    assert agg.flush(0.2) == {}
    agg.count("busy", hits=1)
    assert agg.flush(0.5)["busy"]["interval_s"] == 0.3


def test_only_the_reported_sites_are_resolved() -> None:
    asked: list[tuple[int, int]] = []

    def resolve(pid: int, ip: int) -> Location | None:
        asked.append((pid, ip))
        return Location("/tmp/t", ip - 0x1000, f"writer+{ip - 0x1000:#x}") if ip != 0x1003 else None

    agg = HitAggregator(0.0, sites=3)
    agg.add("a1", batch(*(hits_at(0x1000 + i, 10 - i) for i in range(6))))
    report = agg.flush(0.1, resolve)["a1"]
    assert asked == [(PID, 0x1000), (PID, 0x1001), (PID, 0x1002)]
    assert report["sites"][1]["symbol"] == "writer+0x1"
    assert report["sites"][1]["mapping"] == {"file": "/tmp/t", "offset": "0x1"}


def test_an_unresolved_site_says_so_with_nulls() -> None:
    agg = HitAggregator(0.0)
    agg.add("a1", batch(hits_at(0xA, 1)))
    (site,) = agg.flush(0.1, lambda pid, ip: None)["a1"]["sites"]
    assert (site["symbol"], site["mapping"]) == (None, None)


def test_a_report_is_plain_json() -> None:
    agg = HitAggregator(0.0)
    agg.count("a1", hits=2, lost=1)
    agg.add("a1", batch(hits_at(0xA, 1)))
    report = agg.flush(0.1)["a1"]
    assert json.loads(json.dumps(report)) == report


def test_a_flood_of_samples_keeps_the_report_and_the_state_bounded() -> None:
    agg = HitAggregator(0.0, sites=8, budget=2_000)
    distinct = [Sample(0x10_0000 + i, PID, 1 + i % 5_000, i, i % 64, 0) for i in range(2_730)]
    chunk = SampleBatch.of(distinct)
    for _ in range(200):  # 546,000 samples in one interval, each a new site
        agg.add("a1", chunk)
    agg.count("a1", hits=546_000)
    report = agg.flush(0.1)["a1"]
    assert report["count"] == 546_000
    assert report["sampled"] + report["lost"] == 546_000
    assert report["sampled"] == 2_000
    assert len(report["sites"]) == 8
    assert len(json.dumps(report)) < 8_000


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from([0xA, 0xB, 0xC]), st.sampled_from([1, 2]), st.integers(1, 4)),
            min_size=1,
            max_size=30,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_sites_agree_with_counting_sample_by_sample(
    batches: list[list[tuple[int, int, int]]],
) -> None:
    agg = HitAggregator(0.0, sites=100, budget=10_000, tids=100)
    counts: Counter[tuple[int, int]] = Counter()
    tids: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    first: dict[tuple[int, int], float] = {}
    last: dict[tuple[int, int], float] = {}
    clock = 0
    for drawn in batches:
        samples = []
        for ip, pid, tid in drawn:
            clock += 1  # a ring's samples are in time order
            samples.append(Sample(ip, pid, tid, clock * 1_000_000_000, tid % 2, 0))
            counts[pid, ip] += 1
            tids[pid, ip].add(tid)
            first.setdefault((pid, ip), clock)
            last[pid, ip] = clock
        agg.add("k", SampleBatch.of(samples))
    expected = {key: (counts[key], tids[key], first[key], last[key]) for key in counts}
    got = {
        (s["pid"], int(s["ip"], 16)): (s["count"], set(s["tids"]), s["first"], s["last"])
        for s in agg.flush(1.0)["k"]["sites"]
    }
    assert got == expected

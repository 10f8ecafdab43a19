"""The sim backend keeps a record of what the core armed and nothing else."""

from __future__ import annotations

import pytest

from debugregd.backends import SimBackend, make_backend
from debugregd.backends.sim import LOG_LIMIT
from debugregd.core import Access, Arbiter, OnEvict, Priority, Request, Scope

WORD = 0x7FFD1000


def watch(
    tid: int,
    address: int = WORD,
    priority: int = Priority.NORMAL,
    on_evict: OnEvict = OnEvict.RELEASE,
) -> Request:
    return Request(Scope.task(tid), address, 8, Access.WRITE, priority, on_evict=on_evict)


def test_installed_allocation_is_armed_with_its_record() -> None:
    arb, sim = Arbiter(ncpus=2), SimBackend()
    alloc, events = arb.allocate(None, watch(10), 0.0)
    assert sim.apply(events) == []
    assert sim.armed[alloc.id]["address"] == WORD
    assert sim.armed[alloc.id]["registers"] == [
        {"cpu": 0, "pool": "dr", "index": 0},
        {"cpu": 1, "pool": "dr", "index": 0},
    ]
    assert list(sim.log) == [("installed", alloc.id)]


def test_released_allocation_is_disarmed() -> None:
    arb, sim = Arbiter(ncpus=2), SimBackend()
    alloc, events = arb.allocate(None, watch(10), 0.0)
    sim.apply(events)
    _, events = arb.release(alloc.id, 1.0)
    sim.apply(events)
    assert sim.armed == {}
    assert list(sim.log) == [("installed", alloc.id), ("released", alloc.id)]


def test_moved_allocation_keeps_its_latest_record() -> None:
    arb, sim = Arbiter(ncpus=1), SimBackend()
    first, events = arb.allocate(None, watch(10), 0.0)
    sim.apply(events)
    second, events = arb.allocate(None, watch(10, WORD + 8), 0.0)
    sim.apply(events)
    assert sim.armed[second.id]["registers"] == [{"cpu": 0, "pool": "dr", "index": 1}]
    _, events = arb.release(first.id, 1.0)
    sim.apply(events)
    assert sim.armed[second.id]["registers"] == [{"cpu": 0, "pool": "dr", "index": 0}]
    assert list(sim.log)[-2:] == [("released", first.id), ("moved", second.id)]


def test_evicted_allocation_is_disarmed_and_rearmed_when_reinstalled() -> None:
    arb, sim = Arbiter(ncpus=1), SimBackend()
    low = []
    for n in range(4):
        alloc, events = arb.allocate(None, watch(10, WORD + 8 * n, on_evict=OnEvict.WAIT), 0.0)
        sim.apply(events)
        low.append(alloc)
    high, events = arb.allocate(None, watch(10, WORD + 64, priority=Priority.PTRACE), 1.0)
    sim.apply(events)
    (victim,) = [a for a in low if a.id not in sim.armed]
    assert high.id in sim.armed
    assert ("evicted", victim.id) in sim.log
    _, events = arb.release(high.id, 2.0)
    sim.apply(events)
    assert victim.id in sim.armed
    assert list(sim.log)[-2:] == [("released", high.id), ("reinstalled", victim.id)]


def test_sim_never_reports_hits_of_its_own() -> None:
    arb, sim = Arbiter(ncpus=1), SimBackend()
    sim.apply(arb.allocate(None, watch(10), 0.0)[1])
    assert sim.poll_hits() == []


def test_close_forgets_everything_armed() -> None:
    arb, sim = Arbiter(ncpus=1), SimBackend()
    sim.apply(arb.allocate(None, watch(10), 0.0)[1])
    sim.close()
    assert sim.armed == {}


def test_unknown_backend_name_is_refused_with_the_choices() -> None:
    assert make_backend("sim").name == "sim"
    with pytest.raises(ValueError, match="choose one of sim, perf"):
        make_backend("ptrace")


def test_the_log_keeps_only_the_newest_entries() -> None:
    """A daemon on the sim backend runs for months: its log must not grow with every event."""
    arb, sim = Arbiter(ncpus=1), SimBackend()
    for tid in range(1, LOG_LIMIT + 2):  # one more pair than the log holds
        alloc, events = arb.allocate(None, watch(tid), 0.0)
        sim.apply(events)
        sim.apply(arb.release(alloc.id, 0.0)[1])
    assert len(sim.log) == LOG_LIMIT
    assert list(sim.log)[-1] == ("released", alloc.id)
    assert sim.armed == {}

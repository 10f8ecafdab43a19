"""Sampled hits on real hardware: a C program whose functions write a watched word a known number
of times, watched by task-scoped sampling breakpoints on its threads (pid=tid, cpu=-1). Counts
come exact from the counters, call sites name the functions with the right split and the thread
that wrote, lost samples are counted, and an event loop drains the rings when the kernel says."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from debugregd.backends import perf_event
from debugregd.backends.hits import HitAggregator, HitReport
from debugregd.backends.ring import SampleReader, open_sampler
from debugregd.backends.symbols import Resolver
from tests.support.ctarget import compile_c, run_writers

pytestmark = pytest.mark.perf

A, B, C = 1_000, 3_000, 500  # writer_a and writer_b on the main thread, writer_c on the second


@pytest.fixture(scope="module")
def writers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c("writers.c", tmp_path_factory.mktemp("sampling") / "writers")


@contextmanager
def sampling(tid: int, address: int, data_pages: int = 32) -> Iterator[SampleReader]:
    """A sampling write breakpoint on one thread of a child; skips when the registers are taken."""
    try:
        reader = open_sampler(perf_event.HW_BREAKPOINT_W, address, 8, tid, data_pages=data_pages)
    except perf_event.PerfEventError as exc:
        if exc.errno == errno.ENOSPC:
            pytest.skip(
                "the kernel refused a breakpoint (ENOSPC): another user holds this task's or a "
                "CPU's debug registers right now"
            )
        raise
    with reader:
        yield reader


def by_function(report: HitReport) -> dict[str, tuple[int, list[int]]]:
    """Each site's function name, with its sample count and threads."""
    found = {}
    for site in report["sites"]:
        assert site["symbol"] is not None, site
        found[site["symbol"].split("+")[0]] = (site["count"], site["tids"])
    return found


def test_counts_are_exact_and_call_sites_name_each_writer_and_thread(
    perf_permitted: None, writers: Path
) -> None:
    resolver = Resolver()
    aggregator = HitAggregator(0.0, budget=10_000)
    with run_writers(writers, A, B, C) as w:
        # 128 pages hold every sample of the run: nothing is lost, so the split is exact too.
        with (
            sampling(w.pid, w.watched, data_pages=128) as main,
            sampling(w.second_tid, w.watched, data_pages=128) as second,
        ):
            w.go()
            for reader in (main, second):
                aggregator.add("watched", reader.drain().samples)
                totals = reader.totals()
                aggregator.count("watched", totals.hits, totals.lost)
        report = aggregator.flush(0.1, resolver.resolve)["watched"]
    assert (report["count"], report["sampled"], report["lost"]) == (A + B + C, A + B + C, 0)
    assert by_function(report) == {
        "writer_b": (B, [w.pid]),
        "writer_a": (A, [w.pid]),
        "writer_c": (C, [w.second_tid]),
    }
    for site in report["sites"]:
        assert site["mapping"] is not None and site["mapping"]["file"] == str(writers)


def test_a_full_ring_loses_samples_but_never_hits(perf_permitted: None, writers: Path) -> None:
    with run_writers(writers, A, 0, 0) as w, sampling(w.pid, w.watched, data_pages=1) as main:
        w.go()  # 1,000 samples into a ring of one page, not drained meanwhile
        drained = main.drain()
        totals = main.totals()
    assert totals.hits == A
    assert 0 < len(drained.samples) < A
    assert len(drained.samples) + totals.lost == A


def test_a_task_that_exits_is_seen_even_with_records_left_in_the_ring(
    perf_permitted: None, writers: Path
) -> None:
    with run_writers(writers, A, 0, 0) as w, sampling(w.pid, w.watched) as main:
        w.go()
        assert w.proc.stdin is not None
        w.proc.stdin.close()
        w.proc.wait()
        # A budget spent: nothing taken, yet the hangup is noticed (else the fd spins the loop).
        assert (main.drain(limit=0).samples.data, main.exited) == (b"", True)
        assert len(main.drain().samples) == A  # what was left is still there to drain


async def test_an_event_loop_drains_when_the_kernel_wakes_it(
    perf_permitted: None, writers: Path
) -> None:
    writes = 20_000  # about 7 rings' worth at the default 32 pages: it must be drained meanwhile
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        str(writers),
        str(writes),
        "0",
        "0",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        fields = (await proc.stdout.readline()).split()
        pid, watched = int(fields[0]), int(fields[2], 16)
        aggregator = HitAggregator(0.0, budget=writes)
        wakeups = 0
        ended: asyncio.Future[None] = loop.create_future()
        with sampling(pid, watched) as reader:

            def on_readable() -> None:
                nonlocal wakeups
                wakeups += 1
                aggregator.add("watched", reader.drain().samples)
                if reader.exited:  # the task is gone: the fd would stay readable for good
                    loop.remove_reader(reader.fd)
                    ended.set_result(None)

            loop.add_reader(reader.fd, on_readable)
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            assert (await asyncio.wait_for(proc.stdout.readline(), 60)) == b"done\n"
            proc.stdin.close()  # the program exits; the kernel wakes the reader with a hangup
            await asyncio.wait_for(ended, 60)
            aggregator.add("watched", reader.drain().samples)
            totals = reader.totals()
        aggregator.count("watched", totals.hits, totals.lost)
        report = aggregator.flush(1.0)["watched"]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert report["count"] == writes
    assert report["sampled"] + report["lost"] == writes
    assert report["sampled"] > reader.size // 48  # more than one ring: drained while writing
    # Woken about once per quarter ring of samples (682), and for the hangup: not busy.
    assert 2 <= wakeups <= writes // 682 + 8

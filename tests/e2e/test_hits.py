"""Hits that say who, end to end on real hardware (DESIGN section 16): a watched variable written a
known number of times from two functions and a second thread is reported with exact counts, call
sites named by function and the threads that wrote; a variable written in a tight loop costs the
daemon bounded work: it keeps answering, reports about once an interval, counts what it drops."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import events, first, last_event_id, perf_daemon, session, stream, watch
from tests.support.ctarget import compile_c, run_writers
from tests.support.daemon import Daemon

pytestmark = pytest.mark.perf


@pytest.fixture(scope="module")
def writers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c("writers.c", tmp_path_factory.mktemp("writers") / "writers", "-g")


@pytest.fixture(scope="module")
def spin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c("spin.c", tmp_path_factory.mktemp("spin") / "spin", "-g")


def hits_until(
    daemon: Daemon, since: int, totals: dict[str, int]
) -> dict[str, list[dict[str, Any]]]:
    """The hit reports of each allocation in `totals`, read until each reached its total."""
    reports: dict[str, list[dict[str, Any]]] = {aid: [] for aid in totals}
    for event in stream(daemon, since):
        if event["type"] != "hit" or event["allocation"]["id"] not in totals:
            continue
        reports[event["allocation"]["id"]].append(event)
        if all(r and r[-1]["total"] >= totals[aid] for aid, r in reports.items()):
            return reports
    raise AssertionError("the stream ended")


def by_function(reports: list[dict[str, Any]]) -> Counter[str]:
    """Samples per function (the symbol without its offset), over all reports."""
    out: Counter[str] = Counter()
    for report in reports:
        for site in report["sites"]:
            out[(site["symbol"] or "?").partition("+")[0]] += site["count"]
    return out


def test_hits_are_counted_exactly_and_say_which_function_and_thread_wrote(
    perf_permitted: None, make_daemon: Callable[..., Daemon], writers: Path
) -> None:
    daemon = perf_daemon(make_daemon)
    _, auth = session(daemon)
    with run_writers(writers, 200, 600, 100) as target:
        main = watch(daemon, auth, target.pid, target.watched)
        second = watch(daemon, auth, target.second_tid, target.watched)
        assert main.status_code == 201 and second.status_code == 201, (main.text, second.text)
        since = last_event_id(daemon)
        target.go()
        reports = hits_until(daemon, since, {main.json()["id"]: 800, second.json()["id"]: 100})

    mine = reports[main.json()["id"]]
    assert sum(r["count"] for r in mine) == 800  # exact, from the counter
    assert sum(r["lost"] for r in mine) == 0
    assert by_function(mine) == {"writer_a": 200, "writer_b": 600}
    assert {tid for r in mine for s in r["sites"] for tid in s["tids"]} == {target.pid}
    site = next(s for r in mine for s in r["sites"])
    assert site["mapping"]["file"] == str(writers) and site["ip"].startswith("0x")

    theirs = reports[second.json()["id"]]
    assert sum(r["count"] for r in theirs) == 100
    assert by_function(theirs) == {"writer_c": 100}
    assert {tid for r in theirs for s in r["sites"] for tid in s["tids"]} == {target.second_tid}


@pytest.fixture
def spinning(spin: Path) -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen([str(spin)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid, address = proc.stdout.readline().split()
    yield int(pid), int(address, 16)
    proc.kill()
    proc.wait(timeout=10)


def test_a_variable_written_in_a_tight_loop_costs_the_daemon_bounded_work(
    perf_permitted: None, make_daemon: Callable[..., Daemon], spinning: tuple[int, int]
) -> None:
    pid, address = spinning
    daemon = perf_daemon(make_daemon, "--hit-interval", "0.1", "--hit-budget", "1000")
    _, auth = session(daemon)
    hot = watch(daemon, auth, pid, address)
    assert hot.status_code == 201, hot.text
    started = time.monotonic()  # the reports counted below are those since now
    since = last_event_id(daemon)
    first(daemon, since, lambda e: e["type"] == "hit")  # it is being hit

    # Meanwhile the daemon answers and arbitrates as usual.
    with daemon.anon() as http:
        for n in range(20):
            assert http.get("/healthz").status_code == 200
            other = watch(daemon, auth, pid, address + 8 + 8 * (n % 2), priority="background")
            assert other.status_code == 201, other.text
            with daemon.anon() as again:
                assert again.delete(
                    f"/v1/allocations/{other.json()['id']}", headers=auth
                ).is_success
    until = last_event_id(daemon)
    elapsed = time.monotonic() - started
    reports = [
        e
        for e in events(daemon, since, until)
        if e["type"] == "hit" and e["allocation"]["id"] == hot.json()["id"]
    ]
    # About one report an interval, not one per hit: the count is per interval.
    assert 1 <= len(reports) <= elapsed / 0.1 + 3, (len(reports), elapsed)
    assert all(r["sampled"] <= 1000 for r in reports)  # the budget bounds the work
    counted = sum(r["count"] for r in reports)
    dropped = sum(r["lost"] for r in reports)
    assert counted > sum(r["sampled"] for r in reports)  # more hits than sampled...
    assert dropped > 0  # ...and what was dropped is a number, not hidden
    assert all(s["symbol"].startswith("spin") for r in reports for s in r["sites"])

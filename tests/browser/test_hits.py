"""The dashboard shows hits (issue 16), in Debian's chromium against a sim daemon whose injected
accesses report hits with the call site (`ip`) and thread the test gives: each register an
allocation holds shows its hit rate, which falls to zero when the hits stop; its details list the
call sites summed over the reports, most samples first, with their threads and CPUs, and the
totals, updated live; the feed gives a run of reports one row; and a restart says the hits while
the daemon was down are unknown.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_dashboard import allocate, cell, open_session, sign_in_by_link
from tests.browser.test_outside import admin_call
from tests.support.daemon import Daemon

pytestmark = pytest.mark.browser
WATCHED = "0x7f0000001000"
WRITER_A = "0x401136"
WRITER_B = "0x401200"
RATE = re.compile(r"^[\d.]+[kM]? hits/s$")
TIMES = "\N{MULTIPLICATION SIGN}"  # between a call site and its samples in the feed


def access(daemon: Daemon, *, cpu: int, tid: int, ip: str, address: str = WATCHED) -> list[str]:
    """One simulated write of 8 bytes at `address` from instruction `ip` of thread `tid`: the
    ids of the allocations that report it."""
    answer = admin_call(
        daemon,
        "POST",
        "/v1/sim/accesses",
        cpu=cpu,
        tid=tid,
        address=address,
        length=8,
        access="write",
        ip=ip,
    )
    hit: list[str] = answer["hits"]
    return hit


def watch(daemon: Daemon, session: dict[str, Any], address: str, label: str) -> dict[str, Any]:
    return allocate(
        daemon,
        session,
        scope={"kind": "cpus", "cpus": "all"},
        address=address,
        length=8,
        access="write",
        label=label,
    )


def test_hits_show_a_rate_per_register_and_the_call_sites_of_an_allocation(
    page: Page, daemon: Daemon, artifacts: Path
) -> None:
    sign_in_by_link(page, daemon)
    session = open_session(daemon, "watcher")
    counter = watch(daemon, session, WATCHED, "counter-watch")
    quiet = watch(daemon, session, "0x7f0000002000", "quiet-watch")
    counter_cells = [cell(page, r) for r in counter["registers"]]
    for c in counter_cells:
        expect(c).to_contain_text("counter-watch")

    # writer_a writes from threads 42 and 43 (on CPUs 0 and 1), writer_b once from thread 44.
    writes = [(0, 42, WRITER_A), (1, 43, WRITER_A), (0, 42, WRITER_A), (1, 44, WRITER_B)]
    for cpu, tid, ip in writes:
        assert access(daemon, cpu=cpu, tid=tid, ip=ip) == [counter["id"]]

    # Every register the allocation holds shows its rate; the one nothing touched shows none.
    for c in counter_cells:
        expect(c.get_by_test_id("hit-rate")).to_have_text(RATE)
        expect(c).to_have_attribute("data-hit-rate", re.compile(r"^[\d.]+$"))
    for register in quiet["registers"]:
        expect(cell(page, register).get_by_test_id("hit-rate")).to_have_count(0)
    # The four reports share one feed row, which names both call sites.
    feed = page.get_by_test_id("feed")
    run = feed.locator(f'[data-type="hit"][data-allocation="{counter["id"]}"]')
    expect(run).to_have_count(1)
    expect(run).to_have_attribute("data-reports", "4")
    expect(run).to_contain_text("4 hits in 4 reports")
    expect(run).to_contain_text(f"{WRITER_A} {TIMES}3 (2 threads, cpu 0,1)")
    expect(run).to_contain_text(f"{WRITER_B} {TIMES}1 (tid 44, cpu 1)")
    expect(run).to_contain_text("total 4")
    page.screenshot(path=str(artifacts / "hits-rate.png"))

    # Its details: the totals and the call sites, most samples first.
    counter_cells[0].get_by_test_id("chip").click()
    details = page.get_by_test_id("details")
    hits = details.get_by_test_id("details-hits")
    expect(hits.get_by_test_id("hits-total")).to_have_text("4")
    expect(details).not_to_contain_text("null")
    expect(hits.get_by_test_id("hits-lost-total")).to_have_text("0")
    expect(hits.get_by_test_id("hits-rate")).to_have_text(RATE)
    expect(hits.get_by_test_id("hits-seen")).to_contain_text("4 reports")
    expect(hits.get_by_test_id("hits-lost")).to_be_hidden()
    expect(hits.get_by_test_id("hits-unknown")).to_be_hidden()
    sites = hits.get_by_test_id("hit-site")
    expect(sites.get_by_test_id("site-name")).to_have_text([WRITER_A, WRITER_B])
    expect(sites.get_by_test_id("site-samples")).to_have_text(["3", "1"])
    expect(sites.get_by_test_id("site-threads")).to_have_text(["42, 43", "44"])
    expect(sites.get_by_test_id("site-cpus")).to_have_text(["0,1", "1"])
    expect(sites.get_by_test_id("site-where")).to_have_text(
        ["mapping unknown · pids 42, 43", "mapping unknown · pid 44"]
    )

    # Live: writer_b gets busier from three threads and overtakes writer_a in the open drawer.
    for tid in (45, 46, 44):
        assert access(daemon, cpu=0, tid=tid, ip=WRITER_B) == [counter["id"]]
    expect(hits.get_by_test_id("hits-total")).to_have_text("7")
    expect(sites.get_by_test_id("site-name")).to_have_text([WRITER_B, WRITER_A])
    expect(sites.get_by_test_id("site-samples")).to_have_text(["4", "3"])
    expect(sites.get_by_test_id("site-threads")).to_have_text(["44, 45, 46", "42, 43"])
    expect(sites.get_by_test_id("site-cpus")).to_have_text(["0,1", "0,1"])
    expect(hits.get_by_test_id("hits-seen")).to_contain_text("7 reports")
    page.screenshot(path=str(artifacts / "hits-details.png"))

    # The hits stop: within the rate's window every rate is back to zero.
    for c in counter_cells:
        expect(c.get_by_test_id("hit-rate")).to_have_count(0)
        expect(c).not_to_have_attribute("data-hit-rate", re.compile("."))
    expect(hits.get_by_test_id("hits-rate")).to_have_text("0 hits/s")
    expect(hits.get_by_test_id("hits-total")).to_have_text("7")
    page.get_by_test_id("details-close").click()

    # A burst of reports on the other watch is one feed row: the rest of the feed stays.
    for n in range(40):
        assert access(daemon, cpu=n % 2, tid=50, ip=WRITER_A, address="0x7f0000002000") == [
            quiet["id"]
        ]
    burst = feed.locator(f'[data-type="hit"][data-allocation="{quiet["id"]}"]')
    expect(burst).to_have_attribute("data-reports", "40")
    expect(burst).to_have_count(1)
    expect(burst).to_contain_text("40 hits in 40 reports")
    for allocation in (counter, quiet):
        installed = feed.locator(f'[data-type="installed"][data-allocation="{allocation["id"]}"]')
        expect(installed).to_have_count(1)


def test_a_restart_says_the_hits_while_down_are_unknown(
    page: Page, daemon: Daemon, artifacts: Path
) -> None:
    sign_in_by_link(page, daemon)
    session = open_session(daemon, "survivor")
    counter = watch(daemon, session, WATCHED, "counter-watch")
    assert access(daemon, cpu=1, tid=42, ip=WRITER_A) == [counter["id"]]
    target = cell(page, counter["registers"][1])
    expect(target.get_by_test_id("hit-rate")).to_have_text(RATE)
    target.get_by_test_id("chip").click()
    hits = page.get_by_test_id("details").get_by_test_id("details-hits")
    expect(hits.get_by_test_id("hits-total")).to_have_text("1")

    daemon.restart()
    status = page.get_by_test_id("status")
    expect(status).to_have_attribute("data-state", "live", timeout=30_000)
    unknown = hits.get_by_test_id("hits-unknown")
    expect(unknown).to_be_visible()
    expect(unknown).to_contain_text("Hits unknown: debugregd restarted")
    feed = page.get_by_test_id("feed")
    said = feed.locator(f'[data-type="hit"][data-allocation="{counter["id"]}"]').first
    expect(said).to_contain_text("hits unknown: debugregd restarted")
    expect(said).to_contain_text("total before: 1")
    page.screenshot(path=str(artifacts / "hits-unknown.png"))

    # Counting goes on where it stopped, and the rate shows again.
    assert access(daemon, cpu=1, tid=42, ip=WRITER_A) == [counter["id"]]
    expect(hits.get_by_test_id("hits-total")).to_have_text("2")
    expect(target.get_by_test_id("hit-rate")).to_have_text(RATE)
    expect(hits.get_by_test_id("hit-site").get_by_test_id("site-samples")).to_have_text(["2"])


# Reports shaped as the perf backend sends them (symbols, mappings, lost samples, sites beyond the
# listed ones), which the sim does not produce: summed by the page's own module.
SUM_PERF_REPORTS = """async () => {
  const { HitBook, fmtHitRate } = await import("/static/hits.js");
  const site = (ip, symbol, count, tids, cpus, at) => ({
    ip, pid: 7, symbol, mapping: { file: "/tmp/target", offset: ip }, first: at, last: at,
    count, tids, threads: tids.length, cpus,
  });
  const report = (at, count, lost, sites, other) => ({
    type: "hit", at, allocation: { id: "a1" }, count, sampled: count - lost, lost,
    interval_s: 0.1, sites, other_sites: other ? 1 : 0, other_count: other,
  });
  const book = new HitBook(2);
  book.add(report(100.0, 3000, 200, [
    site("0x1139", "writer_b+0x12", 2000, [7], [0], 100.0),
    site("0x1100", "writer_a+0x11", 795, [8], [1], 99.95),
  ], 5));
  book.add(report(100.1, 1000, 0, [site("0x1100", "writer_a+0x11", 1000, [8, 9], [1], 100.1)], 0));
  book.add({ type: "hit", at: 101, allocation: { id: "a1" }, count: 0, unknown: true,
             reason: "debugregd restarted" });
  const { sum, unknown } = book.get("a1");
  return {
    totals: [sum.reports, sum.count, sum.sampled, sum.lost, sum.otherCount],
    sites: sum.ranked().map((s) => [s.symbol, s.count, [...s.tids], s.threads, [...s.cpus]]),
    rates: [book.rate("a1", 100.1), book.rate("a1", 102.05), book.rate("a1", 102.2)],
    unknown: unknown.reason,
    formatted: [0, 0.5, 12, 4500, 1.2e6].map(fmtHitRate),
  };
}"""


def test_the_page_sums_perf_reports_with_lost_samples(page: Page, daemon: Daemon) -> None:
    page.goto(daemon.url)
    summed = page.evaluate(SUM_PERF_REPORTS)
    assert summed == {
        "totals": [2, 4000, 3800, 200, 5],
        "sites": [
            ["writer_b+0x12", 2000, [7], 1, [0]],
            ["writer_a+0x11", 1795, [8, 9], 2, [1]],
        ],
        # 4000 hits in the 2 s window, then the first report leaves it, then the second
        "rates": [2000, 500, 0],
        "unknown": "debugregd restarted",
        "formatted": ["0", "0.50", "12.0", "4.5k", "1.2M"],
    }

"""The dashboard shows who else holds the debug registers (issues 14 and 15), in Debian's chromium
against a sim daemon: users outside debugregd in their own hatched cells, counted per CPU, listed,
named as blockers and in the feed, gone when the daemon measures them gone; and a reservation (an
allocation with `"arm": false`) drawn and described apart from an armed allocation.

The daemon's timers are off (`--outside-scan 0`, a long `--outside-interval`): every measurement
is the test's `POST /v1/outside/measure`, so what the page shows follows from what the test did.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_dashboard import allocate, cell, open_session, sign_in_by_link
from tests.support.daemon import Daemon

pytestmark = pytest.mark.browser
NO_TIMERS = ("--outside-scan", "0", "--outside-interval", "3600")
RESERVATION = "reservation (armed by its debugger)"


def admin_call(daemon: Daemon, method: str, path: str, **body: Any) -> dict[str, Any]:
    with daemon.admin() as admin:
        response = admin.request(method, path, json=body or None)
    assert response.is_success, response.text
    answer: dict[str, Any] = response.json()
    return answer


def measure(daemon: Daemon) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = admin_call(daemon, "POST", "/v1/outside/measure")["outside"]
    return records


def grid_matches_the_state(page: Page, daemon: Daemon) -> None:
    """Every cell of the page holds what GET /v1/state says, index by index: the event stream
    gives outside holders as counts, and the page places them where the daemon's packing does."""
    with daemon.admin() as admin:
        state = admin.get("/v1/state").json()
    # The page has applied every event the state reflects, and drew the grid when it did.
    expect(page.get_by_test_id("event-id")).to_have_text(f"event #{state['event_id']}")
    for view in state["cpus"]:
        cpu = view["cpu"]
        pool = view["pools"]["dr"]
        for index in range(pool["slots"]):
            want_ids: set[str] = set()
            want_outside: set[str] = set()
            held = pool["registers"][index]
            if held:
                want_ids.update(held["allocations"])
                if "outside" in held:
                    want_outside.add(f"cpu:{held['outside']['cpu']}")
            for tid, entries in pool["tasks"].items():
                for entry in entries:
                    if entry["index"] == index:
                        want_ids.update(entry["allocations"])
                        if "outside" in entry:
                            want_outside.add(f"task:{tid}")
            if index < pool["outside"]["others"]:  # a task debugregd does not manage: DR0 up
                want_outside.add(f"others:{cpu}")
            td = page.get_by_test_id(f"cell-dr-{cpu}-{index}")
            got_ids = set((td.get_attribute("data-allocations") or "").split())
            got_outside = set((td.get_attribute("data-outside-targets") or "").split())
            assert (got_ids, got_outside) == (want_ids, want_outside), (cpu, index)


def test_outside_holders_get_their_own_cells_and_leave_when_measured_gone(
    page: Page, make_daemon: Callable[..., Daemon], artifacts: Path
) -> None:
    daemon = make_daemon(*NO_TIMERS)
    sign_in_by_link(page, daemon)
    outside_list = page.get_by_test_id("outside-list")
    expect(outside_list).to_contain_text("none measured")
    session = open_session(daemon, "squatter")
    mine = allocate(
        daemon,
        session,
        scope={"kind": "cpu", "cpu": 1},
        address="0x7ffd1000",
        length=8,
        access="write",
        label="cpu-watch",
    )
    assert mine["registers"] == [{"cpu": 1, "pool": "dr", "index": 3}]

    # perf takes 2 registers on CPU 1, and the daemon learns it when it measures.
    perf = admin_call(
        daemon, "POST", "/v1/sim/outside", scope={"kind": "cpu", "cpu": 1}, registers=2
    )
    assert [(r["target"]["kind"], r["target"]["cpu"]) for r in measure(daemon)] == [("cpu", 1)]
    cpu_label = "outside debugregd: 2 registers on CPU 1"
    for index in (1, 2):  # below the daemon's own CPU holder, which keeps DR3
        td = page.get_by_test_id(f"cell-dr-1-{index}")
        expect(td).to_have_attribute("data-holder", "outside")
        expect(td).to_have_attribute("data-outside-targets", "cpu:1")
        chip = td.get_by_test_id("outside-chip")
        expect(chip).to_contain_text("outside debugregd")
        expect(chip).to_contain_text("2 registers on CPU 1")
        expect(chip).to_have_attribute("title", re.compile(f"^{cpu_label}\n"))
    expect(cell(page, mine["registers"][0])).to_have_attribute("data-holder", "cpu")
    expect(page.get_by_test_id("outside-count-dr-1")).to_have_text("2 outside")
    expect(page.get_by_test_id("outside-count-dr-0")).to_have_count(0)
    expect(outside_list.get_by_test_id("outside-item")).to_have_count(1)
    expect(outside_list.get_by_test_id("outside-item")).to_contain_text(cpu_label)
    feed = page.get_by_test_id("feed")
    expect(feed.locator('[data-type="outside"]')).to_contain_text(
        "outside debugregd: CPU 1 now 2 registers (was 0)"
    )

    # gdb holds one on task 7. A request there that the kernel refuses makes the daemon measure
    # the task: the outside holder is recorded, and the request waits behind it, named.
    gdb = admin_call(
        daemon, "POST", "/v1/sim/outside", scope={"kind": "task", "tid": 7}, registers=1
    )
    waiter = allocate(
        daemon,
        session,
        scope={"kind": "task", "tid": 7},
        address="0x601000",
        length=8,
        access="write",
        wait=True,
        label="task-waiter",
    )
    assert waiter["state"] == "waiting"
    for cpu in (0, 1):
        td = page.get_by_test_id(f"cell-dr-{cpu}-0")
        expect(td).to_have_attribute("data-outside-targets", "task:7")
        expect(td.get_by_test_id("outside-chip")).to_contain_text("T7")
    expect(page.get_by_test_id("outside-count-dr-1")).to_have_text("3 outside")
    expect(page.get_by_test_id("outside-count-dr-0")).to_have_text("1 outside")
    task_label = "outside debugregd: 1 register on task 7"
    expect(page.get_by_test_id("task-7")).to_contain_text(task_label)
    # Blockers outside debugregd have no allocation id: the page names them by their label.
    queued = page.get_by_test_id("waiting").get_by_test_id("waiting-item")
    waiting_row = feed.locator('[data-type="waiting"]')
    for named in (queued, waiting_row):
        expect(named).to_contain_text(re.compile(f"blocked by .*{mine['id']}"))
        expect(named).to_contain_text(cpu_label)
        expect(named).to_contain_text(task_label)
        expect(named).not_to_contain_text("null")
    grid_matches_the_state(page, daemon)
    page.screenshot(path=str(artifacts / "outside-holders.png"))

    # Their details: what was measured, and where the daemon counts it.
    page.get_by_test_id("cell-dr-1-2").get_by_test_id("outside-chip").click()
    details = page.get_by_test_id("details")
    expect(details).to_contain_text(cpu_label)
    expect(details).to_contain_text("cpu1:DR1+DR2")
    expect(details).to_contain_text("CPU 1 now 2 registers (was 0)")
    page.screenshot(path=str(artifacts / "outside-details.png"))
    page.get_by_test_id("details-close").click()

    # perf exits: measured gone, its cells free, and the waiter gets the room back.
    admin_call(daemon, "DELETE", f"/v1/sim/outside/{perf['id']}")
    assert [r["target"]["kind"] for r in measure(daemon)] == ["task"]
    for index in (1, 2):
        expect(page.get_by_test_id(f"cell-dr-1-{index}")).not_to_have_attribute(
            "data-outside-targets", re.compile("cpu")
        )
    gone = feed.locator('[data-type="outside"]', has_text="CPU 1 now 0 registers (was 2)")
    expect(gone).to_have_count(1)
    expect(feed.locator('[data-type="reinstalled"]')).to_contain_text(waiter["id"])
    expect(queued).to_have_count(0)
    expect(page.get_by_test_id("outside-count-dr-1")).to_have_text("1 outside")
    expect(outside_list.get_by_test_id("outside-item")).to_have_count(1)
    grid_matches_the_state(page, daemon)

    # gdb goes too: nothing outside debugregd is left anywhere on the page.
    admin_call(daemon, "DELETE", f"/v1/sim/outside/{gdb['id']}")
    assert measure(daemon) == []
    expect(page.locator("[data-testid=registers] [data-testid=outside-chip]")).to_have_count(0)
    expect(page.locator('[data-testid^="outside-count-"]')).to_have_count(0)
    expect(outside_list).to_contain_text("none measured")
    expect(page.get_by_test_id("task-7")).not_to_contain_text("outside debugregd")
    grid_matches_the_state(page, daemon)
    page.screenshot(path=str(artifacts / "outside-gone.png"))


def test_a_reservation_is_drawn_and_described_apart_from_an_armed_allocation(
    page: Page, daemon: Daemon, artifacts: Path
) -> None:
    sign_in_by_link(page, daemon)
    # A debugger's session: the ptrace grant needs the admin key.
    with daemon.admin() as admin:
        response = admin.post(
            "/v1/sessions", json={"name": "gdb", "ttl_s": 600, "max_priority": "ptrace"}
        )
    assert response.status_code == 201, response.text
    gdb = response.json()
    assert gdb["max_priority"] == 700
    watch = {"length": 8, "access": "write", "priority": "ptrace"}
    armed = allocate(
        daemon,
        gdb,
        scope={"kind": "task", "tid": 4242},
        address="0x7ffd1000",
        label="armed-watch",
        **watch,
    )
    reserved = allocate(
        daemon,
        gdb,
        scope={"kind": "task", "tid": 4343},
        address="0x7ffd2000",
        label="gdb-watch",
        arm=False,
        **watch,
    )
    assert armed["arm"] is True and reserved["arm"] is False
    # Different tasks: both hold DR0 on every CPU, side by side in the same cells.
    assert [r["index"] for r in reserved["registers"]] == [0, 0]
    for register in reserved["registers"]:
        td = cell(page, register)
        expect(td).to_have_attribute("data-reservation", "true")
        chip = td.locator(f'[data-testid="chip"][data-allocation="{reserved["id"]}"]')
        expect(chip).to_have_class(re.compile(r"\breservation\b"))
        expect(chip).to_contain_text("RSV")
        expect(chip).to_have_attribute("title", re.compile(re.escape(RESERVATION)))
        other = td.locator(f'[data-testid="chip"][data-allocation="{armed["id"]}"]')
        expect(other).not_to_have_class(re.compile(r"\breservation\b"))
        expect(other).not_to_contain_text("RSV")

    # Alone in its cells it says so in full.
    admin_call(daemon, "DELETE", f"/v1/allocations/{armed['id']}")
    td = cell(page, reserved["registers"][0])
    expect(td).to_have_attribute("data-allocations", reserved["id"])
    expect(td.get_by_test_id("chip")).to_contain_text(RESERVATION)

    feed = page.get_by_test_id("feed")
    installed = feed.locator('[data-type="installed"]')
    expect(installed.filter(has_text=reserved["id"])).to_contain_text(RESERVATION)
    expect(installed.filter(has_text=armed["id"])).not_to_contain_text("reservation")
    expect(page.get_by_test_id("task-4343")).to_contain_text("reservation")
    page.screenshot(path=str(artifacts / "reservation.png"))

    td.get_by_test_id("chip").click()
    details = page.get_by_test_id("details")
    expect(details.get_by_test_id("details-reservation")).to_contain_text(RESERVATION)
    arming = details.locator("dt", has_text="armed").locator("xpath=following-sibling::dd[1]")
    expect(arming).to_have_text(RESERVATION)
    page.screenshot(path=str(artifacts / "reservation-details.png"))
    # The armed one's last record (from the feed) says who armed it.
    page.get_by_test_id("details-close").click()
    feed.locator(f'[data-type="installed"][data-allocation="{armed["id"]}"]').click()
    expect(details).to_contain_text(armed["id"])
    expect(arming).to_have_text("by debugregd")

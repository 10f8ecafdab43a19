"""The live dashboard, driven in Debian's chromium against a real daemon (issue 5).

Sign in (form and `#key=` link), watch allocations fill their cells, an eviction (through the
API, then from the page's details drawer) empty them and appear in the feed, and a daemon restart
show "disconnected" and then the same state again, waiting queue included, and live. Screenshots
go to test-artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import LAPTOP
from tests.support.daemon import Daemon

pytestmark = pytest.mark.browser
WIDE = {"width": 2560, "height": 1440}


def sign_in_by_link(page: Page, daemon: Daemon) -> None:
    page.goto(f"{daemon.url}/#key={daemon.admin_key}")
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")


def open_session(daemon: Daemon, name: str, ttl_s: float = 600) -> dict[str, Any]:
    with daemon.anon() as client:
        response = client.post("/v1/sessions", json={"name": name, "ttl_s": ttl_s})
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


def allocate(daemon: Daemon, session: dict[str, Any], **body: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {session['token']}"}
    with httpx.Client(base_url=daemon.url, headers=headers, timeout=10) as client:
        response = client.post("/v1/allocations", json=body)
    assert response.status_code == 201, response.text
    record: dict[str, Any] = response.json()
    return record


def cell(page: Page, register: dict[str, Any]) -> Locator:
    return page.get_by_test_id(f"cell-{register['pool']}-{register['cpu']}-{register['index']}")


def test_sign_in_with_the_form_and_with_the_link(
    page: Page, daemon: Daemon, artifacts: Path
) -> None:
    page.goto(daemon.url)
    form = page.get_by_test_id("signin-form")
    expect(form).to_be_visible()
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "signed-out")
    expect(page.get_by_test_id("host")).to_contain_text("x86_64")
    page.screenshot(path=str(artifacts / "signin-form.png"))

    page.get_by_test_id("signin-key").fill("not-the-key")
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("signin-error")).to_contain_text("refused")
    expect(form).to_be_visible()

    page.get_by_test_id("signin-key").fill(daemon.admin_key)
    page.get_by_test_id("signin-submit").click()
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    expect(form).to_be_hidden()
    # The grid: one row per CPU, one cell per register index (x86_64: DR0-DR3), all free.
    for cpu in range(2):
        for index in range(4):
            expect(page.get_by_test_id(f"cell-dr-{cpu}-{index}")).to_have_attribute(
                "data-holder", ""
            )
    expect(page.get_by_test_id("cell-dr-2-0")).to_have_count(0)
    page.screenshot(path=str(artifacts / "signed-in-empty-grid.png"))

    # The cookie keeps the browser signed in across a reload; signing out ends it.
    page.reload()
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")
    page.get_by_test_id("signout").click()
    expect(form).to_be_visible()
    page.reload()
    expect(form).to_be_visible()

    # A `make run` sign-in link: the page takes the key from the fragment and erases it.
    sign_in_by_link(page, daemon)
    expect(form).to_be_hidden()
    expect(page.get_by_test_id("cell-dr-0-0")).to_be_visible()
    assert daemon.admin_key not in page.url
    assert page.evaluate("location.hash") == ""
    assert daemon.admin_key not in page.content()
    page.screenshot(path=str(artifacts / "signed-in-by-link.png"))
    # The fragment never reached the server, so its log has no key either.
    assert daemon.admin_key not in daemon.log()


def test_allocation_fills_cells_and_eviction_empties_them(
    page: Page, daemon: Daemon, artifacts: Path
) -> None:
    sign_in_by_link(page, daemon)
    session = open_session(daemon, "browser-test")
    expect(page.get_by_test_id(f"session-{session['id']}")).to_contain_text("browser-test")

    wide = allocate(
        daemon,
        session,
        scope={"kind": "cpu", "cpu": 1},
        address="0x7ffd1000",
        length=8,
        access="write",
        label="cpu-watch",
    )
    task = allocate(
        daemon,
        session,
        scope={"kind": "task", "tid": 4242},
        address="0x7ffe0010",
        length=4,
        access="rw",
        priority="background",
        label="task-watch",
    )
    assert wide["state"] == task["state"] == "installed"
    (held,) = wide["registers"]
    wide_cell = cell(page, held)
    expect(wide_cell).to_have_attribute("data-holder", "cpu")
    expect(wide_cell).to_contain_text("cpu-watch")
    expect(wide_cell).to_contain_text("0x7ffd1000")
    expect(wide_cell).to_contain_text("browser-test")
    assert {(r["cpu"], r["index"]) for r in task["registers"]} == {(0, 0), (1, 0)}
    for register in task["registers"]:
        expect(cell(page, register)).to_have_attribute("data-holder", "task")
        expect(cell(page, register)).to_contain_text("T4242")
        expect(cell(page, register)).to_contain_text("task-watch")
    expect(page.get_by_test_id("task-4242")).to_contain_text("task-watch")
    feed = page.get_by_test_id("feed")
    expect(feed.locator('[data-type="installed"]')).to_have_count(2)
    page.screenshot(path=str(artifacts / "allocated.png"))

    with daemon.admin() as admin:
        response = admin.post(
            f"/v1/allocations/{wide['id']}/evict", json={"reason": "browser test eviction"}
        )
    assert response.status_code == 200, response.text
    expect(wide_cell).to_have_attribute("data-holder", "")
    expect(wide_cell).not_to_contain_text("cpu-watch")
    evicted = feed.locator('[data-type="evicted"]')
    expect(evicted).to_have_count(1)
    expect(evicted).to_contain_text(wide["id"])
    expect(evicted).to_contain_text("browser test eviction")
    for register in task["registers"]:
        expect(cell(page, register)).to_have_attribute("data-holder", "task")

    # The feed filters by type and by text.
    page.get_by_test_id("feed-filter-installed").click()
    expect(feed.locator('[data-type="installed"]')).to_have_count(0)
    expect(evicted).to_have_count(1)
    page.get_by_test_id("feed-filter-installed").click()
    page.get_by_test_id("feed-filter-text").fill("task-watch")
    expect(feed.get_by_test_id("feed-item")).to_have_count(1)
    expect(feed.get_by_test_id("feed-item")).to_contain_text(task["id"])
    page.get_by_test_id("feed-filter-text").fill("")
    expect(evicted).to_have_count(1)
    page.screenshot(path=str(artifacts / "evicted.png"))

    # Readable without scrolling on a laptop (the grid and the live feed side by side) and on a
    # wide monitor (every panel at once).
    for testid in ("registers", "feed-panel", "charts", "status"):
        expect(page.get_by_test_id(testid)).to_be_in_viewport()
    page.set_viewport_size(WIDE)
    for testid in ("registers", "feed-panel", "charts", "sessions", "waiting", "tasks"):
        expect(page.get_by_test_id(testid)).to_be_in_viewport()
    page.screenshot(path=str(artifacts / "wide-monitor.png"))
    page.set_viewport_size(LAPTOP)

    # An operator evicts from the details drawer (two clicks: arm, then confirm).
    cell(page, task["registers"][0]).get_by_test_id("chip").click()
    details = page.get_by_test_id("details")
    expect(details).to_be_visible()
    expect(details).to_contain_text("task-watch")
    page.get_by_test_id("details-evict").click()
    expect(page.get_by_test_id("details-evict")).to_have_text("Confirm evict")
    page.screenshot(path=str(artifacts / "details-drawer.png"))
    page.get_by_test_id("details-evict").click()
    expect(details).to_contain_text("evicted from the dashboard")
    for register in task["registers"]:
        expect(cell(page, register)).to_have_attribute("data-holder", "")
    expect(evicted).to_have_count(2)
    page.get_by_test_id("details-close").click()
    expect(details).to_be_hidden()


def test_restart_disconnects_then_shows_the_same_state(
    page: Page, daemon: Daemon, artifacts: Path
) -> None:
    sign_in_by_link(page, daemon)
    session = open_session(daemon, "survivor")
    kept = allocate(
        daemon,
        session,
        scope={"kind": "cpus", "cpus": "all"},
        address="0x7ffd2000",
        length=8,
        access="write",
        label="survives-restart",
    )
    holders = [
        allocate(
            daemon,
            session,
            scope={"kind": "cpu", "cpu": 0},
            address=f"0x{0x601000 + 8 * n:x}",
            length=8,
            access="write",
            label=f"holder-{n}",
        )
        for n in range(3)
    ]
    # CPU 0 is full; equal priority never evicts, so both wait: served by priority, then FIFO.
    low = allocate(
        daemon,
        session,
        scope={"kind": "cpu", "cpu": 0},
        address="0x700000",
        length=8,
        access="write",
        priority="background",
        wait=True,
        label="low-waiter",
    )
    high = allocate(
        daemon,
        session,
        scope={"kind": "cpu", "cpu": 0},
        address="0x700008",
        length=8,
        access="write",
        wait=True,
        label="normal-waiter",
    )
    assert low["state"] == high["state"] == "waiting"
    kept_cells = [cell(page, r) for r in kept["registers"]]
    assert len(kept_cells) == 2

    def shows_the_state() -> None:
        for c in kept_cells:
            expect(c).to_have_attribute("data-holder", "cpu")
            expect(c).to_contain_text("survives-restart")
        for index in range(4):
            expect(page.get_by_test_id(f"cell-dr-0-{index}")).to_have_attribute(
                "data-holder", "cpu"
            )
        items = page.get_by_test_id("waiting").get_by_test_id("waiting-item")
        expect(items).to_have_count(2)
        expect(items.nth(0)).to_contain_text("normal-waiter")
        expect(items.nth(1)).to_contain_text("low-waiter")
        expect(page.get_by_test_id(f"session-{session['id']}")).to_contain_text("survivor")

    shows_the_state()
    page.screenshot(path=str(artifacts / "restart-before.png"))
    status = page.get_by_test_id("status")

    daemon.kill()
    expect(status).to_have_attribute("data-state", "disconnected")
    expect(status).to_contain_text(re.compile("disconnected", re.IGNORECASE))
    page.screenshot(path=str(artifacts / "restart-disconnected.png"))

    daemon.start()
    expect(status).to_have_attribute("data-state", "live", timeout=30_000)
    shows_the_state()

    # And it is live again: a release after the restart lets the first waiter in.
    headers = {"Authorization": f"Bearer {session['token']}"}
    with httpx.Client(base_url=daemon.url, headers=headers, timeout=10) as client:
        response = client.delete(f"/v1/allocations/{holders[0]['id']}")
    assert response.status_code == 200, response.text
    expect(page.get_by_test_id("row-dr-0")).to_contain_text("normal-waiter")
    expect(page.get_by_test_id("row-dr-0")).not_to_contain_text("holder-0")
    items = page.get_by_test_id("waiting").get_by_test_id("waiting-item")
    expect(items).to_have_count(1)
    expect(items.nth(0)).to_contain_text("low-waiter")
    reinstalled = page.get_by_test_id("feed").locator('[data-type="reinstalled"]')
    expect(reinstalled).to_contain_text(high["id"])
    page.screenshot(path=str(artifacts / "restart-reconnected.png"))

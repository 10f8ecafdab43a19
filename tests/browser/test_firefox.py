"""The dashboard in Debian's firefox-esr (issue 5: Chromium and Firefox), driven over WebDriver
BiDi: sign in with the `#key=` link, see an allocation fill its cell, an eviction empty it and
reach the feed; users outside debugregd and a reservation drawn in their cells; hits as a rate in
the cell and call sites in the details. The Chromium tests cover the rest of the page."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser.conftest import LAPTOP
from tests.browser.test_dashboard import allocate, open_session
from tests.browser.test_hits import WATCHED, WRITER_A, WRITER_B, access, watch
from tests.browser.test_outside import NO_TIMERS, RESERVATION, admin_call, measure
from tests.support.daemon import Daemon
from tests.support.firefox import Firefox, launch

pytestmark = pytest.mark.browser


@pytest.fixture
def firefox(tmp_path: Path, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Firefox]:
    executable = shutil.which("firefox-esr") or shutil.which("firefox")
    if executable is None:
        pytest.fail(
            "the Firefox test needs Debian's firefox-esr on PATH (apt-get install firefox-esr; "
            ".ci/run installs it)",
            pytrace=False,
        )
    with launch(executable, tmp_path / "profile", LAPTOP["width"], LAPTOP["height"]) as browser:
        yield browser
        browser.screenshot(artifacts / f"{request.node.name}-last.png")


def by_testid(name: str) -> str:
    return f"document.querySelector('[data-testid=\"{name}\"]')"


def test_firefox_signs_in_and_follows_allocation_and_eviction(
    firefox: Firefox, daemon: Daemon, artifacts: Path
) -> None:
    firefox.navigate(f"{daemon.url}/#key={daemon.admin_key}")
    firefox.wait_for(f"{by_testid('status')}?.dataset.state === 'live'")
    assert firefox.evaluate("location.hash") == ""

    session = open_session(daemon, "firefox-test")
    record = allocate(
        daemon,
        session,
        scope={"kind": "cpu", "cpu": 1},
        address="0x7ffd1000",
        length=8,
        access="write",
        label="fx-watch",
    )
    (held,) = record["registers"]
    cell = by_testid(f"cell-{held['pool']}-{held['cpu']}-{held['index']}")
    firefox.wait_for(f"{cell}?.dataset.holder === 'cpu'")
    assert "fx-watch" in firefox.evaluate(f"{cell}.innerText")
    firefox.screenshot(artifacts / "firefox-allocated.png")

    with daemon.admin() as admin:
        response = admin.post(f"/v1/allocations/{record['id']}/evict", json={"reason": "fx"})
    assert response.status_code == 200, response.text
    firefox.wait_for(f"{cell}?.dataset.holder === ''")
    evicted = f"{by_testid('feed')}?.querySelector('[data-type=\"evicted\"]')"
    firefox.wait_for(f"{evicted}?.innerText.includes('{record['id']}')")
    assert "fx-watch" not in firefox.evaluate(f"{cell}.innerText")


def test_firefox_draws_outside_holders_and_reservations(
    firefox: Firefox, make_daemon: Callable[..., Daemon], artifacts: Path
) -> None:
    daemon = make_daemon(*NO_TIMERS)
    firefox.navigate(f"{daemon.url}/#key={daemon.admin_key}")
    firefox.wait_for(f"{by_testid('status')}?.dataset.state === 'live'")
    admin_call(daemon, "POST", "/v1/sim/outside", scope={"kind": "cpu", "cpu": 1}, registers=2)
    measure(daemon)
    for index in (2, 3):
        cell = by_testid(f"cell-dr-1-{index}")
        firefox.wait_for(f"{cell}?.dataset.holder === 'outside'")
        assert "outside debugregd" in firefox.evaluate(f"{cell}.innerText")

    with daemon.admin() as admin:
        response = admin.post(
            "/v1/sessions", json={"name": "gdb", "ttl_s": 600, "max_priority": "ptrace"}
        )
    assert response.status_code == 201, response.text
    reserved = allocate(
        daemon,
        response.json(),
        scope={"kind": "task", "tid": 4343},
        address="0x7ffd2000",
        length=8,
        access="write",
        priority="ptrace",
        arm=False,
        label="gdb-watch",
    )
    assert reserved["arm"] is False
    cell = by_testid("cell-dr-0-0")
    firefox.wait_for(f"{cell}?.dataset.reservation === 'true'")
    assert RESERVATION in firefox.evaluate(f"{cell}.innerText")
    firefox.screenshot(artifacts / "firefox-outside-and-reservation.png")


def test_firefox_shows_hit_rates_and_call_sites(
    firefox: Firefox, daemon: Daemon, artifacts: Path
) -> None:
    firefox.navigate(f"{daemon.url}/#key={daemon.admin_key}")
    firefox.wait_for(f"{by_testid('status')}?.dataset.state === 'live'")
    counter = watch(daemon, open_session(daemon, "fx-hits"), WATCHED, "fx-counter")
    for tid, ip in [(42, WRITER_A), (43, WRITER_B), (44, WRITER_B)]:
        assert access(daemon, cpu=0, tid=tid, ip=ip) == [counter["id"]]
    held = counter["registers"][0]
    cell = by_testid(f"cell-{held['pool']}-{held['cpu']}-{held['index']}")
    firefox.wait_for(f"/hits\\/s$/.test({cell}?.querySelector('.hit-rate')?.textContent ?? '')")
    firefox.evaluate(f"{cell}.querySelector('[data-testid=\"chip\"]').click()")
    sites = "[...document.querySelectorAll('[data-testid=\"hit-site\"]')]"
    firefox.wait_for(f"{sites}.length === 2")
    firefox.wait_for(f"{by_testid('hits-total')}?.textContent === '3'")
    rows = json.loads(
        firefox.evaluate(
            f"JSON.stringify({sites}.map((row) => ["
            "row.querySelector('[data-testid=\"site-name\"]').textContent, "
            "row.querySelector('[data-testid=\"site-samples\"]').textContent, "
            "row.querySelector('[data-testid=\"site-threads\"]').textContent]))"
        )
    )
    assert rows == [[WRITER_B, "2", "43, 44"], [WRITER_A, "1", "42"]]
    firefox.screenshot(artifacts / "firefox-hits.png")

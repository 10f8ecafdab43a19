"""Event streams across daemon restarts: notices from while the client was away, once each.

Both tests restart one daemon of their own (SIGKILL, then start on the same state directory),
started with `--retention 10` so that a thousand events after a restart prune the journal.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from debugreg import Client
from tests.client.conftest import GatedBackoff, Recorder, wait_until
from tests.client.test_client import USER, marker, watch
from tests.support.daemon import Daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose journal keeps ten events once it prunes (every thousand events)."""
    handle = Daemon(tmp_path_factory.mktemp("restarts"), "--cpus", "2", "--retention", "10")
    yield handle.start()
    handle.kill()


def test_handlers_hear_what_happened_while_the_daemon_was_down_once_each(
    daemon: Daemon,
) -> None:
    backoff = GatedBackoff()
    lost, regained = Recorder(), Recorder()
    with Client(daemon.url, backoff=backoff) as client:
        session = client.session("survivor", ttl_s=30).open()
        first = session.allocate(**watch(500, on_evict="release"), on_evicted=lost)
        second = session.allocate(
            **watch(501, on_evict="wait"), on_evicted=lost, on_reinstalled=regained
        )
        marker(session, 502, offset=0)

        backoff.gate.clear()
        backoff.disconnected.clear()
        daemon.kill()
        wait_until(backoff.disconnected.is_set, "the client noticed the daemon was gone")
        daemon.start()
        with daemon.admin() as admin:
            assert admin.post(f"/v1/allocations/{first.id}/evict", json={"reason": "r1"}).is_success
            assert admin.post(f"/v1/allocations/{second.id}/evict", json={}).is_success
        backoff.gate.set()

        wait_until(lambda: len(lost.events) == 2, "both evictions were reported")
        marker(session, 502, offset=1)
        assert sorted(e.allocation.id for e in lost.events if e.allocation) == sorted(
            [first.id, second.id]
        )
        # An admin-requeued waiter is held back only by the eviction itself: the next operation
        # (the marker) reinstalls it, and its handler hears that once.
        wait_until(lambda: len(regained.events) == 1, "the requeued allocation came back")
        assert first.state == "evicted" and second.state == "installed"
        assert session.resets == 0, "the journal still had every event: no reset needed"
        session.close()


def test_a_reset_is_reconciled_into_one_notice_per_change(
    daemon: Daemon,
) -> None:
    backoff = GatedBackoff()
    lost, resets = Recorder(), Recorder()
    with Client(daemon.url, backoff=backoff) as client, daemon.admin() as admin:
        session = client.session("forgetful", ttl_s=30).open()
        session.on("reset", resets)
        doomed = session.allocate(**watch(600), on_evicted=lost)
        kept = session.allocate(**watch(601), on_evicted=lost)
        marker(session, 602, offset=0)

        # Another session whose one shared register makes each access a hundred hit events.
        noisy = admin.post("/v1/sessions", json={"name": "noisy"}).json()
        auth = {"Authorization": f"Bearer {noisy['token']}"}
        for _ in range(100):
            made = admin.post("/v1/allocations", json=watch(700), headers=auth)
            assert made.status_code == 201, made.text

        backoff.gate.clear()
        backoff.disconnected.clear()
        daemon.kill()
        wait_until(backoff.disconnected.is_set, "the client noticed the daemon was gone")
        daemon.start()
        assert admin.post(f"/v1/allocations/{doomed.id}/evict", json={}).is_success
        # Over a thousand events after the restart: the journal prunes to the last ten.
        access = {"cpu": 0, "tid": 700, "address": USER, "length": 8, "access": "write"}
        for _ in range(11):
            assert len(admin.post("/v1/sim/accesses", json=access).json()["hits"]) == 100
        backoff.gate.set()

        wait_until(lambda: resets.events, "the stream was reset")
        wait_until(lambda: lost.events, "the eviction was reconciled")
        marker(session, 602, offset=1)
        assert [e.allocation.id for e in lost.events if e.allocation] == [doomed.id]
        assert (lost.events[0].model_extra or {}).get("reconciled") is True
        assert session.resets == 1 and len(resets.events) == 1
        assert doomed.state == "evicted" and kept.state == "installed"
        session.close()

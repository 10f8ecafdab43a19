"""The asyncio client against a real daemon: the same behaviour as the sync one, awaited."""

from __future__ import annotations

import asyncio

import pytest

from debugreg import AsyncClient, AsyncSession, Event, Refused
from tests.client.conftest import WAIT_S
from tests.client.test_client import fill, watch
from tests.support.daemon import Daemon


async def test_an_async_handler_hears_its_eviction_exactly_once(
    shared_daemon: Daemon, tid: int
) -> None:
    heard: list[Event] = []
    evicted = asyncio.Event()
    marker_seen = asyncio.Event()

    async def on_evicted(event: Event) -> None:  # a coroutine handler is awaited
        heard.append(event)
        evicted.set()

    async with AsyncClient(shared_daemon.url) as client:
        async with client.session("async-victim") as victim:
            alloc = await victim.allocate(
                **watch(tid, priority="background"), on_evicted=on_evicted
            )
            assert alloc.state == "installed"
            async with client.session("async-evictor") as evictor:
                await evictor.allocate(**fill(tid))
                await asyncio.wait_for(evicted.wait(), WAIT_S)

            # A later event of the same ordered stream: once it is handled, so is every
            # earlier one, and a repeated eviction notice would have arrived.
            def installed(event: Event) -> None:
                if event.allocation is not None and event.allocation.scope.get("tid") == tid + 1:
                    marker_seen.set()

            victim.on("installed", installed)
            await victim.allocate(**watch(tid + 1))
            await asyncio.wait_for(marker_seen.wait(), WAIT_S)

        assert [e.allocation.id for e in heard if e.allocation] == [alloc.id]
        assert alloc.state == "evicted"
        assert victim.closed


async def test_async_admin_calls_and_refusals(shared_daemon: Daemon, tid: int) -> None:
    async with AsyncClient(shared_daemon.url, admin_key=shared_daemon.admin_key) as admin:
        host = await admin.host()
        assert host.cpus == 2 and host.pools == {"dr": 4}
        async with admin.session("async-holder") as holder, admin.session("async-late") as late:
            taken = await holder.allocate(**fill(tid))
            with pytest.raises(Refused) as refused:
                await late.allocate(**watch(tid, offset=2))
            # Another session's holder: the daemon tells a session only its priority.
            blockers = [(b.allocation, b.session, b.priority) for b in refused.value.blockers]
            assert blockers == [(None, None, 300)]
            listed = await admin.allocations(tid=tid)
            assert [a.id for a in listed] == [taken.id]
            assert await admin.evict_matching(tid=tid, reason="make way") == [taken.id]
            record = await taken.refresh()
            assert record.state == "evicted" and record.reason == "make way"
            assert taken.state == "evicted", "refresh() updates the handle"


async def test_async_keepalive_runs_as_a_task(shared_daemon: Daemon) -> None:
    async def keepalives(session: AsyncSession, count: int) -> None:
        while session.keepalives < count:
            await asyncio.sleep(0.02)  # polling an observable condition, bounded by wait_for

    async with AsyncClient(shared_daemon.url) as client, client.session("async-kept", ttl_s=1) as s:
        await asyncio.wait_for(keepalives(s, 4), WAIT_S)
        info = await s.info()
        assert info.expires_at - info.created_at > s.ttl_s

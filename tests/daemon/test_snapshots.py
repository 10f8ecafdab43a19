"""Snapshots are written by a child process while the loop goes on (Redis's BGSAVE): the journal
adopts the file once it is complete, a restart restores exactly what was committed, and a stop
with a child still writing abandons it and writes its own."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest

from debugregd.backends import SimBackend
from debugregd.core import Arbiter
from debugregd.hub import EventHub
from debugregd.recovery import JournalDamaged, open_journal, replay
from debugregd.runtime import Runtime
from debugregd.store.journal import Journal


def runtime(path: Path, every: int) -> Runtime:
    return Runtime(
        Arbiter(ncpus=2),
        Journal(path),
        EventHub(),
        SimBackend(ncpus=2),
        retention=10_000,
        snapshot_every=every,
    )


def allocate(rt: Runtime, session: str, n: int) -> dict[str, Any]:
    request = {
        "scope": {"kind": "task", "tid": 1000 + n},
        "address": 0x7FFD_1000,
        "length": 8,
        "access": "write",
        "priority": 300,
        "evictable": True,
        "on_evict": "release",
        "wait": False,
        "label": "",
    }
    return {"op": "allocate", "session": session, "request": request}


async def test_a_snapshot_written_in_the_background_is_adopted_and_restores_exactly(
    tmp_path: Path,
) -> None:
    path = tmp_path / f"{secrets.token_hex(4)}.sqlite3"
    rt = runtime(path, every=20)
    opened = {"op": "open_session", "name": "s", "ttl_s": 86_400, "max_priority": 300}
    session, committed = rt.apply({**opened, "allow_non_evictable": False, "allow_kernel": False})
    await committed
    rt.snapshot_written = asyncio.get_running_loop().create_future()
    for n in range(30):  # past 20 commands: one snapshot, forked after a commit
        _, committed = rt.apply(allocate(rt, session.id, n))
    await committed
    assert await asyncio.wait_for(rt.snapshot_written, timeout=30)
    covered = rt.journal.snapshot_seq()
    assert covered >= 20
    assert rt.journal.snapshot_path(covered).exists()
    for n in range(30, 35):  # more after it: replayed over it
        _, committed = rt.apply(allocate(rt, session.id, n))
    await committed
    expected = rt.arbiter.snapshot()
    rt.journal.close()

    again = Journal(path)
    restored = replay(again, lambda: Arbiter(ncpus=2))
    assert restored.arbiter.snapshot() == expected
    again.close()


async def test_a_stop_abandons_a_snapshot_still_being_written(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    rt = runtime(path, every=1)
    opened = {"op": "open_session", "name": "s", "ttl_s": 86_400, "max_priority": 300}
    _, committed = rt.apply({**opened, "allow_non_evictable": False, "allow_kernel": False})
    await committed  # forks a child
    expected = rt.arbiter.snapshot()
    await rt.stop()  # kills it if it still runs, writes its own snapshot in the journal
    assert list(tmp_path.glob("j.sqlite3.snapshot-*")) == []
    again = Journal(path)
    assert replay(again, lambda: Arbiter(ncpus=2)).arbiter.snapshot() == expected
    again.close()


async def test_a_missing_snapshot_file_is_damage_the_start_names(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    rt = runtime(path, every=1)
    rt.snapshot_written = asyncio.get_running_loop().create_future()
    opened = {"op": "open_session", "name": "s", "ttl_s": 86_400, "max_priority": 300}
    _, committed = rt.apply({**opened, "allow_non_evictable": False, "allow_kernel": False})
    await committed
    assert await asyncio.wait_for(rt.snapshot_written, timeout=30)
    written = rt.journal.snapshot_path(rt.journal.snapshot_seq())
    rt.journal.close()
    written.unlink()
    with pytest.raises(JournalDamaged, match="snapshot"):
        open_journal(path, lambda: Arbiter(ncpus=2)).journal.close()

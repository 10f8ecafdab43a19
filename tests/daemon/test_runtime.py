"""The runtime's retention: idempotency keys expire from memory as they do from the journal, so a
restart never changes which retried request gets the first answer."""

from __future__ import annotations

from pathlib import Path

from debugregd.backends import SimBackend
from debugregd.core import Arbiter
from debugregd.hub import EventHub
from debugregd.runtime import IDEMPOTENCY_TTL_S, Runtime
from debugregd.store.journal import Journal


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def runtime(path: Path, clock: Clock) -> Runtime:
    journal = Journal(path)
    return Runtime(Arbiter(), journal, EventHub(), SimBackend(), retention=100, clock=clock)


async def test_idempotency_keys_older_than_the_ttl_are_forgotten_in_memory_and_on_disk(
    tmp_path: Path,
) -> None:
    clock = Clock()
    rt = runtime(tmp_path / "j.sqlite3", clock)
    rt.remember("old", 201, '{"a":1}')
    clock.now += IDEMPOTENCY_TTL_S / 2
    rt.remember("young", 201, '{"a":2}')
    await rt.barrier()

    clock.now += IDEMPOTENCY_TTL_S / 2 + 1  # "old" is past the TTL, "young" is not
    rt.prune(clock.now)
    assert set(rt.idempotency) == {"young"}
    await rt.barrier()
    rt.journal.close()

    restarted = runtime(tmp_path / "j.sqlite3", clock)
    assert restarted.idempotency == {"young": (201, '{"a":2}')}
    clock.now += IDEMPOTENCY_TTL_S
    restarted.prune(clock.now)
    assert restarted.idempotency == {}
    restarted.journal.close()

"""The runtime's retention (idempotency keys expire from memory as they do from the journal, so a
restart never changes which retried request gets the first answer), and the records its
responses reuse."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from debugregd import wire
from debugregd.backends import SimBackend
from debugregd.core import Arbiter, CoreError
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


# A command's response reuses the record its latest event carried (`Runtime.record`); whatever
# happened since, it must equal the record built afresh, redacted alike.
KERNEL_ADDRESS = 0xFFFF_FFFF_8100_0000
OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("allocate"),
            st.integers(1, 3),  # tid
            st.booleans(),  # kernel space
            st.sampled_from([100, 300, 500, 800]),  # priority
            st.booleans(),  # wait
            st.sampled_from(["release", "wait"]),  # on_evict
        ),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("evict"), st.integers(0, 30)),
        st.tuples(st.just("tick"), st.floats(0, 120)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
async def test_the_record_a_response_reuses_equals_one_built_afresh(
    tmp_path: Path, ops: list[tuple[Any, ...]]
) -> None:
    clock = Clock()
    path = tmp_path / f"{secrets.token_hex(4)}.sqlite3"
    rt = Runtime(
        Arbiter(ncpus=2, mode_switching=True),
        Journal(path),
        EventHub(),
        SimBackend(ncpus=2, mode_switching=True),
        retention=100,
        clock=clock,
    )
    opened = {
        "op": "open_session",
        "name": "s",
        "ttl_s": 60,
        "max_priority": 1000,
        "allow_non_evictable": True,
        "allow_kernel": True,
    }
    session, _ = rt.apply(opened)
    seen: list[str] = []
    try:
        for op in ops:
            clock.now += 1
            command: dict[str, Any]
            if op[0] == "allocate":
                _, tid, kernel, priority, wait, on_evict = op
                request = {
                    "scope": {"kind": "task", "tid": tid},
                    "address": KERNEL_ADDRESS if kernel else 0x7FFD_1000 + 8 * len(seen),
                    "length": 8,
                    "access": "write",
                    "priority": priority,
                    "evictable": priority < 800,
                    "on_evict": on_evict,
                    "wait": wait,
                    "label": "",
                }
                command = {"op": "allocate", "session": session.id, "request": request}
            elif op[0] in ("release", "evict") and seen:
                target = seen[op[1] % len(seen)]
                command = {"op": op[0], "allocation": target, "session": session.id}
                if op[0] == "evict":
                    command = {"op": "evict", "allocation": target, "reason": "test"}
            elif op[0] == "tick":
                clock.now += op[1]
                command = {"op": "keepalive", "session": session.id}
            else:
                continue
            try:
                result, _ = rt.apply(command)
            except CoreError:
                continue
            if op[0] == "allocate":
                seen.append(result.id)
            for alloc in [*rt.arbiter.allocations.values(), *rt.arbiter.history.values()]:
                for visible in (True, False):
                    fresh = wire.record(alloc.to_dict(), kernel_visible=visible)
                    assert rt.record(alloc, kernel_visible=visible) == fresh
    finally:
        await rt.barrier()
        rt.journal.close()

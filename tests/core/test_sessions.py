"""Sessions (DESIGN section 9): a lease with a TTL that owns allocations. Time is a parameter:
`tick(now)` expires every lease that ran out, releasing everything it held with `expired` events;
keepalive renews; close releases."""

from __future__ import annotations

import pytest

from debugregd.core import (
    Arbiter,
    Forbidden,
    InvalidRequest,
    NotFound,
    Session,
    State,
)
from tests.core.build import (
    BACKGROUND,
    CRITICAL,
    KERNEL,
    NORMAL,
    PTRACE,
    USER,
    affected,
    cpu,
    host,
    request,
    state,
    task,
    types,
)

TTL = 30.0


def open_session(arb: Arbiter, now: float = 0.0, **grants: object) -> Session:
    session, events = arb.open_session("test", TTL, now, **grants)  # type: ignore[arg-type]
    assert types(events) == ["session_opened"]
    return session


def test_opening_a_session_starts_a_lease_of_ttl_seconds() -> None:
    arb = host()
    session, events = arb.open_session("gdb", TTL, 100.0)
    assert session.expires_at == 130.0
    assert session.max_priority == NORMAL
    assert not session.allow_non_evictable and not session.allow_kernel
    assert events[0].session == session.id
    assert arb.next_expiry() == 130.0


@pytest.mark.parametrize("ttl", [0, -1, 86_401])
def test_a_ttl_outside_0_to_a_day_is_invalid(ttl: float) -> None:
    arb = host()
    with pytest.raises(InvalidRequest, match="ttl_s"):
        arb.open_session("x", ttl, 0)
    assert arb.sessions == {}


def test_lease_expiry_releases_everything_with_expired_events() -> None:
    arb = host()
    session = open_session(arb)
    installed, _ = arb.allocate(session.id, request(task(1)), 1)
    for i in range(3):  # with `installed`, task 1 has all four registers
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * i, priority=CRITICAL), 1)
    waiting, _ = arb.allocate(session.id, request(task(1), 0x2000, wait=True), 2)
    assert (installed.state, waiting.state) == (State.INSTALLED, State.WAITING)
    events = arb.tick(TTL + 0.5)
    assert types(events) == ["expired", "expired", "session_closed"]
    assert sorted(affected(events, "expired")) == sorted([installed.id, waiting.id])
    assert events[-1].data == {"reason": "expired"}
    assert (installed.state, waiting.state) == (State.EXPIRED, State.EXPIRED)
    assert installed.registers() == []
    assert arb.waiting() == []
    with pytest.raises(NotFound):
        arb.session(session.id)


def test_a_lease_expires_exactly_at_expires_at_and_not_before() -> None:
    arb = host()
    session = open_session(arb)
    alloc, _ = arb.allocate(session.id, request(task(1)), 1)
    assert arb.tick(TTL - 0.001) == []
    assert alloc.state is State.INSTALLED
    assert types(arb.tick(TTL)) == ["expired", "session_closed"]


def test_keepalive_renews_the_lease_without_an_event() -> None:
    arb = host()
    session = open_session(arb)
    alloc, _ = arb.allocate(session.id, request(task(1)), 1)
    before = arb.event_id
    renewed = arb.keepalive(session.id, 20.0)
    assert renewed.expires_at == 20.0 + TTL
    assert arb.event_id == before
    assert arb.tick(TTL + 1) == []
    assert alloc.state is State.INSTALLED
    assert arb.next_expiry() == 20.0 + TTL
    assert types(arb.tick(20.0 + TTL)) == ["expired", "session_closed"]


def test_expiry_only_ends_the_sessions_that_ran_out() -> None:
    arb = host()
    early = open_session(arb, 0.0)
    late = open_session(arb, 10.0)
    a, _ = arb.allocate(early.id, request(task(1)), 1)
    b, _ = arb.allocate(late.id, request(task(2)), 11)
    events = arb.tick(35.0)
    assert [e.session for e in events if e.type == "session_closed"] == [early.id]
    assert (a.state, b.state) == (State.EXPIRED, State.INSTALLED)


def test_expiry_frees_registers_for_the_waiters_of_other_sessions_in_the_same_tick() -> None:
    arb = host()
    holder = open_session(arb)
    waiter_session = open_session(arb, 20.0)
    for i in range(4):
        arb.allocate(holder.id, request(cpu(0), 0x9000 + 8 * i), 1)
    waiter, _ = arb.allocate(waiter_session.id, request(task(1), wait=True), 21)
    events = arb.tick(TTL)
    assert affected(events, "reinstalled") == [waiter.id]
    assert waiter.state is State.INSTALLED


def test_close_releases_everything_the_session_held() -> None:
    arb = host()
    session = open_session(arb)
    a, _ = arb.allocate(session.id, request(task(1)), 1)
    b, _ = arb.allocate(session.id, request(cpu(0), USER + 8), 1)
    events = arb.close_session(session.id, 2)
    assert types(events) == ["released", "released", "session_closed"]
    assert events[-1].data == {"reason": "closed"}
    assert (a.state, b.state) == (State.RELEASED, State.RELEASED)
    assert arb.tick(100) == []


def test_a_closed_session_is_gone() -> None:
    arb = host()
    session = open_session(arb)
    arb.close_session(session.id, 1)
    for op in (
        lambda: arb.keepalive(session.id, 2),
        lambda: arb.close_session(session.id, 2),
        lambda: arb.allocate(session.id, request(task(1)), 2),
    ):
        with pytest.raises(NotFound):
            op()


def test_only_the_owner_or_an_admin_may_release() -> None:
    arb = host()
    owner = open_session(arb)
    other = open_session(arb)
    alloc, _ = arb.allocate(owner.id, request(task(1)), 1)
    with pytest.raises(Forbidden):
        arb.release(alloc.id, 2, session_id=other.id)
    assert alloc.state is State.INSTALLED
    arb.release(alloc.id, 2)  # the admin
    assert state(alloc) is State.RELEASED


def test_release_is_idempotent() -> None:
    arb = host()
    session = open_session(arb)
    alloc, _ = arb.allocate(session.id, request(task(1)), 1)
    arb.release(alloc.id, 2, session_id=session.id)
    again, events = arb.release(alloc.id, 3, session_id=session.id)
    assert again is alloc and events == []
    assert alloc.state is State.RELEASED


def test_an_unknown_allocation_is_not_found() -> None:
    with pytest.raises(NotFound):
        host().release("a404", 0)


def test_a_priority_above_the_sessions_grant_is_forbidden() -> None:
    arb = host()
    session = open_session(arb)
    with pytest.raises(Forbidden, match="max_priority"):
        arb.allocate(session.id, request(task(1), priority=PTRACE), 1)
    granted = open_session(arb, max_priority="ptrace")
    alloc, _ = arb.allocate(granted.id, request(task(1), priority=PTRACE), 1)
    assert alloc.state is State.INSTALLED


def test_non_evictable_needs_the_grant() -> None:
    arb = host()
    with pytest.raises(Forbidden, match="allow_non_evictable"):
        arb.allocate(open_session(arb).id, request(task(1), evictable=False), 1)
    granted = open_session(arb, allow_non_evictable=True)
    arb.allocate(granted.id, request(task(1), evictable=False), 1)


def test_kernel_space_needs_the_grant() -> None:
    arb = host()
    with pytest.raises(Forbidden, match="allow_kernel"):
        arb.allocate(open_session(arb).id, request(cpu(0), KERNEL, 8), 1)
    granted = open_session(arb, allow_kernel=True)
    arb.allocate(granted.id, request(cpu(0), KERNEL, 8), 1)


def test_the_admin_needs_no_grant() -> None:
    arb = host()
    alloc, _ = arb.allocate(None, request(cpu(0), KERNEL, 8, priority=1000, evictable=False), 1)
    assert alloc.session is None and alloc.state is State.INSTALLED


def test_a_forbidden_request_stores_nothing() -> None:
    arb = host()
    session = open_session(arb)
    before = arb.snapshot()
    with pytest.raises(Forbidden):
        arb.allocate(session.id, request(task(1), priority=BACKGROUND, evictable=False), 1)
    assert arb.snapshot() == before


def test_a_session_lists_its_live_allocations_only() -> None:
    arb = host()
    session = open_session(arb)
    a, _ = arb.allocate(session.id, request(task(1)), 1)
    b, _ = arb.allocate(session.id, request(task(1), USER + 8), 1)
    arb.release(a.id, 2)
    assert list(session.allocations) == [b.id]


def test_keepalive_after_the_lease_ran_out_does_not_revive_it() -> None:
    arb = host()
    session = open_session(arb)
    arb.allocate(session.id, request(task(1)), 1)
    with pytest.raises(NotFound):
        arb.keepalive(session.id, TTL + 5)


def test_terminal_allocations_are_kept_in_a_bounded_history() -> None:
    arb = Arbiter(host().profile, 1, history=2)
    ids = [arb.allocate(None, request(task(1), USER + 8 * i), 0)[0].id for i in range(3)]
    for aid in ids:
        arb.release(aid, 1)
    with pytest.raises(NotFound):
        arb.allocation(ids[0])
    assert [arb.allocation(a).state for a in ids[1:]] == [State.RELEASED, State.RELEASED]

"""The raw x86 ABI (DESIGN section 8): DR0-DR3 and DR7 as a ptrace user writes them, applied at
ptrace priority, all or nothing. Unchanged registers keep their allocations, GET returns what was
written, and the physical index on each CPU is the daemon's own assignment."""

from __future__ import annotations

import pytest

from debugregd.core import (
    Access,
    Arbiter,
    Forbidden,
    InvalidRequest,
    NotFound,
    OnEvict,
    Priority,
    Refused,
    State,
)
from debugregd.core.dr7 import RawSlot, encode
from tests.core.build import (
    BACKGROUND,
    CRITICAL,
    NORMAL,
    PTRACE,
    affected,
    cpu,
    host,
    indices,
    request,
    task,
    types,
)

TID = 4242


def write(
    arb: Arbiter,
    slots: list[RawSlot],
    now: float = 0.0,
    *,
    session: str | None = None,
    global_enable: bool = False,
) -> list[str]:
    """Write DR0-DR3 and DR7 enabling `slots`; returns the event types."""
    regs = [0, 0, 0, 0]
    for slot in slots:
        regs[slot.index] = slot.address
    dr7 = encode(slots, global_enable=global_enable)
    events = arb.set_debugregs(session, TID, (regs[0], regs[1], regs[2], regs[3]), dr7, now)
    return types(events)


def allocations(arb: Arbiter) -> dict[str, str]:
    out: dict[str, str] = arb.debugregs(TID)["allocations"]
    return out


def test_each_enabled_register_becomes_a_task_allocation_at_ptrace_priority() -> None:
    arb = host(ncpus=2)
    assert write(
        arb, [RawSlot(0, 0x1000, 8, Access.WRITE), RawSlot(2, 0x401000, 1, Access.EXEC)]
    ) == [
        "installed",
        "installed",
    ]
    by_dr = allocations(arb)
    assert sorted(by_dr) == ["dr0", "dr2"]
    for aid in by_dr.values():
        alloc = arb.allocation(aid)
        assert alloc.priority == Priority.PTRACE
        assert alloc.scope == task(TID)
        assert alloc.on_evict is OnEvict.WAIT
        assert alloc.state is State.INSTALLED
    assert (arb.allocation(by_dr["dr2"]).address, arb.allocation(by_dr["dr2"]).access) == (
        0x401000,
        Access.EXEC,
    )


def test_get_returns_the_registers_as_written() -> None:
    arb = host()
    dr7 = encode([RawSlot(1, 0x2000, 4, Access.RW)], global_enable=True) | 0b11 << 8  # GE, LE
    regs = (0x1111, 0x2000, 0x7FFFFFFFE000, 0)  # DR0 and DR2 written but disabled
    arb.set_debugregs(None, TID, regs, dr7, 0)
    got = arb.debugregs(TID)
    assert [got[f"dr{n}"] for n in range(4)] == list(regs)
    assert got["dr7"] == dr7
    assert sorted(got["allocations"]) == ["dr1"]


def test_a_task_never_written_reads_as_zeros() -> None:
    got = host().debugregs(TID)
    assert [got[f"dr{n}"] for n in range(4)] == [0, 0, 0, 0]
    assert got["dr7"] == 0 and got["allocations"] == {}


def test_unchanged_registers_keep_their_allocation() -> None:
    arb = host()
    write(arb, [RawSlot(0, 0x1000, 8, Access.WRITE), RawSlot(1, 0x2000, 4, Access.WRITE)])
    before = allocations(arb)
    generation = arb.allocation(before["dr0"]).generation
    events = write(
        arb, [RawSlot(0, 0x1000, 8, Access.WRITE), RawSlot(1, 0x3000, 4, Access.WRITE)], 1
    )
    after = allocations(arb)
    assert after["dr0"] == before["dr0"]
    assert arb.allocation(after["dr0"]).generation == generation
    assert after["dr1"] != before["dr1"]
    assert arb.allocation(before["dr1"]).state is State.RELEASED
    assert events == ["released", "installed"]


def test_rewriting_the_same_values_changes_nothing() -> None:
    arb = host()
    slots = [RawSlot(0, 0x1000, 8, Access.WRITE), RawSlot(3, 0x2000, 2, Access.RW)]
    write(arb, slots)
    before = allocations(arb)
    assert write(arb, slots, 1) == []
    assert allocations(arb) == before


def test_clearing_dr7_releases_every_register() -> None:
    arb = host()
    write(arb, [RawSlot(n, 0x1000 + 8 * n, 8, Access.WRITE) for n in range(4)])
    ids = list(allocations(arb).values())
    assert write(arb, [], 1) == ["released"] * 4
    assert all(arb.allocation(a).state is State.RELEASED for a in ids)
    assert allocations(arb) == {}


def test_the_physical_index_is_the_daemons_assignment() -> None:
    arb = host()
    write(arb, [RawSlot(3, 0x1000, 8, Access.WRITE)])
    assert indices(arb, allocations(arb)["dr3"]) == [0]


def test_a_write_evicts_lower_priority_holders() -> None:
    arb = host()
    low = [
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * i, priority=p), 0)[0].id
        for i, p in enumerate([BACKGROUND, NORMAL, CRITICAL, CRITICAL])
    ]
    events = arb.set_debugregs(
        None,
        TID,
        (0x1000, 0x2000, 0, 0),
        encode([RawSlot(0, 0x1000, 8, Access.WRITE), RawSlot(1, 0x2000, 8, Access.WRITE)]),
        1,
    )
    assert sorted(affected(events, "evicted")) == sorted(low[:2])


def test_a_write_is_all_or_nothing() -> None:
    arb = host()
    write(arb, [RawSlot(0, 0x1000, 8, Access.WRITE)])
    for i in range(2):
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * i, priority=CRITICAL), 0)
    before = arb.snapshot()
    with pytest.raises(Refused) as refused:
        write(arb, [RawSlot(n, 0x2000 + 8 * n, 8, Access.WRITE) for n in range(3)], 1)
    assert arb.snapshot() == before
    assert all(b["priority"] >= PTRACE for b in refused.value.blockers)
    assert arb.debugregs(TID)["dr0"] == 0x1000


def test_replaced_registers_make_room_for_their_replacements() -> None:
    arb = host()
    write(arb, [RawSlot(n, 0x1000 + 8 * n, 8, Access.WRITE) for n in range(2)])
    for i in range(2):
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * i, priority=CRITICAL), 0)
    events = write(arb, [RawSlot(n, 0x2000 + 8 * n, 8, Access.WRITE) for n in range(2)], 1)
    assert events == ["released", "released", "installed", "installed"]


def test_an_invalid_dr7_is_rejected_and_changes_nothing() -> None:
    arb = host()
    write(arb, [RawSlot(0, 0x1000, 8, Access.WRITE)])
    before = arb.snapshot()
    io = 0b01 | 0b10 << 16  # DR0 enabled with R/W=10
    with pytest.raises(InvalidRequest, match="R/W=10"):
        arb.set_debugregs(None, TID, (0x1000, 0, 0, 0), io, 1)
    assert arb.snapshot() == before


def test_the_raw_abi_exists_only_on_x86_64() -> None:
    with pytest.raises(InvalidRequest, match="x86_64"):
        host("arm64").set_debugregs(None, TID, (0, 0, 0, 0), 0, 0)


def test_a_session_needs_the_ptrace_grant() -> None:
    arb = host()
    plain, _ = arb.open_session("plain", 30, 0)
    with pytest.raises(Forbidden, match="ptrace"):
        write(arb, [RawSlot(0, 0x1000, 8, Access.WRITE)], session=plain.id)
    granted, _ = arb.open_session("gdb", 30, 0, max_priority="ptrace")
    write(arb, [RawSlot(0, 0x1000, 8, Access.WRITE)], session=granted.id)
    assert arb.allocation(allocations(arb)["dr0"]).session == granted.id


def test_another_sessions_task_registers_are_forbidden() -> None:
    arb = host()
    gdb, _ = arb.open_session("gdb", 30, 0, max_priority="ptrace")
    other, _ = arb.open_session("other", 30, 0, max_priority="ptrace")
    write(arb, [RawSlot(0, 0x1000, 8, Access.WRITE)], session=gdb.id)
    with pytest.raises(Forbidden, match="another session"):
        write(arb, [], session=other.id)
    write(arb, [], 1)  # the admin may


def test_an_unknown_session_is_not_found() -> None:
    with pytest.raises(NotFound):
        write(host(), [], session="s404")


def test_closing_the_session_forgets_its_raw_registers() -> None:
    arb = host()
    gdb, _ = arb.open_session("gdb", 30, 0, max_priority="ptrace")
    write(arb, [RawSlot(0, 0x1000, 8, Access.WRITE)], session=gdb.id)
    arb.close_session(gdb.id, 1)
    assert arb.debugregs(TID)["dr7"] == 0


def test_an_evicted_ptrace_register_waits_and_comes_back() -> None:
    arb = host()
    write(arb, [RawSlot(0, 0x1000, 8, Access.WRITE)])
    aid = allocations(arb)["dr0"]
    top = [
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * i, priority=CRITICAL), 1)[0]
        for i in range(4)
    ]
    assert arb.allocation(aid).state is State.WAITING
    arb.release(top[0].id, 2)
    assert arb.allocation(aid).state is State.INSTALLED
    assert allocations(arb)["dr0"] == aid


def test_identical_raw_registers_need_one_register() -> None:
    arb = host()
    for i in range(2):
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * i, priority=CRITICAL), 0)
    same = [RawSlot(n, 0x1000, 4, Access.WRITE) for n in range(3)]
    assert write(arb, same, 1) == ["installed"] * 3


def test_a_raw_write_needing_more_registers_than_the_host_has_is_invalid() -> None:
    arb = host(pools={"dr": 2})
    with pytest.raises(InvalidRequest):
        write(arb, [RawSlot(n, 0x1000 + 8 * n, 8, Access.WRITE) for n in range(3)])


def test_a_normal_priority_holder_cannot_squat_on_a_ptrace_users_registers() -> None:
    # The review's first demand: existing ptrace users never start failing because of a
    # well-behaved newcomer.
    arb = host()
    for i in range(4):
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * i, priority=NORMAL), 0)
    events = write(arb, [RawSlot(n, 0x1000 + 8 * n, 8, Access.WRITE) for n in range(4)], 1)
    assert events.count("installed") == 4
    assert events.count("evicted") == 4
    assert arb.allocation(allocations(arb)["dr0"]).priority == PTRACE


def test_a_write_may_reuse_the_register_its_replaced_identical_drs_shared() -> None:
    arb = host()
    write(arb, [RawSlot(0, 0x1000, 1, Access.WRITE), RawSlot(1, 0x1000, 1, Access.WRITE)])
    events = write(arb, [RawSlot(n, 0x2000 + 8 * n, 8, Access.WRITE) for n in range(4)], 1)
    assert events == ["released", "released", *["installed"] * 4]


def test_a_write_never_evicts_the_register_one_of_its_drs_shares() -> None:
    # Found by the stateful test: the write counted on sharing the task's own watch of 0x1000,
    # then chose that same watch as the cheapest victim (the most recently installed), and
    # installed a fresh one on top: five registers in use on a CPU that has four.
    arb = host(ncpus=1)
    for i in range(2):
        arb.allocate(None, request(cpu(0), 0x9000 + 8 * i, priority=CRITICAL), 0)
    older = arb.allocate(None, request(task(TID), 0x4000, priority=BACKGROUND), 0)[0]
    shared = arb.allocate(None, request(task(TID), 0x1000, 1, priority=BACKGROUND), 0)[0]
    events = arb.set_debugregs(
        None,
        TID,
        (0x1000, 0x2000, 0, 0),
        encode([RawSlot(0, 0x1000, 1, Access.WRITE), RawSlot(1, 0x2000, 8, Access.WRITE)]),
        1,
    )
    assert affected(events, "evicted") == [older.id]
    assert shared.state is State.INSTALLED
    dr0 = arb.allocation(allocations(arb)["dr0"])
    assert dr0.watchpoint is shared.watchpoint
    view = arb.cpu_view(0)["pools"]["dr"]
    assert view["cpu_held"] + view["max_task_held"] == 4

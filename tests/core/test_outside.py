"""The kernel is the truth (DESIGN section 12): users outside debugregd are modelled as holders that
rank above every priority, the kernel is asked before anything is installed, its refusals change
nothing, and its answers are facts a replay gets again without asking."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import pytest

from debugregd.commands import execute, replay
from debugregd.core import (
    Arbiter,
    Forbidden,
    InvalidRequest,
    NotFound,
    OnEvict,
    Refused,
    State,
    Watchpoint,
)
from debugregd.core.errors import KernelRefused, Unavailable
from debugregd.core.kernel import (
    DENIED,
    INVALID,
    NO_TASK,
    UNAVAILABLE,
    Answer,
    Measurement,
    NoRoom,
    Recorder,
    Rejected,
)
from tests.core.build import BACKGROUND, CRITICAL, PTRACE, USER, affected, cpu, host, request, types
from tests.core.build import task as task_scope


class Scripted:
    """A kernel that answers from a script (None: armed) and records what it was asked."""

    def __init__(self, *answers: Answer) -> None:
        self.answers: deque[Answer] = deque(answers)
        self.armed: list[Watchpoint] = []
        self.disarmed: list[Watchpoint] = []

    def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
        answer = self.answers.popleft() if self.answers else None
        if answer is None:
            self.armed.extend(wps)
        return answer

    def disarm(self, wp: Watchpoint) -> None:
        self.disarmed.append(wp)


def cpus_held(budget: str = "dr", **held: int) -> Measurement:
    return Measurement(budget, cpus={int(c.removeprefix("cpu")): n for c, n in held.items()})


def tasks_held(held: dict[int, int]) -> Measurement:
    return Measurement("dr", tasks=dict(held))


def fill_task(arb: Arbiter, tid: int, count: int, **kw: object) -> list[str]:
    ids = []
    for n in range(count):
        alloc, _ = arb.allocate(None, request(task_scope(tid), USER + 8 * n, **kw), 0)  # type: ignore[arg-type]
        ids.append(alloc.id)
    return ids


def test_an_outside_holder_counts_in_admission_and_is_named_in_refusals() -> None:
    arb = host(ncpus=2)
    events = arb.observe(cpus_held(cpu0=2, cpu1=2), 0)
    assert types(events) == ["outside", "outside"]
    fill_task(arb, 7, 2, priority=BACKGROUND)
    with pytest.raises(Refused) as refused:
        arb.allocate(None, request(task_scope(7), USER + 64, priority=BACKGROUND), 1)
    assert "outside debugregd: 2 registers on CPU 0" in refused.value.detail
    outside = [b for b in refused.value.blockers if b.get("outside")]
    assert outside and outside[0]["registers"] == 2 and outside[0]["priority"] > 1000


def test_a_higher_priority_request_evicts_debugregds_own_holders_not_the_outside_ones() -> None:
    arb = host(ncpus=2)
    arb.observe(tasks_held({7: 2}), 0)
    low = fill_task(arb, 7, 2, priority=BACKGROUND)
    alloc, events = arb.allocate(None, request(task_scope(7), USER + 64, priority=PTRACE), 1)
    assert alloc.state is State.INSTALLED
    assert affected(events, "evicted") == [low[1]]  # the most recently installed goes first


def test_ptrace_is_refused_only_by_outside_or_higher_holders_and_they_are_named() -> None:
    arb = host(ncpus=2)
    arb.observe(tasks_held({7: 3}), 0)
    fill_task(arb, 7, 1, priority=CRITICAL, evictable=False)
    with pytest.raises(Refused) as refused:
        arb.allocate(None, request(task_scope(7), USER + 64, priority=PTRACE), 1)
    named = {b["allocation"] or b["label"] for b in refused.value.blockers}
    assert named == {"a1", "outside debugregd: 3 registers on task 7"}


def test_when_outside_holders_leave_their_room_goes_to_the_waiters() -> None:
    arb = host(ncpus=1)
    arb.observe(cpus_held(cpu0=3), 0)
    fill_task(arb, 7, 1)
    waiter, events = arb.allocate(None, request(task_scope(7), USER + 64, wait=True), 1)
    assert types(events) == ["waiting"]
    assert "outside debugregd: 3 registers on CPU 0" in str(events[0].to_dict()["blockers"])
    events = arb.observe(cpus_held(cpu0=1), 2)
    assert types(events) == ["outside", "reinstalled"]
    assert waiter.state is State.INSTALLED
    assert events[0].to_dict()["registers"] == 1 and events[0].to_dict()["previous"] == 3


def test_the_same_measurement_again_changes_nothing() -> None:
    arb = host(ncpus=2)
    arb.observe(cpus_held(cpu0=1), 0)
    assert not arb.outside_after(cpus_held(cpu0=1))
    assert arb.outside_after(cpus_held(cpu0=2))
    assert arb.observe(cpus_held(cpu0=1), 1) == []


def test_a_measurement_never_overfills_a_register_file() -> None:
    arb = host(ncpus=1)
    fill_task(arb, 7, 3)
    arb.observe(cpus_held(cpu0=4), 0)  # stale or misattributed: more than can be there
    (record,) = arb.outside_records()
    assert record["registers"] == 1
    assert arb.budgets["dr"].used(0) == 4


def test_a_reservation_keeps_its_room_until_its_debugger_takes_it() -> None:
    arb = host(ncpus=1)
    fill_task(arb, 7, 2)
    reservation = request(task_scope(7), USER + 64, priority=PTRACE)
    reservation.arm = False
    arb.allocate(None, reservation, 0)
    # Another user outside debugregd holds one on the task before gdb writes its register: the
    # daemon cannot tell them apart, so it counts it, and the reservation's room stays its own.
    arb.observe(tasks_held({7: 1}), 1)
    assert [(r["registers"], r["measured"]) for r in arb.outside_records()] == [(1, 1)]
    # gdb wrote its register too: the kernel shows 2 held outside, of which 1 fits the model.
    arb.observe(tasks_held({7: 2}), 2)
    assert [(r["registers"], r["measured"]) for r in arb.outside_records()] == [(1, 2)]
    assert arb.budgets["dr"].used(0) == 4


def test_a_kernel_refusal_changes_nothing() -> None:
    arb = host(ncpus=2)
    fill_task(arb, 7, 3, priority=BACKGROUND)
    before = arb.snapshot()
    arb.kernel = Scripted(NoRoom(tasks_held({7: 1})))
    with pytest.raises(KernelRefused) as refused:
        arb.allocate(None, request(task_scope(7), USER + 64, length=8, priority=PTRACE), 1)
    assert refused.value.measured == tasks_held({7: 1})
    assert arb.snapshot() == before


@pytest.mark.parametrize(
    ("why", "error"),
    [
        (NO_TASK, NotFound),
        (INVALID, InvalidRequest),
        (DENIED, Forbidden),
        (UNAVAILABLE, Unavailable),
    ],
)
def test_a_rejection_by_the_kernel_is_a_typed_error_and_changes_nothing(
    why: str, error: type[Exception]
) -> None:
    arb = host(ncpus=2)
    before = arb.snapshot()
    arb.kernel = Scripted(Rejected(why, "because the kernel said so", 7))
    with pytest.raises(error, match="because the kernel said so"):
        arb.allocate(None, request(task_scope(7)), 1)
    assert arb.snapshot() == before


def test_the_victims_are_handed_to_the_kernel_to_free_before_it_arms() -> None:
    arb = host(ncpus=1)
    low = fill_task(arb, 7, 4, priority=BACKGROUND)
    victim = arb.allocation(low[3]).watchpoint
    seen: list[tuple[list[Watchpoint], list[Watchpoint]]] = []

    class Watching(Scripted):
        def arm(self, wps: Sequence[Watchpoint], freeing: Sequence[Watchpoint]) -> Answer:
            seen.append((list(wps), list(freeing)))
            return None

    arb.kernel = Watching()
    arb.allocate(None, request(task_scope(7), USER + 64, priority=PTRACE), 1)
    assert [f for _, f in seen] == [[victim]]


def test_a_reinstall_the_kernel_refuses_stays_waiting_and_records_who_holds_the_room() -> None:
    arb = host(ncpus=1)
    holder = fill_task(arb, 7, 4, priority=CRITICAL)
    waiter, _ = arb.allocate(None, request(task_scope(7), USER + 64, wait=True), 1)
    arb.kernel = Scripted(NoRoom(cpus_held(cpu0=1)))
    _, events = arb.release(holder[3], 2)
    assert types(events) == ["released", "outside"]
    assert waiter.state is State.WAITING
    # And it is not tried again while the outside holder is there (no evict/reinstall loop);
    # once more room comes back, it is.
    arb.kernel = Scripted()
    _, events = arb.release(holder[2], 3)
    assert types(events) == ["released", "reinstalled"]


def test_a_waiter_whose_task_is_gone_ends_with_its_task() -> None:
    arb = host(ncpus=1)
    holder = [
        arb.allocate(None, request(cpu(0), USER + 8 * n, priority=CRITICAL), 0)[0] for n in range(4)
    ]
    waiter, _ = arb.allocate(None, request(task_scope(7), USER + 64, wait=True), 1)
    arb.kernel = Scripted(Rejected(NO_TASK, "no such task 7", 7))
    _, events = arb.release(holder[0].id, 2)
    assert types(events)[:2] == ["released", "expired"]
    assert waiter.state is State.EXPIRED and waiter.reason == "task 7 exited"


def test_a_task_that_exits_takes_its_allocations_and_outside_record_with_it() -> None:
    arb = host(ncpus=2)
    mine = fill_task(arb, 7, 2)
    arb.observe(tasks_held({7: 1}), 0)
    events = arb.task_exited(7, 1)
    assert sorted(affected(events, "expired")) == sorted(mine)
    assert all(arb.allocation(a).reason == "task 7 exited" for a in mine)
    assert arb.outside_records() == []
    assert "outside" in types(events)
    assert arb.tasks_in_use() == set()


def test_rearm_evicts_what_the_kernel_refuses_and_records_who_holds_it() -> None:
    arb = host(ncpus=1)
    kept = fill_task(arb, 7, 2)
    requeued, _ = arb.allocate(None, request(task_scope(7), USER + 64, on_evict=OnEvict.WAIT), 0)
    arb.kernel = Scripted(None, None, NoRoom(tasks_held({7: 2})))
    events = arb.rearm(1)
    # The two armed again say their hits while the daemon was down are unknown.
    assert types(events) == ["evicted", "outside", "hit", "hit"]
    assert [e.to_dict().get("unknown") for e in events if e.type == "hit"] == [True, True]
    assert requeued.state is State.WAITING
    assert all(arb.allocation(a).state is State.INSTALLED for a in kept)
    assert [r["registers"] for r in arb.outside_records()] == [2]


def test_a_cpu_wide_request_counts_the_fullest_task_debugregd_does_not_manage() -> None:
    arb = host(ncpus=1)
    arb.observe(Measurement("dr", others={0: 3}), 0)
    arb.allocate(None, request(cpu(0)), 1)
    with pytest.raises(Refused, match="outside debugregd: 3 registers on another task on CPU 0"):
        arb.allocate(None, request(cpu(0), USER + 8), 2)
    # A task competes with CPU-wide holders only, so another task still has room for 3.
    fill_task(arb, 9, 3)


def test_outside_holders_survive_a_snapshot_with_the_same_registers() -> None:
    arb = host(ncpus=2)
    fill_task(arb, 7, 1)
    arb.observe(Measurement("dr", cpus={1: 1}, tasks={7: 1}, others={0: 1}), 0)
    arb.allocate(None, request(cpu(1), USER + 8), 1)
    twin = Arbiter.restore(arb.snapshot())
    assert twin.outside_records() == arb.outside_records()
    assert [twin.cpu_view(c) for c in range(2)] == [arb.cpu_view(c) for c in range(2)]
    assert twin.snapshot() == arb.snapshot()


def test_a_cpu_view_shows_outside_holders_in_cells_of_their_own() -> None:
    arb = host(ncpus=1)
    arb.observe(cpus_held(cpu0=1), 0)
    arb.allocate(None, request(cpu(0)), 1)
    view = arb.cpu_view(0)["pools"]["dr"]
    assert view["registers"][3] == {"allocations": [], "outside": {"kind": "cpu", "cpu": 0}}
    assert view["registers"][2] == {"allocations": ["a1"]}
    assert view["outside"] == {"cpu": 1, "others": 0}


def test_a_replay_gets_the_kernels_answers_from_the_journal_not_the_kernel() -> None:
    live = host(ncpus=1)
    kernel = Scripted()
    recorder = Recorder(kernel)
    live.kernel = recorder
    journal = []
    commands = [
        {"op": "allocate", "session": None, "request": _req(0, 900), "now": 0},
        {"op": "allocate", "session": None, "request": _req(8, 100, wait=True), "now": 1},
        {"op": "allocate", "session": None, "request": _req(16, 100, wait=True), "now": 2},
        {"op": "allocate", "session": None, "request": _req(24, 100, wait=True), "now": 3},
        {"op": "allocate", "session": None, "request": _req(32, 100, wait=True), "now": 4},
        {"op": "release", "allocation": "a1", "session": None, "now": 5},
    ]
    # When a1 goes, the first waiter's reinstall is refused: the kernel measured 1 held outside.
    kernel.answers.extend([None, None, None, None, NoRoom(cpus_held(cpu0=1))])
    events = []
    for command in commands:
        recorder.begin()
        _, evs = execute(live, command)
        if recorder.answers:
            command["kernel"] = recorder.answers
        journal.append(command)
        events.extend(e.to_dict() for e in evs)
    assert "kernel" in journal[-1]
    replayed = host(ncpus=1)
    replayed.kernel = Scripted(NoRoom(cpus_held(cpu0=4)))  # never asked: would answer wrong
    again = [e.to_dict() for c in journal for e in replay(replayed, c)[1]]
    assert again == events
    assert replayed.snapshot() == live.snapshot()


def _req(offset: int, priority: int, *, wait: bool = False) -> dict[str, object]:
    return request(cpu(0), USER + offset, priority=priority, wait=wait).to_dict()

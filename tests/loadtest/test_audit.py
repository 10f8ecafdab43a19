"""The audit is a pure function: doctored logs and snapshots must fail it with the right finding,
and a consistent one must pass."""

from __future__ import annotations

from typing import Any

from debugreg.loadtest.audit import (
    Notice,
    Refusal,
    audit,
    check_event_log,
    check_notices,
    check_refusals,
    check_replay,
    check_snapshot,
    compact_event,
    compact_snapshot,
)

HOST: dict[str, Any] = {"profile": "x86_64", "cpus": 2, "pools": {"dr": 4}, "mode_switching": False}


def alloc(
    aid: str,
    scope: dict[str, Any],
    registers: list[tuple[int, int]],
    *,
    session: str | None = "s1",
    state: str = "installed",
    generation: int = 1,
    address: int = 0x1000,
) -> dict[str, Any]:
    """An allocation record as the daemon sends it; registers are (cpu, index) in pool dr."""
    return {
        "id": aid,
        "session": session,
        "state": state,
        "scope": scope,
        "address": f"0x{address:x}",
        "length": 8,
        "access": "write",
        "priority": 300,
        "evictable": True,
        "on_evict": "release",
        "generation": generation,
        "registers": [{"cpu": c, "pool": "dr", "index": i} for c, i in registers],
        "space": "user",
        "label": "",
        "created_at": 1.0,
        "updated_at": 1.0,
    }


def views(allocations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The daemon's per-CPU view, counted honestly from `allocations`."""
    out = []
    for cpu in range(HOST["cpus"]):
        held = set()
        tasks: dict[int, set[int]] = {}
        for a in allocations:
            for r in a["registers"]:
                if r["cpu"] != cpu:
                    continue
                if a["scope"]["kind"] == "task":
                    tasks.setdefault(a["scope"]["tid"], set()).add(r["index"])
                else:
                    held.add(r["index"])
        top = max((len(v) for v in tasks.values()), default=0)
        out.append(
            {
                "cpu": cpu,
                "pools": {"dr": {"slots": 4, "cpu_held": len(held), "max_task_held": top}},
            }
        )
    return out


def snapshot(
    event_id: int, allocations: list[dict[str, Any]], sessions: tuple[str, ...] = ("s1",)
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "host": HOST,
        "sessions": [
            {"id": s, "allocations": [a["id"] for a in allocations if a["session"] == s]}
            for s in sessions
        ],
        "allocations": allocations,
        "waiting": [a["id"] for a in allocations if a["state"] == "waiting"],
        "cpus": views(allocations),
    }


def event(
    eid: int, kind: str, record: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": eid, "type": kind, "at": 100.0 + eid}
    if record is not None:
        out["allocation"] = record
        out["session"] = record["session"]
    out.update(extra)
    return out


TASK = {"kind": "task", "tid": 42}
CPU0 = {"kind": "cpu", "cpu": 0}


def consistent_run() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Session s1 opens, a1 (task) and a2 (CPU 0) install, a2 evicts a1, s1 closes."""
    a1 = alloc("a1", TASK, [(0, 0), (1, 0)], generation=1)
    a2 = alloc("a2", CPU0, [(0, 3)], generation=2, address=0x2000)
    a1_evicted = {**a1, "state": "evicted", "registers": []}
    a2_released = {**a2, "state": "released", "registers": []}
    events = [
        event(1, "session_opened", session="s1"),
        event(2, "installed", a1),
        event(3, "installed", a2),
        event(4, "evicted", a1_evicted, reason="evicted by a2"),
        event(5, "released", a2_released),
        event(6, "session_closed", session="s1"),
    ]
    initial = snapshot(0, [], sessions=())
    middle = snapshot(3, [a1, a2])
    final = snapshot(6, [], sessions=())
    return initial, events, [middle, final]


def kinds(violations: list[Any]) -> set[str]:
    return {v.kind for v in violations}


def test_a_consistent_run_passes() -> None:
    initial, events, snapshots = consistent_run()
    notice = Notice("s1", "a1", 4, 104.0, 104.002)
    result = audit(events, snapshots, [], initial=initial, notices=[notice], sessions={"s1"})
    assert result.passed, result.violations
    assert result.checked["evictions"] == result.checked["notices"] == 1


def test_oversubscribed_cpu_fails() -> None:
    # Three CPU-held registers and a task holding two on CPU 0 of a four-register pool.
    allocations = [
        alloc("a1", CPU0, [(0, 3)]),
        alloc("a2", CPU0, [(0, 2)], address=0x2000),
        alloc("a3", CPU0, [(0, 1)], address=0x3000),
        alloc("a4", {"kind": "task", "tid": 7, "cpus": [0]}, [(0, 0)], address=0x4000),
        alloc("a5", {"kind": "task", "tid": 7, "cpus": [0]}, [(0, 1)], address=0x5000),
    ]
    found = kinds(check_snapshot(snapshot(9, allocations)))
    assert "oversubscribed" in found
    assert "index-collision" in found


def test_two_watchpoints_on_one_register_fail() -> None:
    allocations = [alloc("a1", CPU0, [(0, 3)]), alloc("a2", CPU0, [(0, 3)], address=0x2000)]
    assert "index-collision" in kinds(check_snapshot(snapshot(9, allocations)))


def test_identical_requests_sharing_a_register_pass() -> None:
    allocations = [alloc("a1", CPU0, [(0, 3)]), alloc("a2", CPU0, [(0, 3)])]
    assert check_snapshot(snapshot(9, allocations)) == []


def test_tasks_may_reuse_each_others_indices() -> None:
    allocations = [
        alloc("a1", {"kind": "task", "tid": 1}, [(0, 0), (1, 0)]),
        alloc("a2", {"kind": "task", "tid": 2}, [(0, 0), (1, 0)]),
    ]
    assert check_snapshot(snapshot(9, allocations)) == []


def test_index_out_of_range_and_outside_scope_fail() -> None:
    allocations = [alloc("a1", CPU0, [(1, 4)])]
    found = kinds(check_snapshot(snapshot(9, allocations)))
    assert {"index-out-of-range", "register-outside-scope"} <= found


def test_daemon_counts_disagreeing_with_its_records_fail() -> None:
    snap = snapshot(9, [alloc("a1", CPU0, [(0, 3)])])
    snap["cpus"][0]["pools"]["dr"]["cpu_held"] = 0
    assert "count-mismatch" in kinds(check_snapshot(snap))


def test_waiting_with_registers_and_orphans_fail() -> None:
    waiting = alloc("a1", CPU0, [(0, 3)], state="waiting")
    orphan = alloc("a2", CPU0, [(0, 2)], session="s9", address=0x2000)
    found = kinds(check_snapshot(snapshot(9, [waiting, orphan])))
    assert {"waiting-with-registers", "orphan-allocation"} <= found


def test_ptrace_refused_by_evictable_lower_holders_fails() -> None:
    refusal = Refusal(
        "allocate_ptrace",
        700,
        (
            {"allocation": "a3", "priority": 100, "evictable": True},
            {"allocation": "a4", "priority": 300, "evictable": True},
        ),
    )
    violations = check_refusals([refusal])
    assert [v.kind for v in violations] == ["refused-by-evictable-lower"] * 2
    assert {v.allocation for v in violations} == {"a3", "a4"}


def test_ptrace_refused_by_non_evictable_or_equal_holders_passes() -> None:
    refusals = [
        Refusal(
            "allocate_ptrace", 700, ({"allocation": "a1", "priority": 100, "evictable": False},)
        ),
        Refusal("set_debugregs", 700, ({"allocation": "a2", "priority": 700, "evictable": True},)),
        Refusal("allocate", 300, ({"allocation": "a3", "priority": 900, "evictable": True},)),
    ]
    assert check_refusals(refusals) == []


def test_refusal_naming_no_blocker_fails() -> None:
    violations = check_refusals([Refusal("allocate_ptrace", 700, ())])
    assert kinds(violations) == {"refusal-without-blocker"}


def test_missing_notice_fails() -> None:
    _, events, _ = consistent_run()
    violations = check_notices(events, [], {"s1"})
    assert [(v.kind, v.allocation, v.event_id) for v in violations] == [("missing-notice", "a1", 4)]


def test_duplicate_and_misdelivered_notices_fail() -> None:
    _, events, _ = consistent_run()
    twice = [Notice("s1", "a1", 4, 104.0, 104.1), Notice("s1", "a1", 4, 104.0, 104.2)]
    assert kinds(check_notices(events, twice, {"s1"})) == {"duplicate-notice"}
    wrong = [Notice("s2", "a1", 4, 104.0, 104.1)]
    assert kinds(check_notices(events, wrong, {"s1", "s2"})) == {"misdelivered-notice"}
    stray = [Notice("s1", "a1", 4, 104.0, 104.1), Notice("s1", "a2", 5, 105.0, 105.1)]
    assert kinds(check_notices(events, stray, {"s1"})) == {"unexpected-notice"}


def test_notices_of_unfollowed_sessions_are_not_owed() -> None:
    _, events, _ = consistent_run()
    assert check_notices(events, [], {"s2"}) == []


def test_final_state_differing_from_the_replay_fails() -> None:
    initial, events, snapshots = consistent_run()
    middle, final = snapshots
    # The daemon "forgot" to evict a1: the final snapshot still holds it.
    a1 = alloc("a1", TASK, [(0, 0), (1, 0)])
    doctored = snapshot(final["event_id"], [a1])
    violations = check_replay(initial, events, [middle, doctored])
    assert kinds(violations) == {"replay-mismatch"}
    assert "a1: replay absent, snapshot installed gen 1" in violations[0].detail


def test_a_changed_generation_or_register_fails_the_replay() -> None:
    initial, events, snapshots = consistent_run()
    middle, _ = snapshots
    moved = snapshot(3, [alloc("a1", TASK, [(0, 1), (1, 0)]), middle["allocations"][1]])
    assert kinds(check_replay(initial, events, [moved])) == {"replay-mismatch"}
    regenerated = snapshot(
        3, [alloc("a1", TASK, [(0, 0), (1, 0)], generation=7), middle["allocations"][1]]
    )
    assert kinds(check_replay(initial, events, [regenerated])) == {"replay-mismatch"}


def test_a_snapshot_past_the_log_means_the_log_is_incomplete() -> None:
    initial, events, snapshots = consistent_run()
    assert kinds(check_replay(initial, events[:3], snapshots)) == {"event-log-incomplete"}


def test_gaps_repeats_and_resets_in_the_log_fail() -> None:
    _, events, _ = consistent_run()
    assert kinds(check_event_log([events[0], events[2]], 0)) == {"event-gap"}
    assert kinds(check_event_log([events[0], events[1], events[1]], 0)) == {"event-duplicate"}
    reset = {"id": 9, "type": "reset", "at": 1.0}
    assert kinds(check_event_log([*events, reset], 0)) == {"event-log-reset"}


def test_the_whole_audit_reports_each_broken_rule() -> None:
    initial, events, snapshots = consistent_run()
    middle, _ = snapshots
    doctored_final = snapshot(6, [alloc("a9", CPU0, [(0, 3)])], sessions=("s1",))
    refusal = Refusal(
        "allocate_ptrace", 700, ({"allocation": "a1", "priority": 300, "evictable": True},)
    )
    result = audit(events, [middle, doctored_final], [refusal], initial=initial, sessions={"s1"})
    assert not result.passed
    assert {"replay-mismatch", "refused-by-evictable-lower", "missing-notice"} <= set(
        result.kinds()
    )
    body = result.to_dict()
    assert body["passed"] is False
    assert body["violation_count"] == len(result.violations)


def test_compact_forms_keep_what_the_audit_reads() -> None:
    initial, events, snapshots = consistent_run()
    compact = [compact_event(e) for e in events]
    kept = [compact_snapshot(s) for s in snapshots]
    notice = Notice("s1", "a1", 4, 104.0, 104.002)
    result = audit(
        compact, kept, [], initial=compact_snapshot(initial), notices=[notice], sessions={"s1"}
    )
    assert result.passed, result.violations

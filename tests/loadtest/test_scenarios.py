"""Each scenario, briefly, against a real daemon: the audit passes and the counts add up."""

from __future__ import annotations

import json

import pytest

from debugreg.loadtest import Config, Result, main, run
from tests.support.daemon import Daemon

pytestmark = pytest.mark.timeout(90)

OPERATIONS = 150  # bounded by count; the duration below is only a safety cap


def config(
    daemon: Daemon,
    scenarios: tuple[str, ...],
    clients: int = 6,
    operations: int = OPERATIONS,
    engine: str = "raw",
) -> Config:
    return Config(
        url=daemon.url,
        admin_key=daemon.admin_key,
        scenarios=scenarios,
        clients=clients,
        operations=operations,
        duration_s=60.0,
        seed=7,
        think_ms=2.0,
        snapshot_interval_s=0.2,
        engine=engine,
    )


def assert_consistent(result: Result) -> None:
    """The audit passed, every eviction was noticed once, and every operation is counted once."""
    assert result.audit.passed, [v.to_dict() for v in result.audit.violations[:10]]
    assert result.evictions == len(result.notices)
    for name, stats in result.recorder.ops.items():
        assert stats.count == stats.successes + stats.refusals + stats.errors, name
        assert stats.count == len(stats.latencies), name
    totals = result.recorder.totals()
    assert totals["operations"] == totals["successes"] + totals["refusals"] + totals["errors"]
    assert result.audit.checked["snapshots"] >= 3  # the initial, end-of-load and final ones
    assert not result.stream_failures


@pytest.mark.parametrize("scenario", ["uniform", "waiters", "raw"])
async def test_each_scenario_passes_the_audit(daemon: Daemon, scenario: str) -> None:
    result = await run(config(daemon, (scenario,)))
    assert_consistent(result)
    assert result.recorder.totals()["errors"] == 0, result.recorder.error_kinds
    load = sum(
        s.count
        for name, s in result.recorder.ops.items()
        if name in ("allocate", "allocate_ptrace", "release", "set_debugregs", "keepalive")
    )
    assert load > 0


async def test_priority_storm_evicts_background_holders_for_ptrace(daemon: Daemon) -> None:
    result = await run(config(daemon, ("priority-storm",)))
    assert_consistent(result)
    assert result.recorder.totals()["errors"] == 0, result.recorder.error_kinds
    assert result.recorder.ops["allocate_ptrace"].successes > 0
    assert result.evictions > 0
    assert result.clients["holder"] >= 1 and result.clients["ptrace"] >= 1


async def test_churn_opens_new_sessions_and_lets_some_expire(daemon: Daemon) -> None:
    result = await run(config(daemon, ("churn",), clients=4, operations=60))
    assert_consistent(result)
    assert result.recorder.totals()["errors"] == 0, result.recorder.error_kinds
    assert result.recorder.ops["open_session"].successes > 4
    closed = result.recorder.ops.get("close_session")
    expired = result.recorder.ops.get("expiry")
    assert closed is not None and expired is not None
    assert expired.errors == 0


async def test_the_httpx_engine_runs_the_same_load(daemon: Daemon) -> None:
    result = await run(config(daemon, ("uniform", "priority-storm"), engine="httpx"))
    assert_consistent(result)
    assert result.recorder.totals()["errors"] == 0, result.recorder.error_kinds


async def test_scenarios_combine(daemon: Daemon) -> None:
    result = await run(config(daemon, ("uniform", "priority-storm", "waiters", "raw"), clients=8))
    assert_consistent(result)
    assert {"uniform", "holder", "ptrace", "waiter", "raw"} <= set(result.clients)


def test_main_prints_one_json_object_and_exits_zero(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        *("--url", daemon.url, "--admin-key", daemon.admin_key),
        *("--scenario", "uniform,waiters", "--clients", "4", "--operations", "60"),
        *("--think-ms", "1", "--json", "--no-live"),
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["audit"]["passed"] is True
    assert report["audit"]["violations"] == []
    assert report["evictions"] == report["notices"]
    for name, op in report["operations"].items():
        assert op["count"] == op["successes"] + op["refusals"] + op["errors"], name
        assert {"p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"} <= set(op)
    assert {"p50", "p90", "p99", "p999", "max"} <= set(report["notice_latency_ms"])


def test_main_without_the_admin_key_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEBUGREGD_ADMIN_KEY", raising=False)
    assert main(["--url", "http://127.0.0.1:9", "--operations", "5", "--no-live"]) == 2


def test_main_with_no_daemon_listening_exits_2() -> None:
    argv = ["--url", "http://127.0.0.1:9", "--admin-key", "k", "--operations", "5", "--no-live"]
    assert main(argv) == 2


def test_main_with_a_wrong_admin_key_exits_2(daemon: Daemon) -> None:
    argv = ["--url", daemon.url, "--admin-key", "wrong", "--operations", "5", "--no-live"]
    assert main(argv) == 2

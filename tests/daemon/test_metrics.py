"""The latency histograms the event loop fills: Prometheus semantics without prometheus-client's
per-observation lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from debugreg import Client, Event, Refused
from debugregd.api.app import create_app
from debugregd.api.context import DaemonApp
from debugregd.config import Settings
from debugregd.metrics import LATENCY_BUCKETS, LatencyHistogram, Stats
from debugregd.store.journal import Batch
from tests.client.conftest import WAIT_S, wait_until
from tests.daemon.test_commit import BODY, call, runtime
from tests.support.daemon import Daemon

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def exposed(histogram: LatencyHistogram) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(histogram)
    text = generate_latest(registry).decode()
    (family,) = text_string_to_metric_families(text)
    assert family.type == "histogram"
    out = {}
    for sample in family.samples:
        key = sample.name.removeprefix(family.name)
        out[key + sample.labels.get("le", "")] = sample.value
    return out


def test_a_value_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative() -> None:
    h = LatencyHistogram("t_seconds", "test", (0.001, 0.01))
    for value in (0.0005, 0.001, 0.005, 0.01, 3.0):
        h.observe(value)
    assert exposed(h) == {
        "_bucket0.001": 2,
        "_bucket0.01": 4,
        "_bucket+Inf": 5,
        "_count": 5,
        "_sum": 0.0005 + 0.001 + 0.005 + 0.01 + 3.0,
    }


@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False)))
def test_every_bucket_counts_the_observations_at_or_below_its_bound(values: list[float]) -> None:
    h = LatencyHistogram("t_seconds", "test", LATENCY_BUCKETS)
    for value in values:
        h.observe(value)
    out = exposed(h)
    for bound in LATENCY_BUCKETS:
        key = next(k for k in out if k.startswith("_bucket") and float(k[7:]) == bound)
        assert out[key] == sum(1 for v in values if v <= bound)
    assert out["_bucket+Inf"] == out["_count"] == len(values)


# ---------------------------------------------------------------- what the daemon counts


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scraped(daemon: Daemon, name: str, **labels: str) -> float:
    with daemon.anon() as http:
        return value(parse(http.get("/metrics").text), name, **labels)


def test_refusals_are_counted_by_the_class_that_asked_and_raw_writes_ask_as_ptrace() -> None:
    stats = Stats()
    stats.refused({"op": "allocate", "request": {"priority": 700}})
    stats.refused({"op": "allocate", "request": {"priority": 750}})  # still the ptrace class
    stats.refused({"op": "allocate", "request": {"priority": 50}})
    stats.refused({"op": "set_debugregs", "tid": 1})
    assert stats.refusals == 4
    assert stats.refusals_by_class == {
        "below-background": 1,
        "background": 0,
        "normal": 0,
        "ptrace": 3,
        "critical": 0,
    }


def test_a_daemon_exports_refusals_by_class_slots_notice_latency_and_its_process(
    daemon: Daemon,
) -> None:
    installed = threading.Event()

    def heard(event: Event) -> None:
        installed.set()

    where = {"scope": {"kind": "cpu", "cpu": 0}, "address": 0x7F00_0000_1000, "access": "write"}
    with (
        Client(daemon.url, admin_key=daemon.admin_key) as admin,
        admin.session("squatter", max_priority="critical", allow_non_evictable=True) as squatter,
        admin.session("debugger", max_priority="ptrace") as debugger,
    ):
        squatter.on("installed", heard)
        # Once both sessions' streams are subscribed, the installed event below reaches one
        # live (not replayed), and that delivery is timed.
        wait_until(lambda: scraped(daemon, "debugregd_sse_subscribers") >= 2, "streams follow")
        squatter.allocate(**where, length=32, priority="critical", evictable=False)  # all four
        assert installed.wait(WAIT_S)
        with pytest.raises(Refused):
            debugger.allocate(**where, length=8, priority="ptrace")
        with pytest.raises(Refused):
            debugger.allocate(**where, length=8, priority="background")
        with daemon.anon() as http:
            samples = parse(http.get("/metrics").text)
    assert value(samples, "debugregd_refusals_total", priority_class="ptrace") == 1
    assert value(samples, "debugregd_refusals_total", priority_class="background") == 1
    assert value(samples, "debugregd_refusals_total", priority_class="critical") == 0
    for cpu in ("0", "1"):
        assert value(samples, "debugregd_register_slots", cpu=cpu, pool="dr") == 4
    assert value(samples, "debugregd_registers_used", cpu="0", pool="dr") == 4
    assert value(samples, "debugregd_notice_delivery_seconds_count") >= 1
    assert value(samples, "debugregd_journal_commit_failures_total") == 0
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_max_fds") >= value(samples, "process_open_fds")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[DaemonApp]:
    daemon = create_app(Settings(state_dir=tmp_path, cpus=2), admin_key="admin")
    async with daemon.router.lifespan_context(daemon):
        yield daemon


async def test_a_failed_commit_is_counted(app: DaemonApp, monkeypatch: pytest.MonkeyPatch) -> None:
    status, session, _ = await call(app, "POST", "/v1/sessions", b'{"name":"s","ttl_s":60}')
    assert status == 201
    rt = runtime(app)
    rt.on_fatal = lambda: None  # instead of SIGTERM to this test process

    def fail(batch: Batch) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(rt.journal, "write", fail)
    status, _, _ = await call(app, "POST", "/v1/allocations", BODY, session["token"])
    assert status == 503
    samples = parse(generate_latest(rt.metrics.registry).decode())
    assert value(samples, "debugregd_journal_commit_failures_total") == 1

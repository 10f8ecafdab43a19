"""Stream upkeep: heartbeats on idle streams, and a subscriber that falls a whole buffer behind
is cut off and resumes from the journal without missing anything (DESIGN section 10)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import Api, task_request
from tests.support.daemon import Daemon


def test_an_idle_stream_gets_heartbeat_comments(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--heartbeat", "0.05")
    headers = {"Authorization": f"Bearer {daemon.admin_key}"}
    with (
        httpx.Client(base_url=daemon.url, headers=headers, timeout=30) as http,
        http.stream("GET", "/v1/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        lines = response.iter_lines()
        assert next(line for line in lines if line) == ": ping"


def slow_disconnects(api: Api) -> float:
    text = api.anon.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "debugregd_sse_slow_disconnects":
            return sum(s.value for s in family.samples)
    raise AssertionError("debugregd_sse_slow_disconnects missing from /metrics")


def test_a_subscriber_a_buffer_behind_is_cut_off_and_resumes_without_a_gap(
    make_daemon: Callable[..., Daemon],
) -> None:
    # With a buffer of one event, one command that causes two (an eviction and the
    # installation that caused it) overflows every stream that sees both.
    api = Api(make_daemon("--cpus", "2", "--sse-buffer", "1"))
    try:
        holder = api.open_session()
        tid = task_request()["scope"]["tid"]
        victim = holder.installed(task_request(tid, priority="background"))
        taker = api.open_session(max_priority="ptrace")
        since = api.event_id()
        with api.events(since=since) as stream:
            record = taker.installed(task_request(tid, length=32, priority="ptrace"))
            received = list(stream)  # ends: the daemon cut this stream off
        assert received == []
        assert slow_disconnects(api) == 1
        with api.events(last_event_id=since) as resumed:
            evicted, installed = resumed.take(2)
        assert (evicted.type, evicted.allocation) == ("evicted", victim["id"])
        assert (installed.type, installed.allocation) == ("installed", record["id"])
        assert installed.id == evicted.id + 1 == since + 2
    finally:
        api.close()

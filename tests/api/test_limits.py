"""Per-session limits (issue 17, point 2): anyone may open a session, so what one session may
hold is bounded: live allocations, waiting allocations and open event streams. Past a limit
the answer is a 429 problem that names the limit and says what to do; the admin key is not a
session and is not limited. Limits decide admission, so they are journaled: a restart under
other limits replays what was decided under the old ones."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from debugreg import LimitReached
from debugreg.errors import from_reply
from tests.api.helpers import Api, assert_problem, cpu_request, open_stream, task_request
from tests.support.daemon import Daemon

LIMITS = (
    "--max-allocations-per-session",
    "3",
    "--max-waiting-per-session",
    "1",
    "--max-streams-per-session",
    "1",
    "--heartbeat",
    "7",
)


def limited(problem: httpx.Response, which: str, maximum: int) -> dict[str, object]:
    body = assert_problem(problem, 429)
    assert body["type"] == "/problems/limit-reached"
    assert (body["limit"], body["maximum"]) == (which, maximum)
    return body


def test_a_session_past_its_live_allocations_gets_a_429_that_says_to_release(
    make_daemon: Callable[..., Daemon],
) -> None:
    api = Api(make_daemon(*LIMITS))
    try:
        session = api.open_session()
        held = [session.installed(task_request()) for _ in range(3)]
        refused = session.allocate(task_request())
        body = limited(refused, "allocations", 3)
        assert isinstance(from_reply(refused.status_code, refused.content), LimitReached)
        assert "release" in str(body["detail"])
        assert "Retry-After" not in session.allocate(task_request()).headers
        session.release(held[0]["id"])
        session.installed(task_request())
        # Another session has limits of its own.
        api.open_session().installed(task_request())
    finally:
        api.close()


def test_a_session_past_its_waiting_allocations_gets_a_429_but_what_fits_is_installed(
    make_daemon: Callable[..., Daemon],
) -> None:
    api = Api(make_daemon(*LIMITS))
    try:
        holder = api.open_session()
        for _ in range(3):
            holder.installed(cpu_request(1))
        api.open_session().installed(cpu_request(1))  # CPU 1 is full
        session = api.open_session()
        waiting = session.allocate(cpu_request(1, wait=True))
        assert waiting.status_code == 201 and waiting.json()["state"] == "waiting"
        body = limited(session.allocate(cpu_request(1, wait=True)), "waiting", 1)
        assert "wait: true" in str(body["detail"])
        assert session.allocate(cpu_request(0, wait=True)).json()["state"] == "installed"
    finally:
        api.close()


def test_a_session_past_its_open_streams_gets_a_429_with_retry_after_and_the_admin_does_not(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(*LIMITS)
    api = Api(daemon)
    try:
        session = api.open_session()
        path = f"/v1/sessions/{session.id}/events"
        with open_stream(session.http, path):
            second = session.http.get(path)
            limited(second, "streams", 1)
            assert second.headers["Retry-After"] == "7"  # the heartbeat: a gone client noticed
            with open_stream(api.admin, path), open_stream(api.admin, path):
                pass
        # Once the first stream is closed (noticed at once: the client hung up), a new one opens.
        deadline = time.monotonic() + 10
        while True:
            with session.http.stream("GET", path) as again:
                if again.status_code == 200:
                    break
                assert again.status_code == 429 and time.monotonic() < deadline
    finally:
        api.close()


def test_acknowledged_allocations_survive_a_restart_under_lower_limits(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon("--max-allocations-per-session", "5")
    api = Api(daemon)
    try:
        session = api.open_session()
        held = {session.installed(task_request())["id"] for _ in range(5)}
        daemon.kill()
        daemon.args = [*daemon.args, "--max-allocations-per-session", "2"]
        for _ in range(2):  # the second start replays the first one's `configure` too
            daemon.start()
            live = {a["id"] for a in api.state()["allocations"]}
            assert live == held
            limited(session.allocate(task_request()), "allocations", 2)
            daemon.kill()
    finally:
        api.close()

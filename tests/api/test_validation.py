"""Malformed requests: every one is a 4xx application/problem+json with a helpful `detail`, never
a 500, and changes nothing (the whole `GET /v1/state`, event id included, is identical after).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.helpers import (
    Api,
    Session,
    assert_problem,
    fresh_tid,
    task_request,
)
from tests.support.daemon import Daemon


@pytest.fixture(scope="module")
def session(api: Api) -> Session:
    return api.open_session("validation")


@pytest.fixture(scope="module")
def tracer(api: Api) -> Session:
    return api.open_session("validation-ptrace", max_priority="ptrace")


def assert_rejected_unchanged(
    api: Api, send: Callable[[], httpx.Response], status: int | None = None
) -> dict[str, Any]:
    before = api.state()
    problem = assert_problem(send(), status)
    assert api.state() == before, "a rejected request changed the daemon's state"
    return problem


def good(**fields: Any) -> dict[str, Any]:
    body = task_request(tid=4242, address="0x7ffd1000")
    body.update(fields)
    return body


def without(field: str) -> dict[str, Any]:
    body = good()
    del body[field]
    return body


def task(**scope: Any) -> dict[str, Any]:
    return good(scope={"kind": "task", **scope})


MALFORMED: dict[str, tuple[Any, int | None]] = {
    # wrong types
    "length is a word": (good(length="eight"), 422),
    "length is fractional": (good(length=8.5), 422),
    "address is fractional": (good(address=1.5), 422),
    "address is a boolean": (good(address=True), 422),
    "address is not a number": (good(address="0xzz"), 422),
    "address is negative": (good(address=-8), 422),
    "address is beyond 64 bits": (good(address=1 << 64), 422),
    "access is a number": (good(access=1), 422),
    "scope is a string": (good(scope="all"), 422),
    "label is a number": (good(label=5), 422),
    "evictable is a word": (good(evictable="sometimes"), 422),
    "tid is a word": (task(tid="init"), 422),
    "body is a list": ([good()], 422),
    "body is a string": ("allocate please", 422),
    "body is null": (None, 422),
    # unknown and missing fields
    "unknown field": (good(colour="red"), 422),
    "unknown scope field": (good(scope={"kind": "cpu", "cpu": 0, "tid": 3}), 422),
    "missing scope": (without("scope"), 422),
    "missing address": (without("address"), 422),
    "missing length": (without("length"), 422),
    "missing access": (without("access"), 422),
    # values out of range
    "length 0": (good(length=0), 422),
    "negative length": (good(length=-8), 422),
    "access read is not allocatable": (good(access="read"), 422),
    "unknown access": (good(access="execute"), 422),
    "unknown on_evict": (good(on_evict="never"), 422),
    "label too long": (good(label="x" * 201), 422),
    # exec breakpoints are one byte on x86_64
    "exec of length 2": (good(access="exec", length=2), 422),
    "exec of length 4": (good(access="exec", length=4), 422),
    "exec of length 8": (good(access="exec", length=8), 422),
    # addresses
    "non-canonical address": (good(address="0x0000900000000000"), 422),
    "first non-canonical address": (good(address="0x0000800000000000"), 422),
    "last non-canonical address": (good(address="0xffff7ffffffffff8"), 422),
    "range crossing TASK_SIZE_MAX": (good(address="0x7fffffffeff8", length=16), 422),
    "range crossing into the hole": (good(address="0x7ffffffffff8", length=16), 422),
    "range past the top of memory": (good(address="0xfffffffffffffff8", length=16), 422),
    # more registers than the pool has
    "64 bytes need 8 registers": (good(address="0x7ffd1000", length=64), 422),
    "40 bytes need 5 registers": (good(address="0x7ffd1000", length=40), 422),
    "unaligned 32 bytes need 7 registers": (good(address="0x7ffd1001", length=32), 422),
    # CPUs
    "unknown cpu": (good(scope={"kind": "cpu", "cpu": 2}), 404),
    "huge cpu": (good(scope={"kind": "cpu", "cpu": 65536}), 422),
    "negative cpu": (good(scope={"kind": "cpu", "cpu": -1}), 422),
    "unknown cpu in a set": (good(scope={"kind": "cpus", "cpus": [0, 7]}), 404),
    "unknown cpu in an affinity": (task(tid=4242, cpus=[3]), 404),
    # scopes
    "task without tid": (task(), 422),
    "tid 0": (task(tid=0), 422),
    "negative tid": (task(tid=-3), 422),
    "tid beyond 32 bits": (task(tid=1 << 31), 422),
    "empty cpu set": (good(scope={"kind": "cpus", "cpus": []}), 422),
    "empty affinity": (task(tid=4242, cpus=[]), 422),
    "cpu set is a word": (good(scope={"kind": "cpus", "cpus": "some"}), 422),
    "cpu scope without cpu": (good(scope={"kind": "cpu"}), 422),
    "unknown scope kind": (good(scope={"kind": "galaxy"}), 422),
    "scope without kind": (good(scope={"tid": 4242}), 422),
    # priorities
    "priority -1": (good(priority=-1), 422),
    "priority 1001": (good(priority=1001), 422),
    "priority urgent": (good(priority="urgent"), 422),
    "priority empty": (good(priority=""), 422),
    "priority null": (good(priority=None), 422),
    "priority fractional": (good(priority=300.5), 422),
}

LAX: dict[str, dict[str, Any]] = {
    "length is a boolean": good(length=True),
    "tid is a boolean": task(tid=True),
    "priority is a boolean": good(priority=True),
    "evictable is a word": good(evictable="yes"),
}


@pytest.mark.parametrize(("body", "status"), MALFORMED.values(), ids=list(MALFORMED))
def test_a_malformed_allocation_is_a_problem_and_changes_nothing(
    api: Api, session: Session, body: Any, status: int | None
) -> None:
    assert_rejected_unchanged(api, lambda: session.http.post("/v1/allocations", json=body), status)


@pytest.mark.parametrize(
    "body",
    list(LAX.values()),
    ids=list(LAX),
)
def test_a_value_of_the_wrong_json_type_is_refused_not_coerced(
    api: Api, session: Session, body: dict[str, Any]
) -> None:
    before = api.state()
    response = session.allocate(body)
    if response.status_code == 201:
        session.release(response.json()["id"])  # leave nothing behind for the other tests
    assert_problem(response, 422)
    assert api.state() == before


def test_a_problem_names_the_field_to_fix(api: Api, session: Session) -> None:
    problem = assert_rejected_unchanged(
        api, lambda: session.http.post("/v1/allocations", json=good(length="eight"))
    )
    assert "length" in problem["detail"]
    problem = assert_rejected_unchanged(
        api, lambda: session.http.post("/v1/allocations", json=good(length=64))
    )
    assert "registers" in problem["detail"]


GARBAGE = {
    "not json": b"{not json",
    "truncated": b'{"scope": {"kind": "task", "tid": 4',
    "trailing comma": b'{"length": 8,}',
    "not utf-8": b"\xff\xfe\x00{",
    "bare word": b"allocate",
    "empty": b"",
    "NaN address": b'{"scope":{"kind":"task","tid":42},"address":NaN,"length":8,"access":"write"}',
}


@pytest.mark.parametrize("content", GARBAGE.values(), ids=list(GARBAGE))
def test_garbage_json_is_a_problem_and_changes_nothing(
    api: Api, session: Session, content: bytes
) -> None:
    def send() -> httpx.Response:
        return session.http.post(
            "/v1/allocations", content=content, headers={"Content-Type": "application/json"}
        )

    status = assert_rejected_unchanged(api, send)["status"]
    assert status in (400, 422)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_is_a_422_that_says_to_send_json(
    api: Api, session: Session, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}

    def send() -> httpx.Response:
        return session.http.post(
            "/v1/allocations", content=json.dumps(good()).encode(), headers=headers
        )

    problem = assert_rejected_unchanged(api, send, 422)
    assert "Content-Type: application/json" in problem["detail"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/x+json"])
def test_a_json_content_type_with_parameters_or_a_suffix_is_accepted(
    session: Session, content_type: str
) -> None:
    body = good(scope={"kind": "task", "tid": fresh_tid()})
    response = session.http.post(
        "/v1/allocations", content=json.dumps(body).encode(), headers={"Content-Type": content_type}
    )
    assert response.status_code == 201, response.text
    session.release(response.json()["id"])


def test_an_empty_body_is_a_422_naming_the_body(api: Api, session: Session) -> None:
    def send() -> httpx.Response:
        return session.http.post(
            "/v1/allocations", content=b"", headers={"Content-Type": "application/json"}
        )

    problem = assert_rejected_unchanged(api, send, 422)
    assert problem["errors"] == [{"field": "body", "message": "Field required", "type": "missing"}]


def test_a_nested_field_is_named_by_its_path(api: Api, session: Session) -> None:
    problem = assert_rejected_unchanged(
        api, lambda: session.http.post("/v1/allocations", json=task(tid="seven")), 422
    )
    assert [e["field"] for e in problem["errors"]] == ["scope.task.tid"]
    assert "scope.task.tid" in problem["detail"]


def oversized() -> dict[str, Any]:
    return good(label="x" * 70_000)  # > 65536 bytes, the default --max-body


def chunks(payload: bytes) -> Iterator[bytes]:
    for start in range(0, len(payload), 8192):
        yield payload[start : start + 8192]


@pytest.mark.parametrize(
    "framing",
    [
        "content-length",
        "chunked",
    ],
)
def test_an_oversized_body_is_a_413_problem_and_changes_nothing(
    api: Api, session: Session, framing: str
) -> None:
    payload = json.dumps(oversized()).encode()
    assert len(payload) > 65_536
    headers = {"Content-Type": "application/json"}

    def send() -> httpx.Response:
        if framing == "chunked":
            return session.http.post("/v1/allocations", content=chunks(payload), headers=headers)
        return session.http.post("/v1/allocations", content=payload, headers=headers)

    assert_rejected_unchanged(api, send, 413)


def test_an_oversized_body_with_content_length_is_refused_with_413(
    api: Api, session: Session
) -> None:
    before = api.state()
    response = session.http.post("/v1/allocations", json=oversized())
    assert response.status_code == 413
    assert api.state() == before


MALFORMED_SESSIONS: dict[str, Any] = {
    "empty name": {"name": ""},
    "name is a number": {"name": 5},
    "missing name": {"ttl_s": 30},
    "ttl 0": {"name": "s", "ttl_s": 0},
    "negative ttl": {"name": "s", "ttl_s": -1},
    "ttl over a day": {"name": "s", "ttl_s": 86_401},
    "ttl is a word": {"name": "s", "ttl_s": "long"},
    "unknown field": {"name": "s", "colour": "red"},
    "max_priority -1": {"name": "s", "max_priority": -1},
    "max_priority 1001": {"name": "s", "max_priority": 1001},
    "max_priority urgent": {"name": "s", "max_priority": "urgent"},
    "grant is a word": {"name": "s", "allow_kernel": "please"},
    "body is a list": [{"name": "s"}],
}


@pytest.mark.parametrize("body", MALFORMED_SESSIONS.values(), ids=list(MALFORMED_SESSIONS))
def test_a_malformed_session_request_is_a_problem_and_opens_nothing(api: Api, body: Any) -> None:
    for opener in (api.anon, api.admin):

        def send(o: httpx.Client = opener) -> httpx.Response:
            return o.post("/v1/sessions", json=body)

        assert_rejected_unchanged(api, send)


ADMIN_MALFORMED: dict[str, tuple[str, Any]] = {
    "evict reason is a number": ("/v1/allocations/{id}/evict", {"reason": 5}),
    "evict unknown field": ("/v1/allocations/{id}/evict", {"why": "x"}),
    "evictions unknown cpu": ("/v1/evictions", {"cpu": 9, "reason": "x"}),
    "evictions tid 0": ("/v1/evictions", {"tid": 0, "reason": "x"}),
    "evictions priority urgent": ("/v1/evictions", {"below_priority": "urgent"}),
    "evictions priority 1001": ("/v1/evictions", {"below_priority": 1001}),
    "evictions unknown field": ("/v1/evictions", {"everything": True}),
    "sim access rw is not an access": (
        "/v1/sim/accesses",
        {"cpu": 0, "address": 1, "access": "rw"},
    ),
    "sim unknown cpu": ("/v1/sim/accesses", {"cpu": 9, "address": 1, "access": "write"}),
    "sim length 0": ("/v1/sim/accesses", {"cpu": 0, "address": 1, "length": 0, "access": "write"}),
    "sim missing address": ("/v1/sim/accesses", {"cpu": 0, "access": "write"}),
}


@pytest.mark.parametrize(("path", "body"), ADMIN_MALFORMED.values(), ids=list(ADMIN_MALFORMED))
def test_malformed_admin_actions_are_problems_and_change_nothing(
    api: Api, session: Session, path: str, body: Any
) -> None:
    record = session.installed(task_request())
    target = path.format(id=record["id"])
    assert_rejected_unchanged(api, lambda: api.admin.post(target, json=body))
    assert session.get(record["id"])["state"] == "installed"


def dr7(n: int, rw: int, length_bits: int) -> int:
    """DR7 enabling DRn locally with the given R/W and LEN fields."""
    return (1 << (2 * n)) | (rw << (16 + 4 * n)) | (length_bits << (18 + 4 * n))


BAD_DEBUGREGS: dict[str, Any] = {
    "I/O breakpoint (R/W=10)": {"dr0": "0x7ffd1000", "dr7": dr7(0, 0b10, 0b00)},
    "misaligned DR address": {"dr1": "0x7ffd1001", "dr7": dr7(1, 0b01, 0b11)},
    "misaligned 8-byte watch": {"dr2": "0x7ffd1004", "dr7": dr7(2, 0b11, 0b10)},
    "exec with LEN other than 00": {"dr0": "0x401000", "dr7": dr7(0, 0b00, 0b01)},
    "kernel address": {"dr3": hex(0xFFFFFFFF81000000), "dr7": dr7(3, 0b01, 0b00)},
    "dr7 beyond 32 bits": {"dr7": 1 << 32},
    "dr7 is a word": {"dr7": "enable"},
    "unknown register": {"dr4": 0, "dr7": 0},
    "negative address": {"dr0": -1, "dr7": dr7(0, 0b01, 0b00)},
    "good and bad together": {
        "dr0": "0x7ffd1000",
        "dr1": "0x7ffd1003",
        "dr7": dr7(0, 0b01, 0b11) | dr7(1, 0b01, 0b11),
    },
}


@pytest.mark.parametrize("body", BAD_DEBUGREGS.values(), ids=list(BAD_DEBUGREGS))
def test_a_bad_raw_debug_register_write_is_a_problem_and_changes_nothing(
    api: Api, tracer: Session, body: Any
) -> None:
    tid = fresh_tid()
    first = {"dr0": "0x7ffd2000", "dr7": dr7(0, 0b01, 0b11)}
    assert tracer.http.put(f"/v1/tasks/{tid}/debugregs", json=first).status_code == 200
    before = tracer.http.get(f"/v1/tasks/{tid}/debugregs").json()
    assert_rejected_unchanged(
        api, lambda: tracer.http.put(f"/v1/tasks/{tid}/debugregs", json=body), 422
    )
    assert tracer.http.get(f"/v1/tasks/{tid}/debugregs").json() == before


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "0x10", "7 8"])
def test_a_bad_last_event_id_is_a_problem_before_the_stream_starts(api: Api, value: str) -> None:
    assert_rejected_unchanged(
        api, lambda: api.admin.get("/v1/events", headers={"Last-Event-ID": value}), 400
    )


# Digits that `str.isdigit` accepts and `int` refuses or chokes on: a superscript two, an
# Arabic-Indic three, fullwidth digits, 5,000 ASCII digits, one past SQLite's largest integer.
NOT_ASCII_NUMBERS = {
    "superscript": b"\xb2",
    "arabic-indic": "\u0663".encode(),
    "fullwidth": "\uff11\uff12".encode(),
    "5000 digits": b"7" * 5000,
    "20 digits": b"9" * 20,
    "past 2**63-1": str(2**63).encode(),
}


def tracebacks(daemon: Daemon) -> int:
    return daemon.log().count("Traceback")


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS.values(), ids=NOT_ASCII_NUMBERS.keys())
def test_a_dashboard_cookie_whose_time_is_not_ascii_digits_is_a_400_on_every_checked_route(
    api: Api, value: bytes
) -> None:
    before = tracebacks(api.daemon)
    cookie = {"Cookie": b"debugregd_admin=" + value + b".abc"}
    body = {"name": "cookie", "ttl_s": 60}
    for send in (
        lambda: api.anon.post("/v1/sessions", json=body, headers=cookie),
        lambda: api.anon.get("/v1/allocations", headers=cookie),
        lambda: api.anon.get("/v1/auth/me", headers=cookie),
    ):
        problem = assert_rejected_unchanged(api, send, 400)
        assert "debugregd_admin" in problem["detail"]
    assert tracebacks(api.daemon) == before


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS.values(), ids=NOT_ASCII_NUMBERS.keys())
def test_a_last_event_id_that_is_not_ascii_digits_is_a_400_on_both_streams(
    api: Api, session: Session, value: bytes
) -> None:
    before = tracebacks(api.daemon)
    header = {"Last-Event-ID": value}
    for send in (
        lambda: api.admin.get("/v1/events", headers=header),
        lambda: session.http.get(f"/v1/sessions/{session.id}/events", headers=header),
    ):
        problem = assert_rejected_unchanged(api, send, 400)
        assert "Last-Event-ID" in problem["detail"]
    assert tracebacks(api.daemon) == before


def test_a_since_beyond_the_largest_event_id_is_a_problem(api: Api) -> None:
    assert_rejected_unchanged(api, lambda: api.admin.get(f"/v1/events?since={2**63}"), 422)


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_a_bad_since_is_a_problem_before_the_stream_starts(api: Api, value: str) -> None:
    assert_rejected_unchanged(api, lambda: api.admin.get(f"/v1/events?since={value}"), 422)


def test_acting_on_an_unknown_session_is_404(api: Api) -> None:
    assert_rejected_unchanged(api, lambda: api.admin.post("/v1/sessions/s999999/keepalive"), 404)
    assert_rejected_unchanged(api, lambda: api.admin.delete("/v1/sessions/s999999"), 404)


def test_misaligned_exec_is_refused_on_arm64(make_daemon: Callable[..., Daemon]) -> None:
    """On x86_64 an exec breakpoint is one byte, so it is never misaligned; arm64 needs four
    bytes, four-aligned."""
    handle = Api(make_daemon("--profile", "arm64"))
    try:
        session = handle.open_session()
        tid = fresh_tid()
        for address, length in (("0x400002", 4), ("0x400001", 4), ("0x400000", 2)):
            body = task_request(tid, address=address, length=length, access="exec")

            def send(b: dict[str, Any] = body) -> httpx.Response:
                return session.allocate(b)

            assert_rejected_unchanged(handle, send, 422)
        body = task_request(tid, address="0x400004", length=4, access="exec")
        assert session.installed(body)["registers"][0]["pool"] == "brp"
    finally:
        handle.close()


# --------------------------------------------------------------------------- fuzzing

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["scope", "address", "length", "access", "priority", "evictable", "on_evict", "wait"]


def check_any_answer(api: Api, session: Session, body: Any) -> None:
    """Never a 5xx: a 4xx is a problem that changed nothing; a 201 is a real allocation."""
    before = api.state()
    response = session.http.post("/v1/allocations", json=body)
    assert response.status_code < 500, response.text
    if response.status_code == 201:
        session.release(response.json()["id"])
        return
    assert_problem(response)
    assert api.state() == before


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=JSON)
def test_any_json_body_is_never_a_server_error(api: Api, session: Session, body: Any) -> None:
    check_any_answer(api, session, body)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_a_valid_request_with_one_field_replaced_by_junk_is_never_a_server_error(
    api: Api, session: Session, field: str, value: Any
) -> None:
    check_any_answer(api, session, {**task_request(), field: value})


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=st.binary(max_size=64))
def test_random_bytes_are_never_a_server_error(api: Api, session: Session, content: bytes) -> None:
    before = api.state()
    response = session.http.post(
        "/v1/allocations", content=content, headers={"Content-Type": "application/json"}
    )
    assert_problem(response)
    assert api.state() == before

"""The API held to its document (issue 17, point 8), rule by rule: the bounds the document
states are the ones the daemon applies, on every route alike, and the answers the fuzzer once
found undocumented are documented (tests/api/test_schemathesis.py runs the fuzzer itself)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.helpers import PROBLEM_JSON, Api, Session, assert_problem, task_request

TID_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def document(api: Api) -> dict[str, Any]:
    answer: dict[str, Any] = api.anon.get("/openapi.json").json()
    return answer


@pytest.fixture
def session(api: Api) -> Session:
    return api.open_session("document")


@pytest.fixture
def ptrace(api: Api) -> Session:
    return api.open_session("document", max_priority="ptrace")


def tid_uses(api: Api, session: Session, tid: Any) -> list[httpx.Response]:
    """Every route that takes a thread id, given `tid` (the task's exit last: it ends what the
    others made)."""
    raw = {"dr0": "0x1000", "dr7": 0x10001}
    return [
        session.allocate(task_request(tid)),
        session.http.get("/v1/allocations", params={"tid": tid}),
        session.http.get(f"/v1/tasks/{tid}/debugregs"),
        session.http.put(f"/v1/tasks/{tid}/debugregs", json=raw),
        api.admin.get(f"/v1/tasks/{tid}"),
        api.admin.post("/v1/evictions", json={"tid": tid, "reason": "document"}),
        api.admin.post(
            "/v1/sim/accesses", json={"cpu": 0, "tid": tid, "address": 1, "access": "read"}
        ),
        api.admin.post(f"/v1/sim/tasks/{tid}/exit"),
    ]


@pytest.mark.parametrize("tid", [0, 2**31, 10**19, -1], ids=["0", "2^31", "20 digits", "-1"])
def test_a_thread_id_outside_1_to_2_31_minus_1_is_refused_on_every_route(
    api: Api, ptrace: Session, tid: int
) -> None:
    for answer in tid_uses(api, ptrace, tid):
        assert_problem(answer, 422)


def test_the_largest_thread_id_is_accepted_on_every_route(api: Api, ptrace: Session) -> None:
    for answer in tid_uses(api, ptrace, TID_MAX):
        assert answer.status_code < 300, (answer.request.url, answer.text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "s", "ttl_s": 5e-324}, "ttl_s"),
        ({"name": "s", "ttl_s": 0.5}, "ttl_s"),
        ({"name": "s", "max_priority": 1001}, "max_priority"),
        ({"name": "s", "max_priority": -1}, "max_priority"),
    ],
)
def test_a_session_outside_the_documented_bounds_is_refused(
    api: Api, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(api.admin.post("/v1/sessions", json=body), 422)
    assert problem["errors"][0]["field"].startswith(field)


def test_the_document_states_the_bounds(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    ttl = schemas["SessionRequest"]["properties"]["ttl_s"]
    assert (ttl["minimum"], ttl["maximum"]) == (1, 86_400)
    tid = schemas["TaskScope"]["properties"]["tid"]
    assert (tid["minimum"], tid["maximum"]) == (1, TID_MAX)
    cpus = schemas["CpusScope"]["properties"]["cpus"]["anyOf"][0]
    assert cpus["minItems"] == 1
    for path in ("/v1/tasks/{tid}", "/v1/tasks/{tid}/debugregs"):
        (param,) = document["paths"][path]["get"]["parameters"]
        assert (param["schema"]["minimum"], param["schema"]["maximum"]) == (1, TID_MAX)


def test_an_empty_cpu_set_is_refused(session: Session) -> None:
    body = task_request(scope={"kind": "cpus", "cpus": []})
    assert_problem(session.allocate(body), 422)


def test_an_integral_json_number_is_an_integer(session: Session) -> None:
    # JSON Schema counts 8.0 an integer; so does the daemon (never "8" or true).
    record = session.installed(task_request(length=8.0, scope={"kind": "task", "tid": 4242.0}))
    assert (record["length"], record["scope"]["tid"]) == (8, 4242)
    assert_problem(session.allocate(task_request(length=8.5)), 422)


def test_a_405_allows_every_method_of_the_path(api: Api) -> None:
    for path, allowed in (
        ("/v1/allocations", {"GET", "POST"}),
        ("/v1/sessions/s1", {"GET", "DELETE"}),
        ("/v1/tasks/1/debugregs", {"GET", "PUT"}),
    ):
        answer = api.admin.request("PATCH", path)
        assert_problem(answer, 405)
        assert set(answer.headers["Allow"].replace(" ", "").split(",")) >= allowed


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("get", "/v1/sessions/{session_id}", (401, 403, 404)),
        ("post", "/v1/auth/login", (400, 401, 422)),
        ("post", "/v1/allocations", (400, 401, 403, 404, 408, 409, 413, 422, 429, 431, 503)),
        ("get", "/v1/sessions/{session_id}/events", (401, 403, 404, 429)),
        ("get", "/healthz", (503,)),
    ],
)
def test_every_error_is_documented_as_a_problem(
    document: dict[str, Any], method: str, path: str, statuses: tuple[int, ...]
) -> None:
    responses = document["paths"][path][method]["responses"]
    for status in statuses:
        content = responses[str(status)]["content"]
        assert content == {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for status, response in responses.items():
        if int(status) >= 400:
            assert list(response["content"]) == [PROBLEM_JSON], (path, status)


def test_a_session_read_by_another_session_or_unknown_is_403_or_404(
    api: Api, session: Session
) -> None:
    other = api.open_session("other")
    assert_problem(session.http.get(f"/v1/sessions/{other.id}"), 403)
    assert_problem(api.admin.get("/v1/sessions/s999999"), 404)


def test_the_admin_key_allocating_is_told_to_open_a_session(api: Api) -> None:
    problem = assert_problem(api.admin.post("/v1/allocations", json=task_request()), 403)
    assert "POST /v1/sessions" in problem["detail"]

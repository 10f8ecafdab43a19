"""`Idempotency-Key` on POST /v1/allocations and POST /v1/sessions: a retried request returns the
first answer and allocates (or opens) nothing twice."""

from __future__ import annotations

import uuid
from typing import Any

from tests.api.helpers import LONG_TTL_S, Api, assert_problem, task_request


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def without_token(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "token"}


def test_a_retried_allocation_returns_the_first_answer_and_allocates_once(api: Api) -> None:
    session = api.open_session()
    headers = key()
    body = task_request()
    first = session.allocate(body, **headers)
    assert first.status_code == 201, first.text
    since = api.event_id()
    retries = [session.allocate(body, **headers) for _ in range(3)]
    for retry in retries:
        assert retry.status_code == 201
        assert retry.json() == first.json()
    listed = session.http.get("/v1/allocations").json()["allocations"]
    assert [r["id"] for r in listed] == [first.json()["id"]]
    assert api.event_id() == since  # the retries changed nothing


def test_a_retry_after_the_allocation_changed_still_returns_the_first_answer(api: Api) -> None:
    session = api.open_session()
    headers = key()
    body = task_request()
    first = session.allocate(body, **headers).json()
    session.release(first["id"])
    retry = session.allocate(body, **headers)
    assert retry.status_code == 201
    assert retry.json() == first
    assert session.http.get("/v1/allocations").json()["allocations"] == []


def test_distinct_keys_allocate_separately(api: Api) -> None:
    session = api.open_session()
    body = task_request()
    one = session.allocate(body, **key()).json()
    two = session.allocate(body, **key()).json()
    assert one["id"] != two["id"]
    assert len(session.http.get("/v1/allocations").json()["allocations"]) == 2


def test_a_key_belongs_to_its_session(api: Api) -> None:
    headers = key()
    first = api.open_session()
    second = api.open_session()
    a = first.allocate(task_request(), **headers).json()
    b = second.allocate(task_request(), **headers).json()
    assert a["id"] != b["id"]
    assert b["session"] == second.id


def test_a_key_reused_with_a_different_body_is_refused(api: Api) -> None:
    session = api.open_session()
    headers = key()
    first = session.allocate(task_request(), **headers)
    assert first.status_code == 201
    before = api.state()
    problem = assert_problem(session.allocate(task_request(), **headers), 409)
    assert "Idempotency-Key" in problem["detail"]
    assert api.state() == before


def test_a_refused_request_is_not_remembered(api: Api) -> None:
    session = api.open_session()
    headers = key()
    refused = session.allocate(task_request(priority="ptrace"), **headers)
    assert_problem(refused, 403)
    assert session.http.get("/v1/allocations").json()["allocations"] == []


def test_a_retried_session_open_returns_the_same_session_with_a_new_token(api: Api) -> None:
    headers = key()
    body = {"name": "retried", "ttl_s": LONG_TTL_S}
    opener = api.open_session("opener")  # a session token is a credential to scope keys by
    before = len(api.state()["sessions"])
    first = opener.http.post("/v1/sessions", json=body, headers=headers)
    assert first.status_code == 201, first.text
    retry = opener.http.post("/v1/sessions", json=body, headers=headers)
    assert retry.status_code == 201, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    # The journal keeps no token to send again: the same session, with a new token that
    # revokes the first one (whose answer may never have arrived).
    assert without_token(retry.json()) == without_token(first.json())
    assert retry.json()["token"] != first.json()["token"]
    sessions = api.state()["sessions"]
    assert len(sessions) == before + 1
    assert [s["id"] for s in sessions if s["name"] == "retried"] == [first.json()["id"]]
    assert api.client(retry.json()["token"]).get("/v1/allocations").status_code == 200
    assert_problem(api.client(first.json()["token"]).get("/v1/allocations"), 401)


def test_a_retried_granted_session_open_is_also_idempotent(api: Api) -> None:
    headers = key()
    body = {"name": "granted-retry", "ttl_s": LONG_TTL_S, "max_priority": "ptrace"}
    first = api.admin.post("/v1/sessions", json=body, headers=headers).json()
    retry = api.admin.post("/v1/sessions", json=body, headers=headers).json()
    assert without_token(retry) == without_token(first)
    assert [s["id"] for s in api.state()["sessions"] if s["name"] == "granted-retry"] == [
        first["id"]
    ]


def test_a_second_anonymous_caller_with_the_same_key_and_body_never_gets_the_first_token(
    api: Api,
) -> None:
    # Callers without a credential cannot be told apart (on loopback they are all 127.0.0.1),
    # so their keys are not honoured: each open is a session of its own.
    headers = key()
    body = {"name": "anonymous-retry", "ttl_s": LONG_TTL_S}
    first = api.anon.post("/v1/sessions", json=body, headers=headers)
    second = api.client().post("/v1/sessions", json=body, headers=headers)
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["token"] != first.json()["token"]
    for opened in (first, second):
        token = opened.json()["token"]
        assert api.client(token).get("/v1/allocations").status_code == 200


def test_a_retried_open_of_a_session_since_closed_is_a_409(api: Api) -> None:
    headers = key()
    body = {"name": "closed-retry", "ttl_s": LONG_TTL_S}
    first = api.admin.post("/v1/sessions", json=body, headers=headers).json()
    assert api.admin.delete(f"/v1/sessions/{first['id']}").status_code == 204
    before = api.state()
    problem = assert_problem(api.admin.post("/v1/sessions", json=body, headers=headers), 409)
    assert first["id"] in problem["detail"]
    assert api.state() == before


def test_an_overlong_key_is_refused(api: Api) -> None:
    session = api.open_session()
    before = api.state()
    response = session.allocate(task_request(), **{"Idempotency-Key": "k" * 201})
    assert_problem(response, 422)
    assert api.state() == before

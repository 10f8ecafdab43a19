"""openapi.json tells the truth (issue 17, point 8): schemathesis runs every one of its checks
against a live daemon (sim backend), once with the admin key and once with a session token,
and must find nothing: every status documented, every body of its documented schema and
media type, schema-valid requests accepted, schema-invalid ones refused with a 4xx.

Bounded so that `make test` stays short: a fixed number of examples per operation, a fixed
seed (the same cases every run: a failure reproduces), one worker, a deadline on each request.

What schemathesis does not run, and why:
- the two event streams (`GET /v1/events`, `GET /v1/sessions/{id}/events`): a 200 is a stream
  that never ends, which schemathesis would wait on until its request timeout. Their error
  answers are held to the document below (`test_the_event_streams_errors_are_documented`).
- the `use_after_free` check: `DELETE /v1/allocations/{id}` releases an allocation, and its
  record stays readable, in state `released`, for a bounded history (DESIGN section 5; a second
  `DELETE` answers the same, idempotently), where the check expects a 404. Schemathesis 4.32
  applies a check's per-operation setting in its fuzzing phases but not in its stateful one,
  which is where this check runs, so it is left out of the run; its one other subject, a closed
  session, is held to a 404 below (`test_a_closed_session_is_not_found`).
- nothing else. Where validity depends on this host or on meaning JSON Schema cannot say, the
  daemon answers 422 to a schema-valid request, and `positive_data_acceptance` accepts it there
  (CONFIG): an allocation (alignment, how many registers a range needs against this profile's
  pools, canonical and user or kernel space, a reservation for a task only) and a raw DR7 write
  (its enable, R/W and LEN fields, exec breakpoints of one byte, user-space addresses).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import PROBLEM_JSON, media_type
from tests.support.daemon import Daemon

EXAMPLES = 60  # per operation and phase
SEED = 17
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
CONFIG = "\n".join(
    [
        f"""
[[operations]]
include-path = "{path}"
include-method = "{method}"
checks.positive_data_acceptance.expected-statuses = {json.dumps(ACCEPTED)}
"""
        for path, method in (("/v1/allocations", "POST"), ("/v1/tasks/{tid}/debugregs", "PUT"))
    ]
)
STREAMS = r"/events$"


def schemathesis(daemon: Daemon, token: str, tmp_path: Path, name: str) -> None:
    config = tmp_path / f"{name}.toml"
    config.write_text(CONFIG)
    st = Path(sys.executable).with_name("st")
    command = [
        str(st),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{daemon.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--exclude-path-regex",
        STREAMS,
        "--exclude-checks",
        "use_after_free",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, f"schemathesis ({name}) found:\n{done.stdout[-20000:]}"


@pytest.mark.timeout(900)
def test_schemathesis_finds_nothing_with_the_admin_key_or_a_session_token(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    schemathesis(daemon, daemon.admin_key, tmp_path, "admin")
    opened = httpx.post(f"{daemon.url}/v1/sessions", json={"name": "st", "ttl_s": 86_400})
    assert opened.status_code == 201, opened.text
    schemathesis(daemon, opened.json()["token"], tmp_path, "session")


def documented(document: dict[str, Any], path: str, status: int) -> dict[str, Any]:
    responses: dict[str, Any] = document["paths"][path]["get"]["responses"]
    assert str(status) in responses, f"GET {path} answers {status}, undocumented"
    return responses[str(status)]


def test_the_event_streams_errors_are_documented(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--max-streams-per-session", "1")
    with daemon.admin() as admin, daemon.anon() as anon:
        document = admin.get("/openapi.json").json()
        opened = anon.post("/v1/sessions", json={"name": "s", "ttl_s": 600}).json()
        mine = f"/v1/sessions/{opened['id']}/events"
        own = {"Authorization": f"Bearer {opened['token']}"}
        answers = [
            ("/v1/events", anon.get("/v1/events"), 401),
            ("/v1/events", admin.get("/v1/events", params={"since": -1}), 422),
            ("/v1/events", admin.get("/v1/events", headers={"Last-Event-ID": "x"}), 400),
            ("/v1/sessions/{session_id}/events", anon.get(mine), 401),
            ("/v1/sessions/{session_id}/events", admin.get("/v1/sessions/s999/events"), 404),
            (
                "/v1/sessions/{session_id}/events",
                anon.get("/v1/sessions/s999/events", headers=own),
                403,
            ),
        ]
        with anon.stream("GET", mine, headers=own) as first:
            assert first.status_code == 200
            answers.append(("/v1/sessions/{session_id}/events", anon.get(mine, headers=own), 429))
        assert admin.delete(f"/v1/sessions/{opened['id']}").status_code == 204
        # A closed session's stream is not found: it would have nothing ever to say.
        answers.append(("/v1/sessions/{session_id}/events", admin.get(mine), 404))
    for path, answer, status in answers:
        assert answer.status_code == status, (path, answer.text)
        assert media_type(answer) == PROBLEM_JSON
        schema = documented(document, path, status)["content"][PROBLEM_JSON]["schema"]
        assert schema == {"$ref": "#/components/schemas/Problem"}


def test_a_closed_session_is_not_found(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    with daemon.admin() as admin:
        opened = admin.post("/v1/sessions", json={"name": "s", "ttl_s": 600}).json()
        assert admin.get(f"/v1/sessions/{opened['id']}").status_code == 200
        assert admin.delete(f"/v1/sessions/{opened['id']}").status_code == 204
        for answer in (
            admin.get(f"/v1/sessions/{opened['id']}"),
            admin.post(f"/v1/sessions/{opened['id']}/keepalive"),
            admin.delete(f"/v1/sessions/{opened['id']}"),
        ):
            assert answer.status_code == 404, answer.text
            assert media_type(answer) == PROBLEM_JSON

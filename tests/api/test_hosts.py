"""The Host allowlist against DNS rebinding: a daemon answers only the names that reach it
honestly (loopback names, its bound address, `--allowed-hosts`), except on /healthz and /metrics,
which probes and scrapers address by IP."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.api.helpers import Api, assert_problem, client, task_request
from tests.support.daemon import Daemon

REBOUND = ["attacker.example", "attacker.example:8765", "127.0.0.1.attacker.example", "localhost:x"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1", "127.0.0.1", "[::1]", "[::1]:9"])
def test_loopback_names_with_any_port_are_answered(api: Api, host: str) -> None:
    response = api.anon.get("/v1/host", headers={"Host": host})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", REBOUND)
def test_a_rebound_name_is_refused_and_changes_nothing(api: Api, host: str) -> None:
    before = api.state()
    headers = {"Host": host}
    assert_problem(api.anon.get("/v1/host", headers=headers), 400)
    opened = api.anon.post("/v1/sessions", json={"name": "rebound"}, headers=headers)
    problem = assert_problem(opened, 400)
    assert problem["type"] == "/problems/host-not-allowed"
    assert "--allowed-hosts" in problem["detail"]
    session = api.open_session()
    refused = session.http.post("/v1/allocations", json=task_request(), headers=headers)
    assert_problem(refused, 400)
    assert_problem(api.admin.get("/v1/state", headers=headers), 400)
    assert_problem(api.anon.get("/", headers=headers), 400)
    after = api.state()
    assert [s["id"] for s in after["sessions"]] == [
        *(s["id"] for s in before["sessions"]),
        session.id,
    ]
    assert after["allocations"] == before["allocations"]


def test_probes_and_scrapers_may_use_any_name(api: Api) -> None:
    headers = {"Host": "10.1.2.3:8765"}
    assert api.anon.get("/healthz", headers=headers).status_code == 200
    assert api.anon.get("/metrics", headers=headers).status_code == 200


def test_allowed_hosts_adds_names(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--allowed-hosts", "debugregd.internal, fd00::7")
    with client(daemon) as http:
        for host in ("debugregd.internal:8765", "[fd00::7]:1", "localhost"):
            assert http.get("/v1/host", headers={"Host": host}).status_code == 200, host
        assert_problem(http.get("/v1/host", headers={"Host": "other.internal"}), 400)


def test_a_star_allows_any_name(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon("--allowed-hosts", "*")
    with client(daemon) as http:
        assert http.get("/v1/host", headers={"Host": "anything.example"}).status_code == 200

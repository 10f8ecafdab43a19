"""Durability and the process model (DESIGN section 11): acknowledged means committed, a SIGKILL
loses nothing acknowledged, SIGTERM shuts down cleanly, and one process owns a state directory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.api.helpers import (
    Api,
    Event,
    client,
    cpu_request,
    open_stream,
    task_request,
)
from tests.support.daemon import Daemon, free_port

ACKNOWLEDGED_BEFORE_KILL = 60


class Load:
    """A client allocating in a loop (releasing every third one) until the daemon dies; it keeps
    every answer it got, and the one request that got none."""

    def __init__(self, daemon: Daemon, token: str) -> None:
        self.http = client(daemon, token)
        self.records: dict[str, dict[str, Any]] = {}  # id -> the last acknowledged record
        self.keys: dict[str, str] = {}  # Idempotency-Key -> allocation id
        self.bodies: dict[str, dict[str, Any]] = {}
        self.in_flight: tuple[str, str] | None = None  # ("allocate", key) or ("release", id)
        self.errors: list[BaseException] = []
        self.enough = threading.Event()
        self.thread = threading.Thread(target=self.run, name="load", daemon=True)

    def run(self) -> None:
        try:
            for i in range(1, 100_000):
                key = f"load-{i}"
                body = self.bodies[key] = task_request(label=key)
                self.in_flight = ("allocate", key)
                response = self.http.post(
                    "/v1/allocations", json=body, headers={"Idempotency-Key": key}
                )
                assert response.status_code == 201, response.text
                record = response.json()
                self.records[record["id"]] = record
                self.keys[key] = record["id"]
                if i % 3 == 0:
                    victim = self.keys[f"load-{i - 1}"]
                    self.in_flight = ("release", victim)
                    response = self.http.delete(f"/v1/allocations/{victim}")
                    assert response.status_code == 200, response.text
                    self.records[victim] = response.json()
                self.in_flight = None
                if len(self.keys) >= ACKNOWLEDGED_BEFORE_KILL:
                    self.enough.set()
        except httpx.TransportError:
            pass  # the daemon was killed under us
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.enough.set()
            self.http.close()


class Watcher:
    """The admin stream read from the start until the connection dies."""

    def __init__(self, daemon: Daemon) -> None:
        self.http = client(daemon, daemon.admin_key)
        self.events: list[Event] = []
        self.errors: list[BaseException] = []
        self.open = threading.Event()
        self.thread = threading.Thread(target=self.run, name="watcher", daemon=True)

    def run(self) -> None:
        try:
            with open_stream(self.http, "/v1/events", since=0) as stream:
                self.open.set()
                for event in stream:
                    self.events.append(event)
        except httpx.TransportError:
            pass
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.open.set()
            self.http.close()


def test_sigkill_while_clients_allocate_loses_no_acknowledged_allocation_or_event(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    api = Api(daemon)
    try:
        session = api.open_session("load")
        watcher = Watcher(daemon)
        watcher.thread.start()
        assert watcher.open.wait(30)
        load = Load(daemon, session.token)
        load.thread.start()
        assert load.enough.wait(60)
        daemon.kill()
        load.thread.join(30)
        watcher.thread.join(30)
        assert not load.thread.is_alive() and not watcher.thread.is_alive()
        assert load.errors == [] and watcher.errors == []
        assert len(load.keys) >= ACKNOWLEDGED_BEFORE_KILL

        daemon.start()

        # Every acknowledged allocation, with its state, registers and generation.
        maybe_released = (
            load.in_flight[1] if load.in_flight and load.in_flight[0] == "release" else None
        )
        for allocation_id, acknowledged in load.records.items():
            now = api.record(allocation_id)
            if allocation_id == maybe_released and now["state"] == "released":
                continue  # released, but the answer was lost with the process
            assert now == acknowledged

        # The request that got no answer is retried with its key and allocates exactly once.
        if load.in_flight and load.in_flight[0] == "allocate":
            key = load.in_flight[1]
            retry = session.allocate(load.bodies[key], **{"Idempotency-Key": key})
            assert retry.status_code == 201, retry.text
            load.keys[key] = retry.json()["id"]
        labels: dict[str, list[str]] = {}
        for state in ("installed", "released"):
            listed = session.http.get("/v1/allocations", params={"state": state})
            assert listed.status_code == 200, listed.text  # the token survived the restart
            for record in listed.json()["allocations"]:
                labels.setdefault(record["label"], []).append(record["id"])
        for key, allocation_id in load.keys.items():
            assert labels[key] == [allocation_id], f"{key} allocated {labels[key]}"

        # Every event the stream delivered is in the journal, unchanged, in one unbroken run.
        last = api.event_id()
        journal = api.replay(0, last)
        assert [e.id for e in journal] == list(range(1, last + 1))
        by_id = {e.id: e for e in journal}
        assert watcher.events, "the watcher saw no event before the kill"
        for seen in watcher.events:
            assert by_id[seen.id] == seen
        announced = {(e.type, e.allocation) for e in journal}
        for allocation_id, record in load.records.items():
            assert ("installed", allocation_id) in announced
            if record["state"] == "released":
                assert ("released", allocation_id) in announced

        # A stream resumed where the watcher stopped misses nothing.
        resume_from = watcher.events[-1].id
        marker = session.installed(task_request())
        with api.events(last_event_id=resume_from) as stream:
            resumed = stream.until(lambda e: e.allocation == marker["id"])
        assert [e.id for e in resumed] == list(range(resume_from + 1, last + 2))
        assert resumed[:-1] == journal[resume_from:]
    finally:
        api.close()


def wal(daemon: Daemon) -> Path:
    return daemon.state_dir / "journal.sqlite3-wal"


def without_lease_times(state: dict[str, Any]) -> dict[str, Any]:
    """A restart gives every lease a grace period, so only `expires_at` may differ."""
    sessions = [{k: v for k, v in s.items() if k != "expires_at"} for s in state["sessions"]]
    return {**state, "sessions": sessions}


def test_sigterm_ends_open_streams_closes_the_journal_and_a_restart_finds_everything(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    api = Api(daemon)
    try:
        holder = api.open_session()
        patient = api.open_session()
        held = [holder.installed(cpu_request(0)) for _ in range(4)]
        task = holder.installed(task_request(scope={"kind": "task", "tid": 77, "cpus": [1]}))
        waiting = patient.allocate(cpu_request(0, wait=True)).json()
        assert waiting["state"] == "waiting"
        before = api.state()

        with api.events(since=0) as stream:
            first = next(stream)  # the stream is open and being served
            daemon.stop()
            rest = list(stream)  # it ends: no read timeout, no broken connection
        assert [e.id for e in [first, *rest]] == list(range(1, before["event_id"] + 1))
        log = daemon.log()
        assert "Application shutdown complete" in log
        assert "timeout graceful shutdown exceeded" not in log
        assert not wal(daemon).exists() or wal(daemon).stat().st_size == 0, "journal not closed"

        daemon.start()
        after = api.state()
        # What changed: the leases, and each armed allocation says that its hits while the
        # daemon was down are unknown (DESIGN section 16).
        restarted = api.replay(before["event_id"], after["event_id"])
        assert {e.type for e in restarted} == {"hit"} and all(e.data["unknown"] for e in restarted)
        assert sorted(e.allocation or "" for e in restarted) == sorted(
            a["id"] for a in before["allocations"] if a["state"] == "installed"
        )
        assert without_lease_times({**after, "event_id": 0}) == without_lease_times(
            {**before, "event_id": 0}
        )
        leases = {s["id"]: s["expires_at"] for s in before["sessions"]}
        for session in after["sessions"]:  # a grace period, never a shorter lease
            assert session["expires_at"] >= leases[session["id"]]
        assert after["waiting"] == [waiting["id"]]
        assert api.record(task["id"]) == task
        holder.release(held[0]["id"])  # the tokens work, and the queue is served again
        assert patient.get(waiting["id"])["state"] == "installed"
    finally:
        api.close()


def test_sigterm_with_an_open_stream_exits_with_status_zero(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    api = Api(daemon)
    try:
        api.open_session()
        with api.events(since=0) as stream:
            next(stream)
            code = daemon.stop()
            assert list(stream) == []
        assert code == 0
    finally:
        api.close()


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`debugregd serve` expected to refuse to start (a hang would hit the timeout)."""
    environment = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    environment.update({"DEBUGREGD_ADMIN_KEY": "test-admin-key", **(env or {})})
    command = [sys.executable, "-m", "debugregd", "serve", "--port", str(free_port()), *args]
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(api: Api) -> None:
    before = api.state()
    result = serve("--state-dir", str(api.daemon.state_dir), "--cpus", "2")
    assert result.returncode != 0
    assert "another debugregd process owns" in result.stderr, result.stderr
    assert str(api.daemon.state_dir) in result.stderr
    assert api.anon.get("/healthz").json()["status"] == "ok"
    assert api.state() == before


def test_more_than_one_worker_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = serve("--state-dir", str(state_dir), "--cpus", "2", env={"WEB_CONCURRENCY": "2"})
    assert result.returncode != 0
    assert "WEB_CONCURRENCY=2" in result.stderr, result.stderr
    assert "one worker" in result.stderr
    assert not (state_dir / "journal.sqlite3").exists()

"""A full disk (DESIGN section 11): every change in flight when the journal stops committing is
answered 503 problem+json or was committed, none is dropped or a 500; the log names the real
cause once; the daemon stops; and a restart with room again has everything acknowledged.

The disk is a real 2 MiB tmpfs (mounting needs root; the test is skipped, saying so, where
mounting is not permitted).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import Api, client, media_type, task_request
from tests.support.daemon import Daemon

CLIENTS = 8
WAIT_S = 60.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def grow(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)


@dataclass
class Allocator:
    """A client allocating in a loop until the daemon refuses with a 503 or is gone; every
    request and what became of it."""

    daemon: Daemon
    token: str
    name: str
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> record
    refused: list[str] = field(default_factory=list)  # labels answered 503 journal-failed
    dropped: list[tuple[str, str]] = field(default_factory=list)  # sent, never answered
    wrong: list[tuple[str, int, str]] = field(default_factory=list)  # any other answer

    def run(self) -> None:
        with client(self.daemon, self.token) as http:
            for n in range(1_000_000):
                # Long labels fill the disk in fewer requests.
                label = f"{self.name}-{n}-".ljust(200, "x")
                try:
                    response = http.post("/v1/allocations", json=task_request(label=label))
                except httpx.ConnectError:
                    return  # the daemon had stopped: this request was never sent
                except httpx.TransportError as exc:
                    self.dropped.append((label, repr(exc)))
                    return
                if response.status_code == 201:
                    self.acknowledged[label] = response.json()
                    continue
                problem = response.json() if media_type(response).endswith("json") else {}
                if (
                    response.status_code == 503
                    and problem.get("type") == "/problems/journal-failed"
                ):
                    self.refused.append(label)
                    return
                self.wrong.append((label, response.status_code, response.text[:300]))
                return


def test_a_full_disk_answers_every_change_in_flight_503_or_commits_it_and_stops(
    small_disk: Path, tmp_path: Path
) -> None:
    state_dir = small_disk / "state"
    state_dir.mkdir()
    daemon = Daemon(state_dir, "--cpus", "2")
    daemon.log_path = tmp_path / "daemon.log"  # not on the disk that fills up
    daemon.start()
    api = Api(daemon)
    try:
        allocators = [
            Allocator(daemon, api.open_session(f"filler{i}").token, f"c{i}") for i in range(CLIENTS)
        ]
        threads = [threading.Thread(target=a.run, daemon=True) for a in allocators]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S * 4)
        assert not any(t.is_alive() for t in threads)
        assert daemon.proc is not None
        code = daemon.proc.wait(WAIT_S)

        assert [a.dropped for a in allocators] == [[]] * CLIENTS
        assert [a.wrong for a in allocators] == [[]] * CLIENTS
        acknowledged = {k: v for a in allocators for k, v in a.acknowledged.items()}
        refused = [label for a in allocators for label in a.refused]
        assert acknowledged and refused
        assert code == 1, "a daemon stopped by its journal should exit with a failure"
        log = daemon.log()
        assert log.count("database or disk is full") == 1, log[-3000:]
        assert "SQLITE_FULL" in log
        assert "cannot rollback" not in log
        assert "Traceback" not in log, log[-3000:]

        grow(small_disk)
        daemon.start()
        live = {
            r["label"]: r
            for r in api.admin.get("/v1/allocations", params={"limit": 100_000}).json()[
                "allocations"
            ]
        }
        for label, record in acknowledged.items():
            assert live[label] == record
        assert not set(refused) & set(live), "a change answered 503 was made"
        assert set(live) <= set(acknowledged), "a change nobody was told of was made"
    finally:
        api.close()
        daemon.kill()

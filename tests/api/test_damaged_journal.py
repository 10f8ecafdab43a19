"""A damaged journal stops `debugregd serve` with one line that names the file and the choice,
never a traceback; `--recover` starts from what is intact and says what it dropped; streams that
resume across the loss get a reset. (Each kind of damage: tests/daemon/test_damage.py.)"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable

from tests.api.helpers import Api, task_request
from tests.support.daemon import Daemon, free_port


def serve(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`debugregd serve` on `daemon`'s state directory, expected to refuse to start."""
    environment = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    environment["DEBUGREGD_ADMIN_KEY"] = daemon.admin_key
    command = [sys.executable, "-m", "debugregd", "serve", "--port", str(free_port())]
    command += ["--state-dir", str(daemon.state_dir), *daemon.args, *args]
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for phrase in ("journal.sqlite3", "--recover", *phrases):
        assert phrase in lines[0], lines[0]


def test_a_wal_deleted_after_sigkill_stops_the_start_and_recover_reports_the_loss(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    api = Api(daemon)
    try:
        kept = api.open_session("before")
        kept.installed(task_request())
        daemon.stop()  # a clean stop: a snapshot, the WAL merged
        daemon.start()
        lost = [api.open_session(f"lost{i}") for i in range(5)]
        for session in lost:
            session.installed(task_request())
        seen = api.event_id()
        daemon.kill()
        (daemon.state_dir / "journal.sqlite3-wal").unlink()

        assert_one_line_refusal(serve(daemon), "are lost", "journal.committed")
        assert_one_line_refusal(serve(daemon))  # refusing changed nothing

        daemon.args.append("--recover")
        daemon.start()
        assert "--recover dropped commands" in daemon.log()
        state = api.state()
        assert {s["name"] for s in state["sessions"]} == {"before"}
        assert state["event_id"] > seen
        with api.events(since=seen) as stream:  # it saw events of changes now gone
            assert next(stream).type == "reset"
        daemon.args.remove("--recover")
        daemon.restart(kill=False)  # and the start after is clean
        assert {s["name"] for s in api.state()["sessions"]} == {"before"}
    finally:
        api.close()


def test_damaged_rows_stop_the_start_in_one_line_without_a_traceback(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    api = Api(daemon)
    try:
        api.open_session().installed(task_request())
        daemon.stop()
        journal = daemon.state_dir / "journal.sqlite3"
        with sqlite3.connect(journal) as db:
            body = db.execute("SELECT body FROM snapshots").fetchone()[0]
            db.execute("UPDATE snapshots SET body = ?", (body[: len(body) // 2],))
        db.close()
        assert_one_line_refusal(serve(daemon), "snapshot", "JSONDecodeError")

        with sqlite3.connect(journal) as db:
            db.execute("UPDATE snapshots SET body = '{\"profile\": {}}'")
        db.close()
        assert_one_line_refusal(serve(daemon), "snapshot", "KeyError")

        with journal.open("r+b") as f:
            f.write(b"\0" * 100)
        assert_one_line_refusal(serve(daemon), "SQLite cannot read it")

        daemon.args.append("--recover")
        daemon.start()
        assert api.state()["sessions"] == []
        kept = [p.name for p in daemon.state_dir.iterdir() if ".damaged-" in p.name]
        assert kept, "the damaged journal was not kept"
    finally:
        api.close()

"""A journal that detects damage (recovery.py): each kind of damage SQLite loses commits to
without an error, or reports as a raw exception, stops the start with one `JournalDamaged` line
naming the file and `--recover`; `--recover` continues from what is intact, says what it dropped
and keeps a copy; the start after it is clean.

Journals are made by a real runtime in this process; "a crash" is a copy of the files taken
while the journal is open (what a SIGKILL leaves: every commit in the WAL, none merged).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from debugregd.backends import SimBackend
from debugregd.core import Arbiter
from debugregd.hub import EventHub
from debugregd.recovery import JournalDamaged, Opened, open_journal
from debugregd.runtime import Runtime
from debugregd.store.journal import Journal, committed_path, wal_path

COMMITS = 12  # one session, then an allocation per commit


def request(n: int) -> dict[str, object]:
    return {
        "scope": {"kind": "task", "tid": 1000 + n},
        "address": 0x7FFD_0000 + 64 * n,
        "length": 8,
        "access": "write",
        "priority": 300,
        "evictable": True,
        "on_evict": "release",
        "wait": False,
        "label": f"a{n}",
    }


async def make_journal(directory: Path, *, crash: bool) -> Path:
    """A journal of COMMITS commits, then either a crash image (the files copied while it is
    open: every commit in the WAL) or a clean close (merged, no snapshot): its path."""
    directory.mkdir()
    live = directory / "live"
    live.mkdir()
    rt = Runtime(
        Arbiter(), Journal(live / "journal.sqlite3"), EventHub(), SimBackend(), retention=10_000
    )
    session, _ = rt.apply(
        {
            "op": "open_session",
            "name": "s",
            "ttl_s": 3600,
            "max_priority": 300,
            "allow_non_evictable": False,
            "allow_kernel": False,
        }
    )
    await rt.barrier()
    for n in range(1, COMMITS):
        rt.apply({"op": "allocate", "session": session.id, "request": request(n)})
        await rt.barrier()
    image = directory / "state"
    if crash:
        shutil.copytree(live, image)
        assert wal_path(image / "journal.sqlite3").stat().st_size > 0
        rt.journal.close(merge=False)
    else:
        rt.journal.close()
        shutil.copytree(live, image)
    return image / "journal.sqlite3"


def open_(path: Path, *, recover: bool = False) -> Opened:
    return open_journal(path, Arbiter, recover=recover)


def labels(opened: Opened) -> set[str]:
    return {a.label for a in opened.arbiter.allocations.values()}


def refused(path: Path, *phrases: str) -> str:
    """The one line a start on this journal stops with; it names the file and --recover."""
    with pytest.raises(JournalDamaged) as damage:
        open_(path)
    line = str(damage.value)
    assert "\n" not in line
    assert str(path) in line and "--recover" in line, line
    for phrase in phrases:
        assert phrase in line, line
    return line


def recovered(path: Path, *phrases: str) -> Opened:
    """Start with --recover, then check the next start is clean and agrees."""
    opened = open_(path, recover=True)
    report = " | ".join(opened.dropped)
    for phrase in phrases:
        assert phrase in report, report
    state = opened.arbiter.snapshot()
    opened.journal.close()
    again = open_(path)
    assert again.arbiter.snapshot() == state and again.dropped == []
    again.journal.close()
    return opened


def damaged_copies(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob("*.damaged-*"))


@pytest.fixture
async def crashed(tmp_path: Path) -> Path:
    return await make_journal(tmp_path / "crashed", crash=True)


@pytest.fixture
async def closed(tmp_path: Path) -> Path:
    return await make_journal(tmp_path / "closed", crash=False)


def test_an_intact_journal_opens_without_a_word(crashed: Path, closed: Path) -> None:
    for path in (crashed, closed):
        opened = open_(path)
        assert labels(opened) == {f"a{n}" for n in range(1, COMMITS)}
        assert opened.dropped == []
        opened.journal.close()


def test_a_wal_deleted_after_a_crash_is_refused_and_recover_reports_the_lost_commands(
    crashed: Path,
) -> None:
    wal_path(crashed).unlink()
    line = refused(crashed, f"commands 1-{COMMITS} are lost", "journal.committed")
    assert "wal" in line
    opened = recovered(crashed, f"commands 1-{COMMITS}, committed but no longer in the journal")
    assert labels(opened) == set()
    # Clients saw events up to the lost ones: ids go on past them, and streams get a reset.
    assert opened.arbiter.event_id > COMMITS


@pytest.mark.parametrize("cut", [1, 100, 4096])
def test_a_truncated_wal_is_refused_and_recover_keeps_the_commits_before_the_cut(
    crashed: Path, cut: int
) -> None:
    wal = wal_path(crashed)
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - cut)
    refused(crashed, f"records command {COMMITS} as committed", "are lost")
    opened = recovered(crashed, "committed but no longer in the journal")
    assert len(labels(opened)) < COMMITS - 1
    assert labels(opened) == {f"a{n}" for n in range(1, len(labels(opened)) + 1)}


def test_a_bit_flipped_in_a_wal_frame_is_refused(crashed: Path) -> None:
    wal = wal_path(crashed)
    data = bytearray(wal.read_bytes())
    data[len(data) // 2] ^= 0x10  # a frame in the middle: it and every later one are dropped
    wal.write_bytes(bytes(data))
    refused(crashed, "are lost")
    opened = recovered(crashed, "committed but no longer in the journal")
    assert len(labels(opened)) < COMMITS - 1


def edit(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)
    db.close()


def test_a_missing_command_row_is_refused_as_a_gap_and_recover_stops_before_it(
    closed: Path,
) -> None:
    edit(closed, "DELETE FROM commands WHERE seq = 6")
    refused(closed, "commands 6-6 are missing", "the 5 commands before the damage")
    opened = recovered(closed, "commands 6-12, from the damage on", "idempotent answers")
    assert labels(opened) == {"a1", "a2", "a3", "a4"}  # command 1 opened the session
    assert damaged_copies(closed)


def test_a_command_row_that_is_not_json_is_refused_without_a_traceback(closed: Path) -> None:
    edit(closed, 'UPDATE commands SET body = \'[{"op": "allocate", \' WHERE seq = 8')
    refused(closed, "the commit ending at command 8 cannot be read", "JSONDecodeError")
    opened = recovered(closed, "commands 8-12, from the damage on")
    assert labels(opened) == {f"a{n}" for n in range(1, 7)}


def test_a_command_that_cannot_be_replayed_is_refused(closed: Path) -> None:
    edit(closed, 'UPDATE commands SET body = \'[{"op": "allocate"}]\' WHERE seq = 3')
    refused(closed, "command 3 cannot be replayed", "KeyError")
    opened = recovered(closed, "commands 3-12")
    assert labels(opened) == {"a1"}


def test_an_unreadable_snapshot_is_refused_and_recover_starts_empty(closed: Path) -> None:
    journal = Journal(closed)
    journal.write_snapshot(COMMITS, {"not": "a snapshot"})
    journal.close()
    refused(closed, f"its snapshot at command {COMMITS} cannot be read", "an empty journal")
    opened = recovered(closed, "everything")
    assert labels(opened) == set() and opened.arbiter.event_id > COMMITS
    assert damaged_copies(closed)


def test_a_file_that_is_not_a_database_is_refused(closed: Path) -> None:
    with closed.open("r+b") as f:
        f.write(b"this is not SQLite" * 10)
    refused(closed, "SQLite cannot read it", "DatabaseError")
    opened = recovered(closed, "everything: SQLite could not read journal.sqlite3")
    assert labels(opened) == set()
    assert damaged_copies(closed)


@pytest.mark.parametrize("how", ["emptied", "deleted"])
def test_an_empty_journal_beside_evidence_of_an_older_one_is_refused(
    crashed: Path, how: str
) -> None:
    wal_path(crashed).unlink()
    if how == "emptied":
        crashed.write_bytes(b"")
    else:
        crashed.unlink()
    refused(crashed, "it is missing or empty", f"records command {COMMITS} as committed")
    assert not crashed.exists() or crashed.stat().st_size == 0  # refusing changed nothing
    opened = recovered(crashed, "everything")
    assert labels(opened) == set() and opened.arbiter.event_id > COMMITS


def test_a_wal_without_its_journal_is_refused(crashed: Path) -> None:
    crashed.unlink()
    committed_path(crashed).unlink()
    refused(crashed, "a WAL, journal.sqlite3-wal, is beside it")
    recovered(crashed, "everything")


def test_a_gap_in_the_event_history_is_refused_and_recover_keeps_the_history_after_it(
    closed: Path,
) -> None:
    edit(closed, "DELETE FROM event_batches WHERE last = 5")
    refused(closed, "events 5-5 are missing", "every command")
    opened = recovered(closed, "the event history through 5")
    assert labels(opened) == {f"a{n}" for n in range(1, COMMITS)}
    assert opened.journal.path == closed


def test_events_without_commands_behind_them_are_refused(closed: Path) -> None:
    edit(
        closed,
        "INSERT INTO event_batches VALUES (99, 99, '[[99,\"installed\",null]]', '{}')",
    )
    refused(closed, "have no command behind them")


def test_an_unreadable_commit_mark_is_refused_and_recover_writes_it_anew(crashed: Path) -> None:
    committed_path(crashed).write_bytes(b"seq=00000000000000000012 event=nonsense\n")
    refused(crashed, "journal.committed, its record of the last commit, is unreadable")
    opened = recovered(crashed, "journal.committed was unreadable")
    assert labels(opened) == {f"a{n}" for n in range(1, COMMITS)}


def test_a_journal_ahead_of_its_mark_is_not_damage(crashed: Path) -> None:
    # A kill between a commit and its mark leaves the mark behind the journal: nothing lost.
    journal = Journal(crashed)
    journal.last_seq, journal.last_event = 3, 3
    journal.mark_committed()
    journal.close(merge=False)
    opened = open_(crashed)
    assert labels(opened) == {f"a{n}" for n in range(1, COMMITS)} and opened.dropped == []
    opened.journal.close()

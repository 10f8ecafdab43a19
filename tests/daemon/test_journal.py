"""The journal's layout: one row per group commit, read back command by command and event by
event, pruned by whole batches, and migrated from the first layout (one row each)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from debugregd import wire
from debugregd.store.journal import SCHEMA_VERSION, Batch, Journal, LayoutError, StoredEvent

# Event bodies as the daemon writes them (wire JSON), with text that needs escaping: a raw
# newline would break the one-body-per-line column.
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
sessions = st.none() | st.sampled_from(["s1", "s2"])
batch_sizes = st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=12)


def event(event_id: int, label: str = "x", session: str | None = "s1") -> StoredEvent:
    body = wire.dumps({"id": event_id, "type": "installed", "label": label})
    return StoredEvent(event_id, "installed", session, body)


def write(journal: Journal, commands: list[dict[str, object]], events: list[StoredEvent]) -> None:
    batch = Batch.empty()
    batch.commands.extend(wire.dumps(c) for c in commands)
    batch.events.extend(events)
    journal.write(batch)


@settings(max_examples=40, deadline=None)
@given(sizes=batch_sizes, labels=st.lists(texts, min_size=60, max_size=60), who=sessions)
def test_what_is_written_in_batches_reads_back_one_by_one(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], labels: list[str], who: str | None
) -> None:
    journal = Journal(tmp_path_factory.mktemp("journal") / "j.sqlite3")
    written: list[StoredEvent] = []
    commands: list[dict[str, object]] = []
    for size in sizes:
        batch_commands = [{"op": "tick", "n": len(commands) + i} for i in range(size)]
        batch_events = [
            event(len(written) + i + 1, labels[len(written) + i], who) for i in range(size)
        ]
        write(journal, batch_commands, batch_events)
        commands += batch_commands
        written += batch_events
    try:
        assert [c for _, c in journal.commands_after(0)] == commands
        assert [n for n, _ in journal.commands_after(0)] == list(range(1, len(commands) + 1))
        for after in range(len(commands) + 1):
            assert [c for _, c in journal.commands_after(after)] == commands[after:]
        for after in range(len(written) + 1):
            assert journal.events_after(after, limit=3) == written[after : after + 3]
        assert journal.earliest_event() == (1 if written else 0)
    finally:
        journal.close()


def test_pruning_keeps_at_least_the_retention_in_whole_batches(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    for first in range(1, 31, 10):  # three batches of ten events: 1-10, 11-20, 21-30
        write(journal, [{"op": "tick"}], [event(i) for i in range(first, first + 10)])
    journal.prune(keep_events=15, idempotency_before=0.0)
    # Ids 16-30 must stay; 11-15 share a batch with them and stay too.
    assert journal.earliest_event() == 11
    assert [e.id for e in journal.events_after(0, limit=100)] == list(range(11, 31))
    journal.prune(keep_events=10, idempotency_before=0.0)
    assert journal.earliest_event() == 21
    journal.close()


def test_a_journal_in_the_first_layout_is_migrated_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE commands (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY, type TEXT NOT NULL, session TEXT, body TEXT NOT NULL
        );
        CREATE TABLE snapshots (
            seq INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, body TEXT NOT NULL
        );
        """
    )
    old.executemany(
        "INSERT INTO commands VALUES (?, ?)", [(n, f'{{"op":"tick","n":{n}}}') for n in (4, 5)]
    )
    old.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?)",
        [(e.id, e.type, e.session, e.body) for e in (event(7), event(8, session=None))],
    )
    old.commit()
    old.close()

    journal = Journal(path)
    assert list(journal.commands_after(0)) == [
        (4, {"op": "tick", "n": 4}),
        (5, {"op": "tick", "n": 5}),
    ]
    assert journal.last_seq == 5
    assert journal.events_after(6) == [event(7), event(8, session=None)]
    assert journal.earliest_event() == 7
    # New batches follow on from the migrated rows.
    write(journal, [{"op": "tick", "n": 6}], [event(9)])
    assert [n for n, _ in journal.commands_after(0)] == [4, 5, 6]
    assert [e.id for e in journal.events_after(0)] == [7, 8, 9]
    journal.close()

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "events" not in tables


def test_a_journal_from_a_newer_layout_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(LayoutError, match="newer debugregd"):
        Journal(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_while_the_daemon_has_its_journal_open_no_other_connection_reads_or_writes_it(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    write(journal, [{"op": "tick"}], [event(1)])
    other = sqlite3.connect(tmp_path / "j.sqlite3", timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("INSERT INTO meta VALUES ('k', 'v')")
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # as the README says
        other.execute("SELECT count(*) FROM commands").fetchone()
    other.close()
    journal.close()
    with sqlite3.connect(tmp_path / "j.sqlite3") as db:  # closed: anyone may read it
        assert db.execute("SELECT count(*) FROM event_batches").fetchone()[0] == 1


def test_tokens_an_older_layout_kept_in_idempotent_answers_are_erased_from_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    kept, anonymous = "drt_" + "k" * 43, "drt_" + "a" * 43
    with sqlite3.connect(path) as db:  # layout 2 stored whole session-open answers
        db.execute("PRAGMA user_version=2")
        answers = [
            ("admin:/v1/sessions:k1", {"id": "s1", "name": "n", "token": kept}),
            ("anonymous:/v1/sessions:k2", {"id": "s2", "name": "n", "token": anonymous}),
            ("s1:/v1/allocations:k3", {"id": "a1", "state": "installed"}),
        ]
        db.executemany(
            "INSERT INTO idempotency VALUES (?, 201, ?, 1.0)",
            [(k, json.dumps({"fingerprint": "f", "response": r})) for k, r in answers],
        )
    db.close()

    journal = Journal(path)
    stored = {k: json.loads(body)["response"] for k, _, body, _ in journal.idempotent_responses()}
    journal.close()
    assert stored == {
        "admin:/v1/sessions:k1": {"id": "s1", "name": "n"},  # answered again with a new token
        "s1:/v1/allocations:k3": {"id": "a1", "state": "installed"},
    }
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert kept.encode() not in on_disk and anonymous.encode() not in on_disk


def test_a_commit_the_disk_cannot_hold_fails_with_the_real_cause_and_changes_nothing(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.db.execute("PRAGMA max_page_count=40")  # a disk that fills after a few commits
    written = 0
    with pytest.raises(sqlite3.OperationalError) as failed:
        for n in range(1, 1000):
            write(journal, [{"op": "tick", "pad": "x" * 2000}], [event(n, label="y" * 2000)])
            written = n
    # SQLite rolled the transaction back itself; a second ROLLBACK must not replace the cause
    # with "cannot rollback - no transaction is active".
    assert failed.value.sqlite_errorname == "SQLITE_FULL", failed.value
    assert "disk is full" in str(failed.value)
    assert written > 0 and not journal.db.in_transaction
    assert [n for n, _ in journal.commands_after(0)] == list(range(1, written + 1))
    assert journal.last_seq == written
    journal.close(merge=False)

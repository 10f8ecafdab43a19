"""The journal: SQLite in WAL mode, the daemon's only durable state.

The core is deterministic, so the journal records the commands that changed it (with the time they
ran at) and the events they caused. On start the daemon restores the latest snapshot and replays
the commands after it; the events table serves stream resumption. A command and its events commit
in one transaction, and a response is sent only after that commit (group commit: every command of
one loop tick shares one transaction).

WAL with synchronous=NORMAL survives a killed process (SIGKILL) with every committed transaction;
set `synchronous="FULL"` to survive power loss too, at the cost of an fsync per commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from debugregd import wire

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, type TEXT NOT NULL, session TEXT, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (session TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL
);
"""


class StoredEvent(NamedTuple):
    """An event as the journal stores it; a tuple, so a batch's events are its rows as they are."""

    id: int
    type: str
    session: str | None
    body: str  # the event's wire JSON, exactly as streamed


@dataclass(slots=True)
class Batch:
    """Everything one group commit writes."""

    commands: list[str]
    events: list[StoredEvent]
    tokens: list[tuple[str, str]]
    revoked: list[str]
    idempotency: list[tuple[str, int, str, float]]

    @classmethod
    def empty(cls) -> Batch:
        return cls([], [], [], [], [])

    def __bool__(self) -> bool:
        return bool(self.commands or self.events or self.tokens or self.revoked or self.idempotency)


class Journal:
    """One SQLite database file in the state directory, written only by the event loop thread."""

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM commands").fetchone()
        snap = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM snapshots").fetchone()
        self.last_seq = max(int(row[0]), int(snap[0]))

    # -- reading, at start

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def latest_snapshot(self) -> tuple[int, dict[str, Any]] | None:
        row = self.db.execute(
            "SELECT seq, body FROM snapshots ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def commands_after(self, seq: int) -> Iterator[tuple[int, dict[str, Any]]]:
        cursor = self.db.execute(
            "SELECT seq, body FROM commands WHERE seq > ? ORDER BY seq", (seq,)
        )
        for s, body in cursor:
            yield int(s), json.loads(body)

    def tokens(self) -> dict[str, str]:
        """Token digest -> session id."""
        return {str(d): str(s) for s, d in self.db.execute("SELECT session, digest FROM tokens")}

    def idempotent_responses(self) -> dict[str, tuple[int, str]]:
        rows = self.db.execute("SELECT key, status, body FROM idempotency")
        return {str(k): (int(st), str(b)) for k, st, b in rows}

    # -- events, for stream resumption

    def earliest_event(self) -> int:
        row = self.db.execute("SELECT MIN(id) FROM events").fetchone()
        return 0 if row[0] is None else int(row[0])

    def events_after(self, event_id: int, limit: int = 1000) -> list[StoredEvent]:
        rows = self.db.execute(
            "SELECT id, type, session, body FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (event_id, limit),
        ).fetchall()
        return [StoredEvent(int(i), str(t), s, str(b)) for i, t, s, b in rows]

    # -- writing

    def write(self, batch: Batch) -> None:
        """Commit a batch in one transaction; raises if SQLite cannot."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.commands:
                first = self.last_seq + 1
                db.executemany(
                    "INSERT INTO commands (seq, body) VALUES (?, ?)",
                    [(first + i, body) for i, body in enumerate(batch.commands)],
                )
            if batch.events:
                db.executemany(
                    "INSERT INTO events (id, type, session, body) VALUES (?, ?, ?, ?)",
                    batch.events,
                )
            if batch.tokens:
                db.executemany("INSERT OR REPLACE INTO tokens VALUES (?, ?)", batch.tokens)
            if batch.revoked:
                db.executemany(
                    "DELETE FROM tokens WHERE session = ?", [(s,) for s in batch.revoked]
                )
            if batch.idempotency:
                db.executemany(
                    "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?)", batch.idempotency
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.last_seq += len(batch.commands)

    def write_snapshot(self, event_id: int, snapshot: dict[str, Any]) -> None:
        """Store a snapshot covering every command so far and drop those commands."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)",
                (self.last_seq, event_id, wire.dumps(snapshot)),
            )
            db.execute("DELETE FROM snapshots WHERE seq < ?", (self.last_seq,))
            db.execute("DELETE FROM commands WHERE seq <= ?", (self.last_seq,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def prune(self, keep_events: int, idempotency_before: float) -> None:
        """Bound the event history (retention) and forget old idempotency keys."""
        self.db.execute(
            "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (keep_events,)
        )
        self.db.execute("DELETE FROM idempotency WHERE created_at < ?", (idempotency_before,))

    def close(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()

"""The journal: SQLite in WAL mode, the daemon's only durable state.

The core is deterministic, so the journal records the commands that changed it (with the time they
ran at) and the events they caused. On start the daemon restores the latest snapshot and replays
the commands after it; the event batches serve stream resumption. A command and its events commit
in one transaction, and a response is sent only after that commit (group commit: every command of
one loop tick shares one transaction, and one row in each table).

WAL with synchronous=NORMAL survives a killed process (SIGKILL) with every committed transaction;
set `synchronous="FULL"` to survive power loss too, at the cost of an fsync per commit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from debugregd import wire

log = logging.getLogger("debugregd")

SCHEMA_VERSION = 3  # SQLite's user_version; 0 is the first layout, one row per command and event

# One group commit writes one row to `commands` and one to `event_batches`: a row's SQLite cost
# (a B-tree insert now, a delete at pruning) is paid per batch, not per command and per event.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    seq INTEGER PRIMARY KEY,  -- the batch's last command's sequence number
    body TEXT NOT NULL  -- a JSON array of the batch's commands
);
CREATE TABLE IF NOT EXISTS event_batches (
    last INTEGER PRIMARY KEY,  -- the batch's last event id
    first INTEGER NOT NULL,
    heads TEXT NOT NULL,  -- a JSON array of [id, type, session], one per event
    bodies TEXT NOT NULL  -- each event's wire JSON, one per line (JSON text has no raw newline)
);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (session TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL
);
"""

# From layout 0 (one row per command, one per event), in the transaction that opens the journal.
MIGRATE_FROM_0 = """
UPDATE commands SET body = '[' || body || ']';
INSERT INTO event_batches
    SELECT id, id, json_array(json_array(id, type, session)), body FROM events ORDER BY id;
DROP TABLE events;
"""


# From layouts 0-2, which kept session tokens in the idempotent answers to session opens, and
# answered anonymous callers' keys (no longer honoured). Run with secure_delete on, so the old
# text is overwritten rather than left in free space.
FORGET_TOKENS = """
DELETE FROM idempotency WHERE key LIKE 'anonymous:%';
UPDATE idempotency SET body = json_remove(body, '$.response.token')
    WHERE json_type(body, '$.response.token') IS NOT NULL;
"""


def _roll_back(db: sqlite3.Connection) -> None:
    """Undo a failed transaction without hiding why it failed: after some errors (a full disk
    among them) SQLite has already rolled back, and a ROLLBACK would raise "cannot rollback -
    no transaction is active" in place of the real cause."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def committed_path(journal: Path) -> Path:
    """Where the journal at `journal` records its last commit: journal.committed."""
    return journal.with_suffix(".committed")


def wal_path(journal: Path) -> Path:
    return journal.with_name(journal.name + "-wal")


class MarkUnreadable(ValueError):
    """The commit mark holds something this version did not write."""


MARK = re.compile(rb"seq=(\d{20}) event=(\d{20}) crc=([0-9a-f]{8})\n")


class CommitMark:
    """The last command and event the journal committed, in a file beside it that SQLite
    cannot lose without a trace.

    SQLite opens a journal whose WAL was deleted as if nothing had been committed since the last
    checkpoint, and recovers a WAL by keeping the frames before the first whose checksum fails:
    commits vanish without an error. This file is overwritten in place after every commit (one
    `pwrite` of 65 bytes, no fsync: it survives a killed process like the WAL does; after a
    power loss it may lag the WAL, never lead it when synchronous=FULL), so a journal that ends
    before it has lost commits. Its CRC tells a torn or foreign file from a record.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def read(self) -> tuple[int, int] | None:
        """(command seq, event id) last recorded; None before the first commit."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not data:
            return None
        found = MARK.fullmatch(data)
        if found is None or zlib.crc32(data[: data.rindex(b" crc=")]) != int(found[3], 16):
            raise MarkUnreadable(f"{self.path} does not hold a commit record: {data[:80]!r}")
        return int(found[1]), int(found[2])

    def write(self, seq: int, event: int) -> None:
        """Record a commit; raises OSError."""
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        head = b"seq=%020d event=%020d" % (seq, event)
        os.pwrite(self._fd, head + b" crc=%08x\n" % zlib.crc32(head), 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LayoutError(RuntimeError):
    """The journal was written in a layout this version cannot read."""


class StoredEvent(NamedTuple):
    """An event as the journal stores it and streams send it."""

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
        # Created 0600 whatever the umask; SQLite gives its WAL the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        # Only this daemon opens its journal (it holds the state directory's lock), so SQLite
        # may too: in exclusive mode the WAL index lives in this process's memory, and a commit
        # takes no file locks (six fcntl calls a commit otherwise). Set before WAL is entered.
        try:
            self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except BaseException:
            self.db.close()  # and its lock: the file stays as it was, for the version that reads it
            raise
        self.mark = CommitMark(committed_path(path))
        self._mark_failed = False
        self._count()

    def _count(self) -> None:
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM commands").fetchone()
        snap = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM snapshots").fetchone()
        self.last_seq = max(int(row[0]), int(snap[0]))
        event = self.db.execute("SELECT COALESCE(MAX(last), 0) FROM event_batches").fetchone()
        self.last_event = int(event[0])

    def _migrate(self) -> None:
        db = self.db
        forget = int(db.execute("PRAGMA user_version").fetchone()[0]) < 3
        secure_delete = int(db.execute("PRAGMA secure_delete").fetchone()[0])
        if forget:
            db.execute("PRAGMA secure_delete=ON")  # often the build's default already
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise LayoutError(
                    f"{self.path} was written by a newer debugregd (journal layout {version}, "
                    f"this one reads up to {SCHEMA_VERSION}); run that version or a new state dir"
                )
            old = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone()
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if old is not None:
                for statement in MIGRATE_FROM_0.split(";"):
                    if statement.strip():
                        db.execute(statement)
            if forget:
                for statement in FORGET_TOKENS.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise
        if forget:
            db.execute(f"PRAGMA secure_delete={secure_delete}")
            # The frames written before hold the old text: into the file, and out of the WAL.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reading, at start

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def snapshot_seq(self) -> int:
        """The command the latest snapshot covers up to; 0 without one."""
        row = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM snapshots").fetchone()
        return int(row[0])

    def command_rows(self, seq: int) -> Iterator[tuple[int, str]]:
        """The commits after command `seq`, undecoded: (last command's seq, JSON array)."""
        cursor = self.db.execute(
            "SELECT seq, body FROM commands WHERE seq > ? ORDER BY seq", (seq,)
        )
        for last, body in cursor:
            yield int(last), str(body)

    def event_index(self) -> list[tuple[int, int, bool]]:
        """Each commit's events, in order: (first id, last id, whether its heads and bodies
        are well formed)."""
        rows = self.db.execute(
            """SELECT first, last,
                   CASE WHEN json_valid(heads)
                       THEN json_array_length(heads) = last - first + 1
                           AND length(bodies) - length(replace(bodies, char(10), ''))
                               = last - first
                       ELSE 0 END
               FROM event_batches ORDER BY last"""
        )
        return [(int(f), int(la), bool(ok)) for f, la, ok in rows]

    def latest_snapshot(self) -> tuple[int, dict[str, Any]] | None:
        row = self.db.execute(
            "SELECT seq, body FROM snapshots ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        body = json.loads(row[1])
        if isinstance(body, dict) and set(body) == {"file"}:
            # Written beside the journal by a child process (`snapshot_path`).
            path = self.path.parent / str(body["file"])
            try:
                body = json.loads(path.read_bytes())
            except OSError as exc:
                raise ValueError(f"its snapshot file {path} cannot be read ({exc})") from None
        return int(row[0]), body

    def commands_after(self, seq: int) -> Iterator[tuple[int, dict[str, Any]]]:
        cursor = self.db.execute(
            "SELECT seq, body FROM commands WHERE seq > ? ORDER BY seq", (seq,)
        )
        for last, body in cursor:
            commands = json.loads(body)
            first = int(last) - len(commands) + 1
            for n, command in enumerate(commands, first):
                if n > seq:
                    yield n, command

    def tokens(self) -> dict[str, str]:
        """Token digest -> session id."""
        return {str(d): str(s) for s, d in self.db.execute("SELECT session, digest FROM tokens")}

    def idempotent_responses(self) -> list[tuple[str, int, str, float]]:
        """(key, status, body, created_at), oldest first."""
        rows = self.db.execute(
            "SELECT key, status, body, created_at FROM idempotency ORDER BY created_at"
        )
        return [(str(k), int(st), str(b), float(at)) for k, st, b, at in rows]

    # -- events, for stream resumption

    def earliest_event(self) -> int:
        row = self.db.execute("SELECT first FROM event_batches ORDER BY last LIMIT 1").fetchone()
        return 0 if row is None else int(row[0])

    def events_after(self, event_id: int, limit: int = 1000) -> list[StoredEvent]:
        """Up to `limit` events with ids above `event_id`, in order."""
        rows = self.db.execute(
            "SELECT heads, bodies FROM event_batches WHERE last > ? ORDER BY last LIMIT ?",
            (event_id, limit),
        )
        out: list[StoredEvent] = []
        try:
            for heads, bodies in rows:
                for (i, t, s), b in zip(json.loads(heads), bodies.split("\n"), strict=True):
                    if i > event_id:
                        out.append(StoredEvent(int(i), str(t), s, b))
                if len(out) >= limit:
                    break
        finally:
            rows.close()  # a statement left open would hold its read until collected
        return out[:limit]

    # -- writing

    def write(self, batch: Batch) -> None:
        """Commit a batch in one transaction; raises if SQLite cannot."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.commands:
                db.execute(
                    "INSERT INTO commands (seq, body) VALUES (?, ?)",
                    (self.last_seq + len(batch.commands), f"[{','.join(batch.commands)}]"),
                )
            if events := batch.events:
                db.execute(
                    "INSERT INTO event_batches VALUES (?, ?, ?, ?)",
                    (
                        events[-1].id,
                        events[0].id,
                        wire.dumps([(e.id, e.type, e.session) for e in events]),
                        "\n".join([e.body for e in events]),
                    ),
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
            _roll_back(db)
            raise
        if batch.commands:
            self.last_seq += len(batch.commands)
            if batch.events:
                self.last_event = batch.events[-1].id
            self.mark_committed()

    def mark_committed(self) -> None:
        """Record in the commit mark how far the journal goes now."""
        try:
            self.mark.write(self.last_seq, self.last_event)
        except OSError as exc:  # a mark that lags only weakens the check at start
            if not self._mark_failed:
                self._mark_failed = True
                log.warning("cannot record the last commit in %s: %s", self.mark.path, exc)

    def write_snapshot(self, event_id: int, snapshot: dict[str, Any]) -> None:
        """Store a snapshot covering every command so far and drop those commands."""
        self._adopt(self.last_seq, event_id, wire.dumps(snapshot), keep=None)

    def snapshot_path(self, seq: int) -> Path:
        """Where a snapshot covering the commands up to `seq` is written by another process
        (the journal's own connection is this process's alone)."""
        return self.path.with_name(f"{self.path.name}.snapshot-{seq}")

    def adopt_snapshot(self, seq: int, event_id: int) -> None:
        """Take the snapshot written at `snapshot_path(seq)` (complete and synced) as the
        latest, covering the commands up to `seq`, and drop those commands."""
        keep = self.snapshot_path(seq)
        self._adopt(seq, event_id, wire.dumps({"file": keep.name}), keep=keep)

    def _adopt(self, seq: int, event_id: int, body: str, keep: Path | None) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)", (seq, event_id, body))
            db.execute("DELETE FROM snapshots WHERE seq < ?", (seq,))
            db.execute("DELETE FROM commands WHERE seq <= ?", (seq,))
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise
        for old in self.path.parent.glob(f"{self.path.name}.snapshot-*"):
            if old != keep:  # superseded (or a child's unfinished file)
                old.unlink(missing_ok=True)

    def prune(self, keep_events: int, idempotency_before: float) -> None:
        """Bound the event history (retention: at least the newest `keep_events` are kept,
        whole batches at a time) and forget old idempotency keys."""
        self.db.execute(
            "DELETE FROM event_batches WHERE last <= (SELECT MAX(last) FROM event_batches) - ?",
            (keep_events,),
        )
        self.db.execute("DELETE FROM idempotency WHERE created_at < ?", (idempotency_before,))

    # -- repair, for --recover (recovery.py)

    def cut(self, seq: int, event_id: int, sessions: set[str]) -> tuple[int, int]:
        """Drop the commands after `seq` and the events after `event_id`, the tokens of
        sessions not in `sessions`, and every idempotent answer (they may name what was
        dropped). Returns how many tokens and answers were dropped."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM commands WHERE seq > ?", (seq,))
            db.execute("DELETE FROM event_batches WHERE last > ?", (event_id,))
            held = [s for (s,) in db.execute("SELECT session FROM tokens")]
            gone = [s for s in held if s not in sessions]
            db.executemany("DELETE FROM tokens WHERE session = ?", [(s,) for s in gone])
            answers = int(db.execute("SELECT count(*) FROM idempotency").fetchone()[0])
            db.execute("DELETE FROM idempotency")
            db.execute("COMMIT")
        except BaseException:
            _roll_back(db)
            raise
        self._count()
        return len(gone), answers

    def drop_events(self, through: int | None = None) -> None:
        """Drop the event history up to and including event `through` (all of it: None)."""
        if through is None:
            self.db.execute("DELETE FROM event_batches")
        else:
            self.db.execute("DELETE FROM event_batches WHERE last <= ?", (through,))
        self._count()

    def backup(self, target: Path) -> None:
        """A consistent copy of the journal at `target` (mode 0600)."""
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        copy = sqlite3.connect(target)
        try:
            self.db.backup(copy)
        finally:
            copy.close()

    def close(self, *, merge: bool = True) -> None:
        """Close, merging the WAL into the database file first unless `merge` is False (the
        WAL keeps its commits either way: the next open merges them)."""
        try:
            if merge:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.db.close()
            self.mark.close()

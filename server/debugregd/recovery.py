"""Opening the journal at start: find the damage SQLite does not report, and refuse to start on
it with one line, or (`--recover`) continue from what is intact and say what was dropped.

SQLite loses commits without an error when a WAL is deleted, truncated or has a flipped bit (it
keeps the frames before the first bad checksum), and a journal file replaced by an empty one
opens as a new journal. The commit mark beside the journal (`store.journal.CommitMark`) says how
far the journal went; the replay checks that the commands run on without a gap and that each
one replays, and that the event history runs on to the arbiter's last event. Whatever is found
becomes one `JournalDamaged` line naming the file and the choice; never a traceback.

`--recover` keeps a copy of what it changes (`journal.sqlite3.damaged-<UTC time>`), drops the
damaged part and everything after it (a command replayed after a gap would act on a state that
never was), and writes a snapshot of the result. When commands are dropped, the event history
goes too and the event id moves past every id handed out before, so a stream that resumes gets
a `reset` and re-reads state rather than trusting events of changes that are gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from debugregd.commands import replay as replay_command
from debugregd.core import Arbiter
from debugregd.store.journal import (
    CommitMark,
    Journal,
    MarkUnreadable,
    committed_path,
    wal_path,
)

log = logging.getLogger("debugregd")


class JournalDamaged(RuntimeError):
    """The journal is damaged: what, where, and what `--recover` would continue from."""

    def __init__(self, path: Path, what: str, intact: str) -> None:
        super().__init__(what)
        self.path, self.what, self.intact = path, what, intact

    def __str__(self) -> str:
        return (
            f"journal {self.path} is damaged: {self.what}. Start with --recover to continue "
            f"from {self.intact} (what is dropped is reported and a copy kept), or restore "
            f"{self.path.parent} from a backup"
        )


@dataclass
class Opened:
    """A journal checked (and repaired, with --recover) and the arbiter it rebuilt."""

    journal: Journal
    arbiter: Arbiter
    replayed: int
    dropped: list[str] = field(default_factory=list)  # what --recover dropped, for the log


@dataclass
class Replay:
    """How far a replay got: `good` is the last command of the last whole commit replayed."""

    arbiter: Arbiter
    replayed: int
    good: int
    damage: str | None = None
    base_lost: bool = False  # the snapshot itself is unreadable: nothing before it survives


def describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:200] + "..."


def replay(journal: Journal, fresh: Callable[[], Arbiter], through: int | None = None) -> Replay:
    """The latest snapshot, then every command after it (up to command `through`), checking
    that the commands run on without a gap and that each one replays."""
    after = 0
    try:
        after = journal.snapshot_seq()
        snap = journal.latest_snapshot()
        arbiter = fresh() if snap is None else Arbiter.restore(snap[1])
    except (ValueError, LookupError, TypeError, AttributeError, sqlite3.DatabaseError) as exc:
        what = f"its snapshot at command {after} cannot be read ({describe(exc)})"
        return Replay(fresh(), 0, 0, what, base_lost=True)
    replayed, good = 0, after
    try:
        for last, body in journal.command_rows(after):
            if through is not None and last > through:
                break
            try:
                commands = json.loads(body)
                if not isinstance(commands, list) or not commands:
                    raise ValueError("not a list of commands")
            except ValueError as exc:
                return Replay(
                    arbiter,
                    replayed,
                    good,
                    f"the commit ending at command {last} cannot be read ({describe(exc)})",
                )
            first = last - len(commands) + 1
            if first != good + 1:
                missing = f"commands {good + 1}-{first - 1} are missing"
                what = missing if first > good + 1 else f"commands overlap at {first}"
                return Replay(arbiter, replayed, good, what)
            for n, command in enumerate(commands, first):
                try:
                    replay_command(arbiter, command)
                except Exception as exc:  # a command that did run once must replay
                    what = f"command {n} cannot be replayed ({describe(exc)})"
                    return Replay(arbiter, replayed, good, what)
            replayed += len(commands)
            good = last
    except sqlite3.DatabaseError as exc:
        return Replay(
            arbiter, replayed, good, f"it cannot be read past command {good} ({describe(exc)})"
        )
    return Replay(arbiter, replayed, good)


def event_damage(journal: Journal, event_id: int) -> tuple[str, int | None] | None:
    """What is wrong with the event history, if anything, and how much of it to drop (through
    that event id; None: all of it). The history must run on, batch after batch, to the
    arbiter's last event: streams resume from it."""
    index = journal.event_index()
    if not index:
        return None  # pruned to nothing (retention 0), or never written
    problem, through, previous = None, 0, None
    for first, last, well_formed in index:
        if last > event_id:
            return (
                f"events {max(first, event_id + 1)}-{index[-1][1]} have no command behind them",
                None,
            )
        if not well_formed:
            problem, through = f"events {first}-{last} cannot be read", last
        elif previous is not None and first != previous + 1:
            problem, through = f"events {previous + 1}-{first - 1} are missing", first - 1
        previous = last
    if index[-1][1] != event_id:
        return f"events {index[-1][1] + 1}-{event_id} are missing", None
    return None if problem is None else (problem, through)


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _set_aside(path: Path) -> str:
    """Rename the journal and its WAL out of the way; what they are kept as."""
    kept = []
    for old in (path, wal_path(path)):
        if old.exists():
            new = old.with_name(f"{old.name}.damaged-{_stamp()}")
            old.rename(new)
            kept.append(new.name)
    return ", ".join(kept) or "nothing"


def _probe(path: Path) -> int:
    """The last command `path` holds, read without changing it (read-only: a refused start
    leaves the journal and its WAL as they were)."""
    shm = path.with_name(path.name + "-shm")
    had_shm = shm.exists()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"commands", "snapshots"} <= tables:
            return 0  # its tables are in the lost part, if anywhere
        commands = db.execute("SELECT COALESCE(MAX(seq), 0) FROM commands").fetchone()
        snapshot = db.execute("SELECT COALESCE(MAX(seq), 0) FROM snapshots").fetchone()
        return max(int(commands[0]), int(snapshot[0]))
    finally:
        db.close()
        if not had_shm:  # a read-only reader of a WAL journal makes one; the daemon uses none
            with contextlib.suppress(OSError):
                shm.unlink()


def open_journal(
    path: Path,
    fresh: Callable[[], Arbiter],
    *,
    synchronous: str = "NORMAL",
    recover: bool = False,
    check: Callable[[Journal], None] | None = None,
) -> Opened:
    """Open the journal at `path`, check it and rebuild the arbiter from it (`fresh()` when it
    is new); `check` vets the opened journal first (the host it was written for) and may raise.

    Raises JournalDamaged, unless `recover`: then the damaged part is dropped and reported.
    """
    return _Opening(path, fresh, synchronous, recover, check).run()


class _Opening:
    """One start's checks, in order: the commit mark, the files, the commands the journal
    holds against the mark, the replay, the event history."""

    def __init__(
        self,
        path: Path,
        fresh: Callable[[], Arbiter],
        synchronous: str,
        recover: bool,
        check: Callable[[Journal], None] | None,
    ) -> None:
        self.path, self.fresh, self.synchronous = path, fresh, synchronous
        self.recover, self.check = recover, check
        self.dropped: list[str] = []
        # The last event id clients may have been told of, when commands were lost: the
        # recovered arbiter's event id moves past it.
        self.evidence = 0

    def damaged(self, what: str, intact: str, report: Callable[[], str]) -> None:
        """Refuse (one line), or, recovering, note what `report()` drops (it may act)."""
        if not self.recover:
            raise JournalDamaged(self.path, what, intact)
        self.dropped.append(report())

    def run(self) -> Opened:
        path = self.path
        recorded = self._recorded()
        wal = wal_path(path)
        if not (path.exists() and path.stat().st_size > 0):
            if (recorded is not None and recorded[0] > 0) or wal.exists():
                self._missing(recorded)
            recorded = None
        elif recorded is not None:
            self._compare(recorded)
        try:
            journal = Journal(path, synchronous=self.synchronous)
        except sqlite3.DatabaseError as exc:
            journal = self._unreadable(exc, recorded)
        try:
            opened = self._rebuild(journal, recorded)
        except sqlite3.DatabaseError as exc:  # SQLite failing to read it, anywhere
            with contextlib.suppress(sqlite3.Error):
                journal.close(merge=False)
            opened = self._rebuild(self._unreadable(exc, recorded), None)
        except BaseException:
            journal.close()
            raise
        for line in opened.dropped:
            log.warning("--recover dropped %s", line)
        return opened

    def _recorded(self) -> tuple[int, int] | None:
        mark = CommitMark(committed_path(self.path))
        try:
            return mark.read()
        except (MarkUnreadable, OSError) as exc:
            self.damaged(
                f"{mark.path.name}, its record of the last commit, is unreadable ({describe(exc)})",
                "the journal as it is",
                lambda: (
                    f"nothing of the journal; {mark.path.name} was unreadable and is written anew"
                ),
            )
            return None

    def _missing(self, recorded: tuple[int, int] | None) -> None:
        mark, wal = committed_path(self.path), wal_path(self.path)
        if recorded is not None and recorded[0] > 0:
            clue = f"{mark.name} records command {recorded[0]} as committed"
            self.evidence = max(recorded[1], 1)
        else:
            clue = f"a WAL, {wal.name}, is beside it"
            self.evidence = 1
        self.damaged(
            f"it is missing or empty, but {clue}",
            "an empty journal",
            lambda: (
                f"everything: {self.path.name} was missing or empty ({clue}); kept: "
                + _set_aside(self.path)
            ),
        )

    def _compare(self, recorded: tuple[int, int]) -> None:
        try:
            held = _probe(self.path)
        except sqlite3.DatabaseError:
            return  # said when it is opened
        if recorded[0] > held:
            lost = f"commands {held + 1}-{recorded[0]}"
            self.damaged(
                f"it ends at command {held}, but {committed_path(self.path).name} records "
                f"command {recorded[0]} as committed: {lost} are lost (was "
                f"{wal_path(self.path).name} deleted or truncated, or the journal restored "
                "from an older copy?)",
                f"the {held} commands it holds",
                lambda: f"{lost}, committed but no longer in the journal",
            )
            self.evidence = max(self.evidence, recorded[1])

    def _unreadable(self, exc: BaseException, recorded: tuple[int, int] | None) -> Journal:
        self.damaged(
            f"SQLite cannot read it ({describe(exc)})",
            "an empty journal",
            lambda: (
                f"everything: SQLite could not read {self.path.name} ({describe(exc)}); "
                f"kept: {_set_aside(self.path)}"
            ),
        )
        self.evidence = max(self.evidence, recorded[1] if recorded else 0, 1)
        return Journal(self.path, synchronous=self.synchronous)

    def _rebuild(self, journal: Journal, recorded: tuple[int, int] | None) -> Opened:
        if self.check is not None:
            self.check(journal)
        done = replay(journal, self.fresh)
        if done.damage is not None and done.base_lost:
            self.damaged(
                done.damage,
                "an empty journal",
                lambda: f"everything: {done.damage}; kept: " + self._reopen_empty(journal),
            )
            self.evidence = max(self.evidence, journal.last_event, 1)
            journal = Journal(self.path, synchronous=self.synchronous)
            done = replay(journal, self.fresh)
        elif done.damage is not None:
            good, last = done.good, journal.last_seq
            copy = self.path.with_name(f"{self.path.name}.damaged-{_stamp()}")
            self.damaged(
                done.damage,
                f"the {good} commands before the damage",
                lambda: (
                    f"commands {good + 1}-{last}, from the damage on ({done.damage}); "
                    f"kept: {self._copy(journal, copy)}"
                ),
            )
            self.evidence = max(self.evidence, journal.last_event, done.arbiter.event_id)
            done = replay(journal, self.fresh, through=good)
            tokens, answers = journal.cut(good, done.arbiter.event_id, set(done.arbiter.sessions))
            self.dropped.append(
                f"the tokens of {tokens} sessions that no longer exist, and {answers} "
                "idempotent answers (a retried request runs again)"
            )
        arbiter = done.arbiter
        if self.evidence:
            # Commands were lost after events about them may have been streamed: past every
            # id handed out, and with no history, a resuming stream gets a reset.
            arbiter.event_id = max(arbiter.event_id, journal.last_event, self.evidence) + 1
            if journal.last_event:
                self.dropped.append(
                    f"the event history up to event {journal.last_event} (resuming streams "
                    "get a reset)"
                )
            journal.drop_events()
        found = event_damage(journal, arbiter.event_id)
        if found is not None:
            what, through = found
            self.damaged(
                f"its event history is broken: {what}",
                "every command, without the broken part of the event history",
                lambda: (
                    f"the event history through {'its end' if through is None else through}"
                    f" ({what}; resuming streams get a reset)"
                ),
            )
            journal.drop_events(through)
        if self.recover:
            if self.dropped:
                journal.write_snapshot(arbiter.event_id, arbiter.snapshot())
            journal.mark_committed()
        return Opened(journal, arbiter, done.replayed, self.dropped)

    def _reopen_empty(self, journal: Journal) -> str:
        journal.close()
        return _set_aside(self.path)

    @staticmethod
    def _copy(journal: Journal, copy: Path) -> str:
        journal.backup(copy)
        return copy.name

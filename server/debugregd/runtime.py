"""The single writer: one event loop owns the arbiter, the journal and the event hub.

Like Redis, the arbiter needs no locks because only this loop's thread touches it. A request runs
its command synchronously (so no other request interleaves inside it): the core decides, and asks
the hardware backend to arm what it installs, within the command. The command (with every answer
of the kernel that was not "armed", so a replay needs no hardware) and its events are staged for
the journal; the request waits for the group commit, and only then is it answered and are its
events published to streams.

Facts from the world outside enter the same way, as journaled commands: what users outside
debugregd hold (`observe`, measured when the kernel refuses and on timers), and a task that exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from debugregd import wire
from debugregd.backends.base import Backend, Hit, Targets
from debugregd.commands import Command, Outcome, execute
from debugregd.core import Allocation, Arbiter, CoreError, Event, EventType, Refused, Session
from debugregd.core.errors import KernelRefused
from debugregd.core.kernel import Measurement, Recorder
from debugregd.hub import EventHub
from debugregd.metrics import Metrics, Stats
from debugregd.store.journal import Batch, Journal, StoredEvent
from debugregd.tasks import TaskWatcher
from debugregd.tracers import TracerWatcher, describe

log = logging.getLogger("debugregd")

SNAPSHOT_EVERY = 50_000  # commands between snapshots: bounds replay time at start
PRUNE_EVERY = 1_000  # events between retention sweeps
IDEMPOTENCY_TTL_S = 24 * 3600
TOKEN_CACHE = 4096  # valid tokens whose digests are remembered
RECORD_CACHE = 4096  # allocations whose latest staged record is kept for their responses
# Tries of a command the kernel refuses for room: each refusal is measured and recorded, so the
# next try decides on the truth; more than one more try means users outside are changing fast.
KERNEL_TRIES = 3
TASK_SWEEP_S = 10.0  # how often exited-or-forgotten tasks stop being watched
# Events that free registers: outside holders are measured again after them.
FREEING = frozenset({EventType.RELEASED, EventType.EVICTED, EventType.EXPIRED})


class JournalFailed(RuntimeError):
    """The journal could not commit: the change was not made, and the daemon is stopping."""


def token_digest(token: str) -> str:
    """Tokens are stored and looked up only by their SHA-256: the journal holds no secret."""
    return hashlib.sha256(token.encode()).hexdigest()


class Runtime:
    """Runs commands against the arbiter with group-committed journaling."""

    def __init__(
        self,
        arbiter: Arbiter,
        journal: Journal,
        hub: EventHub,
        backend: Backend,
        *,
        probe: dict[str, Any] | None = None,
        retention: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        outside_interval: float = 1.0,
        outside_scan: float = 2.0,
        reserve_for_ptrace: int = 0,
        yield_to_tracers: bool = False,
        hit_interval: float = 0.1,
        snapshot_every: int = SNAPSHOT_EVERY,
        max_allocations_per_session: int = 0,
        max_waiting_per_session: int = 0,
    ) -> None:
        self.arbiter = arbiter
        self.journal = journal
        self.hub = hub
        self.backend = backend
        # The core asks the backend to arm within each command; the answers are journaled.
        self.kernel = Recorder(backend)
        arbiter.kernel = self.kernel
        self.outside_interval = outside_interval
        self.outside_scan = outside_scan
        self.tasks = TaskWatcher(self.task_exited) if backend.real_tasks else None
        self.reserve_for_ptrace = reserve_for_ptrace
        self.hit_interval = hit_interval
        self.session_limits = {
            "max_allocations_per_session": max_allocations_per_session,
            "max_waiting_per_session": max_waiting_per_session,
        }
        self.tracers = (
            TracerWatcher(arbiter.tasks_in_use, self.tracer_changed)
            if yield_to_tracers and backend.real_tasks
            else None
        )
        self.probe = probe or {}  # what the backend found at start (shown at /v1/host)
        self.retention = retention
        self.clock = clock
        self.tokens: dict[str, str] = journal.tokens()  # digest -> session id
        self._token_of = {sid: digest for digest, sid in self.tokens.items()}  # the reverse
        self._digests: dict[str, str] = {}  # token -> digest, for tokens recently seen valid
        self.idempotency: dict[str, tuple[int, str]] = {}  # key -> (status, body)
        self._remembered: deque[tuple[float, str]] = deque()  # (created_at, key), oldest first
        for key, status, body, created_at in journal.idempotent_responses():
            self.idempotency[key] = (status, body)
            self._remembered.append((created_at, key))
        self.stats = Stats()
        self.metrics = metrics or Metrics()
        self.failed: BaseException | None = None
        self.on_fatal: Callable[[], None] | None = None  # how the daemon gets itself stopped
        self._batch = Batch.empty()
        # allocation id -> its latest staged event and that event's wire record
        self._records: dict[str, tuple[Event, dict[str, Any]]] = {}
        self._pending: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that runs the commits
        self._since_snapshot = 0
        self.snapshot_every = snapshot_every
        # The snapshot child, while one writes: (pid, its pidfd, seq, event id).
        self._snapshotting: tuple[int, int, int, int] | None = None
        # Set by tests and benchmarks to learn when a background snapshot was adopted.
        self.snapshot_written: asyncio.Future[bool] | None = None
        self._since_prune = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._remeasure_scheduled = False
        self.hub.published_id = arbiter.event_id

    # -- start and stop

    def start(self) -> None:
        """Give every lease a grace period, arm again what the journal says is installed, find
        who holds registers outside debugregd, and start the sweepers."""
        self.stage({"op": "grace", "now": self.clock()})
        # Settings that decide admission enter as a journaled command, so a replay decides
        # each request under the settings it was decided under.
        settings: dict[str, Any] = {"reserved_for_ptrace": self.reserve_for_ptrace}
        settings.update(self.session_limits)
        changed = {k: v for k, v in settings.items() if getattr(self.arbiter, k) != v}
        if changed:
            self.apply({"op": "configure", **changed})
        if self.tracers is None:  # not yielding any more: nothing stays held back for a tracer
            for tid in sorted(self.arbiter.traced):
                self.apply({"op": "untrace", "tid": tid})
        self.apply({"op": "rearm"})
        self.remeasure(scan=True)
        if self.tracers is not None:
            self.tracers.start()
        if self.tasks is not None:
            for tid in sorted(self.arbiter.tasks_in_use()):
                self.tasks.watch(tid)
        self._tasks.append(asyncio.create_task(self._sweep_expiry(), name="expiry-sweeper"))
        self._tasks.append(asyncio.create_task(self._poll_backend(), name="backend-poller"))
        self._tasks.append(asyncio.create_task(self._watch_outside(), name="outside-watcher"))

    async def stop(self) -> None:
        """Stop the sweepers, flush, snapshot, and close the journal cleanly."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stop_snapshotting()
        if self.failed is None:  # the hits since the last report, so a clean stop loses none
            hits = self.backend.poll_hits()
            self.backend.resolve(hits)
            await self._report_hits(hits)
        self.hub.close()
        if self.tasks is not None:
            self.tasks.close()
        if self.tracers is not None:
            self.tracers.close()
        if self.failed is None:
            self._flush()
        if self.failed is None:
            try:
                self.journal.write_snapshot(self.arbiter.event_id, self.arbiter.snapshot())
            except Exception as exc:  # every command is journaled: a restart replays them
                log.warning("no snapshot at stop (%s); the next start replays the journal", exc)
        try:
            self.journal.close(merge=self.failed is None)
        except Exception as exc:  # the WAL keeps every commit; the next start merges it
            log.warning("journal not merged at stop (%s); the next start merges it", exc)
        self.backend.close()

    # -- running commands

    def apply(self, command: Command) -> tuple[Any, asyncio.Future[None]]:
        """Run a command now and stage it for the journal; await the future before answering.

        Raises CoreError (nothing changed, nothing journaled) when the arbiter refuses.
        """
        if self.failed is not None:
            raise JournalFailed("the journal failed; the daemon is shutting down")
        now = self.clock()
        command["now"] = now
        self._expire(now)
        started = time.perf_counter()
        try:
            for _ in range(KERNEL_TRIES):
                try:
                    result, events = self._execute(command)
                    break
                except KernelRefused as refused:
                    # Nothing changed; record who holds the room, then decide again on that.
                    self.observe(refused.measured, now)
            else:
                raise Refused(
                    "the kernel keeps refusing although it measured room: users outside "
                    "debugregd are taking and releasing debug registers; retry",
                    [],
                )
        except Refused:
            self.stats.refused(command)
            raise
        finally:
            self.metrics.decisions.observe(time.perf_counter() - started)
        if self.tasks is not None:
            self._watch_new_task(command)
        return result, self.stage(command, events)

    def _execute(self, command: Command) -> Outcome:
        """Run `command` on the arbiter, writing the kernel's answers into it (for replay)."""
        kernel = self.kernel
        kernel.begin()
        outcome = execute(self.arbiter, command)
        if kernel.answers:
            command["kernel"] = kernel.answers
        return outcome

    def observe(self, measured: Measurement, now: float | None = None) -> None:
        """Journal what users outside debugregd were measured to hold, if that changes the
        arbiter's record of them (the same measurement again is not journaled)."""
        if not self.arbiter.outside_after(measured):
            return
        command: Command = {"op": "observe", "measured": measured.to_dict()}
        command["now"] = self.clock() if now is None else now
        _, events = self._execute(command)
        self.stage(command, events)

    def remeasure(self, *, scan: bool = False) -> None:
        """Measure again the targets that have outside holders (and with `scan`, every CPU for
        users CPU-wide), recording what changed."""
        targets = {
            budget: Targets(found["cpus"], found["tasks"], found["others"])
            for budget, found in self.arbiter.outside_targets().items()
        }
        if scan:
            for budget in self.arbiter.budgets:
                targets.setdefault(budget, Targets()).cpus.update(self.arbiter.all_cpus)
        if not targets:
            return
        try:
            measured = self.backend.measure(targets)
        except OSError as exc:
            log.warning("measuring users outside debugregd failed: %s", exc)
            return
        for m in measured:
            self.observe(m)

    def task_exited(self, tid: int) -> None:
        """Task `tid` exited: its allocations expire (a journaled fact)."""
        self.backend.forget_task(tid)
        if self.failed is not None or tid not in self.arbiter.tasks_in_use():
            return
        self.apply({"op": "task_exited", "tid": tid})

    def tracer_changed(self, tid: int, tracer: int) -> None:
        """A debugger attached to (or, `tracer` 0, detached from) task `tid` (a journaled
        fact): with --yield-to-tracers, the task's holders below ptrace make room for it."""
        if self.failed is not None:
            return
        if tracer:
            self.apply({"op": "trace", "tid": tid, "tracer": describe(tracer)})
        elif tid in self.arbiter.traced:
            self.apply({"op": "untrace", "tid": tid})

    def _watch_new_task(self, command: Command) -> None:
        assert self.tasks is not None
        op = command["op"]
        if op == "allocate":
            tid = command["request"]["scope"].get("tid")
        elif op == "set_debugregs":
            tid = command["tid"]
        else:
            return
        if tid is not None and self.tasks.watch(tid) and self.tracers is not None:
            # Traced already when first allocated for: the connector told nobody.
            self.tracers.check_one(tid)

    async def run(self, command: Command) -> Any:
        """`apply`, then wait for the commit."""
        result, committed = self.apply(command)
        await committed
        return result

    def stage(
        self,
        command: Command,
        events: list[Event] | None = None,
    ) -> asyncio.Future[None]:
        """Queue a command (already applied) and its events for the next group commit."""
        batch = self._batch
        batch.commands.append(wire.dumps(command))
        records = self._records
        for ev in events or ():
            self._count(ev)
            if ev.type in FREEING and self.arbiter.outside:
                self._remeasure_soon()
            data = wire.event(ev)
            batch.events.append(StoredEvent(ev.id, ev.type, ev.session, wire.dumps(data)))
            if ev.type == EventType.SESSION_CLOSED and ev.session is not None:
                batch.revoked.append(ev.session)
            record = data.get("allocation")
            if record is not None:
                if len(records) >= RECORD_CACHE:
                    records.clear()
                records[record["id"]] = (ev, record)
        return self._commit_soon()

    def record(self, alloc: Allocation, *, kernel_visible: bool) -> dict[str, Any]:
        """`alloc`'s wire record (`wire.record`), for the response to the command that just
        changed it: the record its latest event carried, while that is still how it is.

        Building the record again cost as much as the arbiter's decision, on every allocate and
        release. Nothing may change the returned dict.
        """
        latest = self._records.get(alloc.id)
        if latest is None or not latest[0].describes(alloc):
            return wire.record(alloc.to_dict(), kernel_visible=kernel_visible)
        record = latest[1]
        if not kernel_visible and record["space"] == "kernel":
            return {**record, "address": None}
        return record

    def session_of_token(self, token: str) -> Session | None:
        """The open session `token` belongs to, if any."""
        digest = self._digests.get(token)
        if digest is None:
            # SHA-256 through OpenSSL cost more than a dictionary on every request; a valid
            # token's digest is kept (a bounded set), so its next request looks it up directly.
            digest = token_digest(token)
            if digest in self.tokens:
                if len(self._digests) >= TOKEN_CACHE:
                    self._digests.clear()
                self._digests[token] = digest
        sid = self.tokens.get(digest)
        return None if sid is None else self.arbiter.sessions.get(sid)

    def add_token(self, session_id: str, digest: str) -> None:
        """A session's token digest; it commits with the command that opened the session."""
        self._batch.tokens.append((session_id, digest))

    def remember(self, key: str, status: int, body: str) -> None:
        """Record an idempotent response; it commits with the command that produced it."""
        now = self.clock()
        self.idempotency[key] = (status, body)
        self._remembered.append((now, key))
        self._batch.idempotency.append((key, status, body, now))

    async def barrier(self) -> None:
        """Wait until everything staged so far is committed."""
        if self._batch:
            await self._commit_soon()

    def uncommitted(self) -> asyncio.Future[None] | None:
        """The commit of everything staged so far, or None when nothing is waiting for one.

        Once the journal has failed, a future that fails: the arbiter may hold changes that were
        never journaled, so nothing read from it may be answered (`api/commit.py`)."""
        if self._batch or self.failed is not None:
            return self._commit_soon()
        return None

    def _commit_soon(self) -> asyncio.Future[None]:
        loop = self._loop
        if loop is None:  # asyncio.get_running_loop() makes a getpid system call each time
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Commit the batch of this loop tick, then answer, publish and arm, in event order."""
        self._flush_scheduled = False
        batch, self._batch = self._batch, Batch.empty()
        pending, self._pending = self._pending, []
        if self.failed is not None:  # staged after the failure: refused like the rest
            self._refuse(pending)
            return
        if batch:
            started = time.perf_counter()
            try:
                self.journal.write(batch)
            except Exception as exc:  # a journal that cannot commit must not keep serving
                self.stats.commit_failures += 1
                self._fail(exc, "could not commit")
                self._refuse(pending)
                return
            self.metrics.commits.observe(time.perf_counter() - started)
            if batch.tokens or batch.revoked:
                self._commit_tokens(batch)
            self._since_snapshot += len(batch.commands)
            self._since_prune += len(batch.events)
        for future in pending:
            if not future.done():
                future.set_result(None)
        if batch.events:
            self.hub.publish(batch.events)
        try:
            self._maintain()
        except Exception as exc:  # the batch committed; the journal will not take more
            self._fail(exc, "could not write a snapshot or prune")

    def _commit_tokens(self, batch: Batch) -> None:
        # A session has one token: a new one (a retried open) replaces the old, as in the
        # journal's table, and a closed session's is revoked.
        tokens, token_of = self.tokens, self._token_of
        for session_id, digest in batch.tokens:
            old = token_of.get(session_id)
            if old is not None:
                tokens.pop(old, None)
            tokens[digest] = session_id
            token_of[session_id] = digest
        for session_id in batch.revoked:
            old = token_of.pop(session_id, None)
            if old is not None:
                tokens.pop(old, None)

    # -- a journal that fails (a full disk, an I/O error): fail-stop

    def _fail(self, exc: Exception, what: str) -> None:
        """Stop taking changes, say why once, and have the daemon stopped.

        Nothing after the last commit is journaled or acknowledged, so a restart (once the
        cause is fixed) recovers every change a client was told about.
        """
        self.failed = exc
        code = getattr(exc, "sqlite_errorname", None)
        log.critical(
            "journal %s %s: %s%s; every change since its last commit is refused (503) and the "
            "daemon stops; fix the cause (e.g. free space on its disk) and start it again, "
            "which recovers everything acknowledged",
            self.journal.path,
            what,
            exc,
            f" ({code})" if code else "",
        )
        if self.on_fatal is not None:
            self.on_fatal()

    @staticmethod
    def _refuse(pending: list[asyncio.Future[None]]) -> None:
        for future in pending:
            if not future.done():
                future.set_exception(JournalFailed("the journal could not commit this change"))
                future.exception()  # a command staged by a sweeper has no one to await it

    def _maintain(self) -> None:
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            self.prune(self.clock())
        if self._since_snapshot >= self.snapshot_every and self._snapshotting is None:
            self._since_snapshot = 0
            self._snapshot_in_background()

    # -- snapshots, written by a child process (Redis's BGSAVE): the loop never stalls on them

    def _snapshot_in_background(self) -> None:
        """Fork: the child holds the arbiter as of the commit just made (its memory is a
        copy-on-write image), encodes it and writes it beside the journal, synced; the loop goes
        on, and adopts the file (`_snapshot_written`) once the child has exited cleanly.

        Building and encoding a snapshot takes seconds at 100,000 allocations: on the loop it
        was the daemon's p99. The child runs only Python and C code that takes no lock another
        thread of this process could hold (it logs nothing), and ends with os._exit."""
        seq, event_id = self.journal.last_seq, self.arbiter.event_id
        path = self.journal.snapshot_path(seq)
        loop = asyncio.get_running_loop()
        try:
            pidfd_open = os.pidfd_open
            pid = os.fork()
        except (OSError, AttributeError) as exc:
            log.warning("cannot fork for a snapshot (%s): writing it on the loop", exc)
            self.journal.write_snapshot(event_id, self.arbiter.snapshot())
            return
        if pid == 0:  # the child
            code = 1
            try:
                _write_snapshot(self.arbiter, path)
                code = 0
            finally:
                os._exit(code)
        pidfd = pidfd_open(pid)
        self._snapshotting = (pid, pidfd, seq, event_id)
        loop.add_reader(pidfd, self._snapshot_written)

    def _snapshot_written(self) -> None:
        """The snapshot child exited: adopt its file, or say it failed (the next one retries)."""
        assert self._snapshotting is not None
        pid, pidfd, seq, event_id = self._snapshotting
        self._snapshotting = None
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            log.warning("the snapshot child failed (wait status %d); the next one retries", status)
        elif self.failed is None:
            try:
                self.journal.adopt_snapshot(seq, event_id)
            except Exception as exc:  # the journal will not take it: fail-stop, as a commit
                self._fail(exc, "could not record a snapshot")
        if self.snapshot_written is not None and not self.snapshot_written.done():
            self.snapshot_written.set_result(status == 0)

    def _stop_snapshotting(self) -> None:
        """A snapshot still being written is abandoned (the stop writes its own)."""
        if self._snapshotting is None:
            return
        pid, pidfd, _, _ = self._snapshotting
        self._snapshotting = None
        with contextlib.suppress(ValueError, RuntimeError):  # the loop may be closing
            asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def prune(self, now: float) -> None:
        """Apply retention: the journal's oldest events, and idempotency keys older than
        IDEMPOTENCY_TTL_S, in memory as in the journal (a restart must not change the answer)."""
        before = now - IDEMPOTENCY_TTL_S
        self.journal.prune(self.retention, before)
        remembered = self._remembered
        while remembered and remembered[0][0] < before:
            _, key = remembered.popleft()
            self.idempotency.pop(key, None)

    def _count(self, ev: Event) -> None:
        stats = self.stats
        stats.events[ev.type] = stats.events.get(ev.type, 0) + 1
        if ev.type == EventType.INSTALLED:
            stats.allocations += 1
        elif ev.type == EventType.EVICTED:
            stats.evictions += 1

    # -- time and hardware

    def _expire(self, now: float) -> None:
        """Leases that ran out are expired before anything else happens at `now`."""
        due = self.arbiter.next_expiry()
        if due is not None and due <= now:
            command: Command = {"op": "tick", "now": now}
            _, events = self._execute(command)
            self.stage(command, events)

    async def _sweep_expiry(self) -> None:
        while True:
            due = self.arbiter.next_expiry()
            delay = 1.0 if due is None else min(1.0, max(0.0, due - self.clock()))
            await asyncio.sleep(delay)
            if self.failed is None:
                self._expire(self.clock())

    def _remeasure_soon(self) -> None:
        """Registers were freed where users outside hold some: they may have left too."""
        if not self._remeasure_scheduled:
            self._remeasure_scheduled = True
            asyncio.get_running_loop().call_soon(self._remeasure_now)

    def _remeasure_now(self) -> None:
        self._remeasure_scheduled = False
        if self.failed is None:
            self.remeasure()

    async def _watch_outside(self) -> None:
        """Measure outside holders again every `outside_interval` seconds (only targets that
        have one), and every CPU every `outside_scan` seconds (0: never) to find users CPU-wide
        before anyone is refused; forget exited tasks now and then."""
        loop = asyncio.get_running_loop()
        next_scan = next_sweep = loop.time()
        while True:
            await asyncio.sleep(self.outside_interval)
            if self.failed is not None:
                continue
            now = loop.time()
            scan = self.outside_scan > 0 and now >= next_scan
            if scan:
                next_scan = now + self.outside_scan
            self.remeasure(scan=scan)
            if self.tasks is not None and now >= next_sweep:
                next_sweep = now + TASK_SWEEP_S
                self.tasks.keep_only(self.arbiter.tasks_in_use())

    async def _evict_lost(self, allocation: str) -> None:
        reason = "the kernel took its registers back: a user outside debugregd took them"
        with contextlib.suppress(CoreError, JournalFailed):
            await self.run({"op": "evict", "allocation": allocation, "reason": reason})

    async def _poll_backend(self) -> None:
        """Every `hit_interval` seconds: one `hit` event per allocation hit since the last, its
        call sites named (ELF symbols are read in a thread of their own, off the loop), all in
        one commit; and the watchpoints the kernel took back are evicted."""
        loop = asyncio.get_running_loop()
        symbols = ThreadPoolExecutor(max_workers=1, thread_name_prefix="debugregd-symbols")
        try:
            while True:
                await asyncio.sleep(self.hit_interval)
                if self.failed is not None:
                    continue
                for wp in self.backend.lost():
                    for alloc in list(wp.holders):
                        await self._evict_lost(alloc.id)
                hits = self.backend.poll_hits()
                if hits:
                    await loop.run_in_executor(symbols, self.backend.resolve, hits)
                    await self._report_hits(hits)
        finally:
            symbols.shutdown(wait=False, cancel_futures=True)

    async def _report_hits(self, hits: list[Hit]) -> None:
        committed: asyncio.Future[None] | None = None
        for hit in hits:
            if self.failed is not None:
                return
            with contextlib.suppress(CoreError):
                command = {"op": "report_hit", "allocation": hit.allocation, "data": hit.data}
                _, committed = self.apply(command)
        if committed is not None:
            with contextlib.suppress(JournalFailed):
                await committed


def _write_snapshot(arbiter: Arbiter, path: Path) -> None:
    """In the snapshot child: the arbiter, encoded, written whole and synced, then renamed into
    place (so a file at `path` is always complete)."""
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "wb") as out:
        out.write(wire.encode(arbiter.snapshot()))
        out.flush()
        os.fsync(out.fileno())
    os.rename(partial, path)

"""The daemon against a fake kernel (the sim backend) with users outside debugregd coming and going:
whatever happens, nothing the kernel refused is installed, the ptrace guarantee holds against the
daemon's own holders, every operation emits a bounded number of events and journals a bounded
number of commands, and when the outside users leave, the waiters get their room back."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from debugregd.backends import SimBackend
from debugregd.backends.sim import NoRoomToInject
from debugregd.core import Arbiter, CoreError, Refused, State
from debugregd.hub import EventHub
from debugregd.runtime import KERNEL_TRIES, Runtime
from debugregd.store.journal import Journal
from tests.core.oracle import demand, fits_after_evicting_lower, holders

NCPUS = 2
TIDS = (1, 2, 3)
PRIORITIES = (100, 300, 700, 900)
USER = 0x7FFD_1000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class DaemonAgainstAFakeKernel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.sim = SimBackend(ncpus=NCPUS)
        self.rt = Runtime(
            Arbiter(ncpus=NCPUS),
            Journal(Path(self.dir.name) / "journal.sqlite3"),
            EventHub(),
            self.sim,
            retention=100_000,
            clock=self.clock,
        )
        self.session = self.step(
            {
                "op": "open_session",
                "name": "machine",
                "ttl_s": 86_400,
                "max_priority": 1000,
                "allow_non_evictable": True,
                "allow_kernel": False,
            }
        ).id
        self.slot = 0

    def teardown(self) -> None:
        self.loop.run_until_complete(self.rt.barrier())
        self.rt.journal.close()
        self.loop.close()
        self.dir.cleanup()

    @property
    def arb(self) -> Arbiter:
        return self.rt.arbiter

    def step(self, command: dict[str, Any]) -> Any:
        """One command, as a request would run it, with what it may cost checked."""
        return self.bounded(lambda: self.rt.apply(command)[0])

    def bounded(self, action: Any) -> Any:
        live = len(self.arb.allocations)
        outside_before = len(self.arb.outside)
        first_event = self.arb.event_id
        commands_before = len(self.rt._batch.commands)
        self.clock.now += 1

        async def on_the_loop() -> Any:
            return action()

        try:
            result = self.loop.run_until_complete(on_the_loop())
        finally:
            events = self.arb.event_id - first_event
            commands = len(self.rt._batch.commands) - commands_before
            self.loop.run_until_complete(self.rt.barrier())
        outside = outside_before + len(self.arb.outside)
        # An allocation is at most evicted, reinstalled and moved once in one operation; the
        # request's own event, and each outside target appearing, changing or going.
        assert events <= 3 * (live + 1) + 2 * outside + 2 * NCPUS + 2, events
        # The command, a tick before it, and one measurement per refused try.
        assert commands <= KERNEL_TRIES + 2, commands
        return result

    # -- clients

    @rule(
        where=st.one_of(st.sampled_from(TIDS), st.just("cpu0"), st.just("all")),
        priority=st.sampled_from(PRIORITIES),
        wait=st.booleans(),
        on_evict=st.sampled_from(["release", "wait"]),
        evictable=st.booleans(),
        reservation=st.booleans(),
        length=st.sampled_from([8, 8, 12]),
    )
    def allocate(
        self,
        where: int | str,
        priority: int,
        wait: bool,
        on_evict: str,
        evictable: bool,
        reservation: bool,
        length: int,
    ) -> None:
        if isinstance(where, int):
            scope: dict[str, Any] = {"kind": "task", "tid": where}
        elif reservation:
            return  # a reservation is for a task (its debugger writes the registers)
        elif where == "cpu0":
            scope = {"kind": "cpu", "cpu": 0}
        else:
            scope = {"kind": "cpus", "cpus": "all"}
        self.slot += 1
        request = {
            "scope": scope,
            "address": USER + 16 * self.slot + (4 if length == 12 else 0),
            "length": length,
            "access": "write",
            "priority": priority,
            "evictable": evictable or priority < 900,
            "on_evict": on_evict,
            "wait": wait,
            "label": "",
            "arm": not reservation,
        }
        try:
            alloc = self.step({"op": "allocate", "session": self.session, "request": request})
            if reservation and alloc.state is State.INSTALLED:
                # The debugger behind a reservation writes its registers through ptrace at once:
                # the kernel holds them, outside debugregd.
                assert isinstance(where, int)
                self.sim.inject("dr", where, tuple(range(NCPUS)), len(alloc.chunks))
        except Refused as refused:
            if priority >= 700:  # the ptrace guarantee: only these may be in the way
                for b in refused.blockers:
                    assert b.get("outside") or b["priority"] >= priority or not b["evictable"], b
        except CoreError:
            pass

    @precondition(lambda self: self.arb.allocations)
    @rule(data=st.data(), admin=st.booleans())
    def release_or_evict(self, data: st.DataObject, admin: bool) -> None:
        aid = data.draw(st.sampled_from(sorted(self.arb.allocations)))
        if admin:
            command = {"op": "evict", "allocation": aid, "reason": "admin"}
        else:
            command = {"op": "release", "allocation": aid, "session": self.session}
        with contextlib.suppress(CoreError):
            self.step(command)

    # -- the world outside

    @rule(
        tid=st.one_of(st.none(), st.sampled_from(TIDS)),
        cpus=st.sampled_from([(0,), (1,), (0, 1)]),
        registers=st.integers(1, 3),
    )
    def an_outside_user_takes_registers(
        self, tid: int | None, cpus: tuple[int, ...], registers: int
    ) -> None:
        if tid is not None:
            # A debugger's breakpoints (ptrace) follow its task on every CPU; the daemon keeps
            # one count per task, so a user bound to some CPUs of a task is outside its model.
            cpus = tuple(range(NCPUS))
        with contextlib.suppress(NoRoomToInject):
            self.sim.inject("dr", tid, cpus, registers)

    # Outside users come often, so that the kernel refuses what the daemon believed free.
    another_outside_user_takes_registers = an_outside_user_takes_registers

    @precondition(lambda self: self.sim.injected)
    @rule(data=st.data())
    def an_outside_user_leaves(self, data: st.DataObject) -> None:
        self.sim.remove(data.draw(st.sampled_from(sorted(self.sim.injected))))

    @rule(scan=st.sampled_from([False, False, False, True]))
    def the_daemon_measures(self, scan: bool) -> None:
        self.bounded(lambda: self.rt.remeasure(scan=scan))

    @rule(tid=st.sampled_from(TIDS))
    def a_task_exits(self, tid: int) -> None:
        self.sim.exit_task(tid)
        self.bounded(lambda: self.rt.task_exited(tid))
        self.sim.exited.discard(tid)  # a new task with that number, for the rules that follow

    @rule()
    def every_outside_user_leaves(self) -> None:
        for injected in list(self.sim.injected):
            self.sim.remove(injected)
        self.bounded(lambda: self.rt.remeasure(scan=True))
        assert self.arb.outside == {}
        hs = holders(self.arb)
        for alloc in self.arb.waiting():
            if alloc.pool in self.arb.recheck:
                continue  # an admin just evicted it: reconsidered at the next operation
            # Room came back: only what debugregd itself holds can keep a waiter waiting.
            assert not fits_after_evicting_lower(self.arb, hs, demand(self.arb, alloc.request()))

    # -- what must always hold

    @invariant()
    def what_is_installed_is_armed_and_nothing_else(self) -> None:
        installed = {
            a.id for a in self.arb.allocations.values() if a.state is State.INSTALLED and a.arm
        }
        assert set(self.sim.armed_allocations()) == installed

    @invariant()
    def no_register_file_is_overfilled(self) -> None:
        for budget in self.arb.budgets.values():
            for c in range(NCPUS):
                assert budget.used(c) <= budget.slots
        regs = self.sim.registers["dr"]
        for c in range(NCPUS):
            assert regs.cpu[c] + regs.fullest_task(c) <= regs.slots


def test_the_daemon_stays_truthful_against_a_fake_kernel_with_outside_users() -> None:
    run_state_machine_as_test(
        DaemonAgainstAFakeKernel,
        settings=settings(
            max_examples=200,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_a_waiter_reinstalled_never_takes_the_room_a_debuggers_reservation_was_promised() -> None:
    """Found by the machine above: an outside user holds 2 registers of CPU 0 the daemon never
    measured (nothing was refused); a CPU-wide holder of the other 2 is evicted by an admin
    (on_evict: wait). A reservation for task 1 is then admitted, and in the same operation the
    waiter comes back: the core's count (2 + 1) fits, and the kernel took the waiter since it
    holds nothing of a reservation, so the debugger's own write found no room. The kernel is now
    asked to admit the reservation again once the waiter is armed: it refuses, the outside user
    is measured, and the waiter keeps waiting."""
    machine = DaemonAgainstAFakeKernel()
    try:
        machine.an_outside_user_takes_registers(tid=None, cpus=(0,), registers=2)
        held = dict(where="cpu0", priority=100, wait=False, on_evict="wait", evictable=False)
        machine.allocate(**held, reservation=False, length=12)  # type: ignore[arg-type]
        (waiter,) = machine.arb.allocations
        machine.step({"op": "evict", "allocation": waiter, "reason": "admin"})
        # The debugger's registers are written at once (the machine's rule injects them).
        machine.allocate(
            where=1,
            priority=100,
            wait=False,
            on_evict="release",
            evictable=False,
            reservation=True,
            length=8,
        )
        assert machine.arb.allocation(waiter).state is State.WAITING
        assert [r["target"] for r in machine.arb.outside_records()] == [{"kind": "cpu", "cpu": 0}]
        machine.no_register_file_is_overfilled()
    finally:
        machine.teardown()

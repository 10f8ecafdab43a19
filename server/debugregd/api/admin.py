"""Host-wide views and operator actions: host, CPUs, tasks, raw debug registers, state, sim."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from debugreg import schema
from debugregd import __version__, wire
from debugregd.api.commit import change
from debugregd.api.context import Caller, Daemon, admin_of, daemon_of, session_of
from debugregd.api.document import problems
from debugregd.api.responses import Json
from debugregd.backends.sim import NoRoomToInject, SimBackend
from debugregd.core import InvalidRequest, NotFound, Refused, Scope

router = APIRouter(prefix="/v1", tags=["host"])

# Path parameters, bounded as the bodies' fields are (one rule for a thread id everywhere).
ThreadId = Annotated[int, Path(ge=1, le=schema.TID_MAX, description="a thread id")]
CpuNumber = Annotated[int, Path(ge=0, le=schema.CPU_MAX, description="a CPU number")]


def host_info(d: Daemon) -> dict[str, Any]:
    arb = d.arbiter
    return {
        "profile": arb.profile.name,
        "cpus": arb.ncpus,
        "pools": dict(arb.profile.pools),
        "mode_switching": arb.mode_switching,
        "backend": d.rt.backend.name,
        "version": __version__,
        "probe": d.rt.probe,
        "outside": arb.outside_records(),
        "reserve_for_ptrace": arb.reserved_for_ptrace,
        "yield_to_tracers": d.rt.tracers is not None,
        "traced": [{"tid": tid, "tracer": tracer} for tid, tracer in sorted(arb.traced.items())],
    }


@router.get("/host", response_model=schema.Host, summary="The host's profile, CPUs and pools")
async def host(request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    return host_info(d)


@router.get(
    "/cpus", summary="Every CPU's register files, index by index (admin)", responses=problems(401)
)
async def cpus(request: Request) -> list[dict[str, Any]]:
    d = daemon_of(request)
    admin_of(request)
    return [d.arbiter.cpu_view(c) for c in range(d.arbiter.ncpus)]


@router.get(
    "/cpus/{cpu}", summary="One CPU's register files (admin)", responses=problems(401, 404, 422)
)
async def cpu(cpu: CpuNumber, request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    admin_of(request)
    return d.arbiter.cpu_view(cpu)


@router.get(
    "/tasks/{tid}", summary="A task's allocations and indices (admin)", responses=problems(401, 422)
)
async def task(tid: ThreadId, request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    admin_of(request)
    view = d.arbiter.task_view(tid)
    view["allocations"] = [wire.record(a) for a in view["allocations"]]
    return view


def _raw(d: Daemon, tid: int, who: Caller) -> dict[str, Any]:
    # The core checks the ptrace grant a session needs to read them, as to write them.
    out = d.arbiter.debugregs(tid, None if who.admin else who.session_id)
    for n in range(4):
        out[f"dr{n}"] = wire.hex_address(out[f"dr{n}"])
    if out["session"] is not None and not who.owns(out["session"]):
        # Another session's registers: what the task's debug registers hold, not whose.
        out["session"], out["allocations"] = None, {}
    return out


@router.get(
    "/tasks/{tid}/debugregs",
    response_model=schema.DebugRegsState,
    responses=problems(401, 403, 422),
    summary="DR0-DR3 and DR7 as last written (ptrace grant or admin)",
)
async def get_debugregs(tid: ThreadId, request: Request) -> dict[str, Any]:
    return _raw(daemon_of(request), tid, session_of(request))


@router.put(
    "/tasks/{tid}/debugregs",
    response_model=schema.DebugRegsState,
    responses=problems(401, 403, 404, 409, 422, 429),
    summary="Write DR0-DR3 and DR7 as ptrace would, at ptrace priority, all or nothing",
)
async def put_debugregs(tid: ThreadId, body: schema.DebugRegs, request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    who = session_of(request)  # the core decides whether it holds the ptrace grant
    change(
        request,
        {
            "op": "set_debugregs",
            "session": who.session_id,
            "tid": tid,
            "addresses": [body.dr0, body.dr1, body.dr2, body.dr3],
            "dr7": body.dr7,
        },
    )
    return _raw(d, tid, who)


@router.get(
    "/state",
    response_model=schema.Snapshot,
    responses=problems(401),
    summary="Everything, consistent with `event_id` (admin)",
)
async def state(request: Request) -> Json:
    d = daemon_of(request)
    admin_of(request)
    arb = d.arbiter
    body = {
        "event_id": arb.event_id,
        "host": host_info(d),
        "sessions": [s.to_dict() for s in arb.sessions.values()],
        "allocations": [wire.record(a.to_dict()) for a in arb.allocations.values()],
        "waiting": [a.id for a in arb.waiting()],
        "cpus": [arb.cpu_view(c) for c in range(arb.ncpus)],
        "outside": arb.outside_records(),
    }
    return Json(body)


@router.get("/stats", summary="Monotonic counters for rate charts (admin)", responses=problems(401))
async def stats(request: Request) -> dict[str, int]:
    d = daemon_of(request)
    admin_of(request)
    s = d.rt.stats
    return {
        "allocations_total": s.allocations,
        "evictions_total": s.evictions,
        "refusals_total": s.refusals,
        "event_id": d.arbiter.event_id,
    }


@router.post(
    "/sim/accesses",
    response_model=schema.SimAccessResult,
    responses=problems(401, 404, 422),
    summary="Simulate a memory access; matching watchpoints report a hit (admin, sim backend)",
)
async def sim_access(body: schema.SimAccess, request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    admin_of(request)
    _sim(d, "simulated accesses")
    hits = change(
        request,
        {
            "op": "access",
            "cpu": body.cpu,
            "tid": body.tid,
            "address": body.address,
            "length": body.length,
            "access": body.access,
            "ip": body.ip,
        },
    )
    return {"hits": hits}


@router.get(
    "/outside",
    response_model=schema.OutsideList,
    responses=problems(401),
    summary="Registers held by users outside debugregd, as last measured (admin)",
)
async def outside(request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    admin_of(request)
    return {"outside": d.arbiter.outside_records()}


@router.post(
    "/outside/measure",
    response_model=schema.OutsideList,
    responses=problems(401),
    summary="Measure now every CPU and every target with outside holders (admin)",
)
async def measure_outside(request: Request) -> dict[str, Any]:
    admin_of(request)
    daemon_of(request).rt.remeasure(scan=True)
    return await outside(request)  # what GET /v1/outside answers now


def _sim(d: Daemon, what: str = "simulated users outside debugregd") -> SimBackend:
    """The sim backend, or a 422 saying that `what` exist only with it."""
    backend = d.rt.backend
    if not isinstance(backend, SimBackend):
        raise InvalidRequest(f"{what} exist only with --backend sim")
    return backend


@router.post(
    "/sim/outside",
    status_code=201,
    response_model=schema.SimOutside,
    responses=problems(401, 404, 409, 422),
    summary="A simulated user outside debugregd takes registers in the fake kernel (admin, sim)",
)
async def sim_outside(body: schema.SimOutsideRequest, request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    admin_of(request)
    sim = _sim(d)
    arb = d.arbiter
    # The allocation's scope, read as the core reads it (the same journaled form).
    scope = Scope.from_dict(body.scope.model_dump(exclude_none=True))
    tid, cpus = scope.tid, arb.cpus_of(scope)
    for cpu in cpus:
        arb.check_cpu(cpu)
    pool = body.pool or arb.profile.data_pool
    if pool not in sim.registers:
        raise NotFound(f"no pool {pool!r}; this host has {', '.join(sim.registers)}")
    try:
        injected = sim.inject(pool, tid, cpus, body.registers)
    except NoRoomToInject as exc:
        raise Refused(f"the fake kernel refuses the outside user: {exc}", []) from None
    return sim.injected[injected].to_dict()


@router.get(
    "/sim/outside",
    response_model=list[schema.SimOutside],
    responses=problems(401, 422),
    summary="The simulated users outside debugregd (admin, sim backend)",
)
async def sim_outside_list(request: Request) -> list[dict[str, Any]]:
    d = daemon_of(request)
    admin_of(request)
    return [h.to_dict() for h in _sim(d).injected.values()]


@router.delete(
    "/sim/outside/{injected_id}",
    response_model=schema.SimOutside,
    responses=problems(401, 404, 422),
    summary="A simulated user outside debugregd lets its registers go (admin, sim backend)",
)
async def sim_outside_leaves(injected_id: str, request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    admin_of(request)
    try:
        return _sim(d).remove(injected_id).to_dict()
    except KeyError:
        raise NotFound(f"no simulated outside user {injected_id!r}") from None


@router.post(
    "/sim/tasks/{tid}/exit",
    status_code=204,
    responses=problems(401, 422),
    summary="A simulated task exits: its allocations expire (admin, sim backend)",
)
async def sim_task_exits(tid: ThreadId, request: Request) -> None:
    d = daemon_of(request)
    admin_of(request)
    _sim(d).exit_task(tid)
    d.rt.task_exited(tid)

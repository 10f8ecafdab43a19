"""Allocations: request, list, read, release and evict debug registers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from debugreg import schema
from debugregd import wire
from debugregd.api import idempotency, inputs
from debugregd.api.commit import change
from debugregd.api.context import Caller, Daemon, admin_of, daemon_of, session_of
from debugregd.api.document import problems
from debugregd.api.responses import Json
from debugregd.core import Allocation, Forbidden, ScopeKind, parse_priority

router = APIRouter(prefix="/v1", tags=["allocations"])


def render(alloc: Allocation, who: Caller) -> dict[str, Any]:
    return wire.record(alloc.to_dict(), kernel_visible=who.sees_kernel())


def changed(d: Daemon, alloc: Allocation, who: Caller) -> dict[str, Any]:
    """`render` for an allocation the caller's command just changed, whose latest event
    already carries its record (`Runtime.record`)."""
    return d.rt.record(alloc, kernel_visible=who.sees_kernel())


def core_request(body: schema.AllocationRequest) -> dict[str, Any]:
    """The journaled form of a request: plain data the core's `Request.from_dict` reads."""
    return {
        "scope": body.scope.model_dump(exclude_none=True),
        "address": body.address,
        "length": body.length,
        "access": body.access,
        "priority": parse_priority(body.priority),
        "evictable": body.evictable,
        "on_evict": body.on_evict,
        "wait": body.wait,
        "label": body.label,
        "arm": body.arm,
    }


@router.post(
    "/allocations",
    status_code=201,
    response_model=schema.Allocation,
    responses=problems(401, 403, 404, 409, 422, 429),
    summary="Request debug registers: 201 installed or waiting, 409 refused naming the blockers",
    openapi_extra=inputs.documented(schema.AllocationRequest, header="Idempotency-Key"),
)
async def allocate(request: Request) -> Json:
    body = await inputs.body(request, schema.AllocationRequest)
    idempotency_key = inputs.header(request, b"idempotency-key")
    d, who = daemon_of(request), session_of(request)
    if who.session is None:
        raise Forbidden(
            "allocations belong to a session, and the admin key is none: open one with POST "
            "/v1/sessions (the admin key can grant it any priority) and use its token"
        )
    command = {"op": "allocate", "session": who.session_id, "request": core_request(body)}

    def produce() -> tuple[int, dict[str, Any]]:
        return 201, changed(d, change(request, command), who)

    path = "/v1/allocations"
    return idempotency.respond(request, who, path, idempotency_key, body, produce)


@router.get(
    "/allocations",
    response_model=schema.AllocationList,
    responses=problems(401, 403, 422),
    summary="Allocations: a session sees its own, the admin all; live ones unless `state` is given",
)
async def list_allocations(
    request: Request,
    state: Annotated[schema.State | None, Query()] = None,
    session: Annotated[str | None, Query()] = None,
    cpu: Annotated[int | None, Query(ge=0, le=schema.CPU_MAX)] = None,
    tid: Annotated[int | None, Query(ge=1, le=schema.TID_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> Json:
    d, who = daemon_of(request), session_of(request)
    arb = d.arbiter
    if session is not None and not who.owns(session):
        raise Forbidden("a session token lists only its own allocations")
    if not who.admin:
        session = who.session_id
    if session is not None:
        s = arb.sessions.get(session)
        ids = list(s.allocations) if s is not None else []
        pool = [arb.allocations[i] for i in ids if i in arb.allocations]
        pool += [a for a in arb.history.values() if a.session == session]
    else:
        pool = list(arb.allocations.values())
        if state is not None and state not in ("installed", "waiting"):
            pool = list(arb.history.values())
    out = []
    for alloc in pool:
        if state is not None and (alloc.state is None or alloc.state.value != state):
            continue
        if (
            state is None
            and alloc.state is not None
            and alloc.state.value not in ("installed", "waiting")
        ):
            continue
        if cpu is not None and (alloc.watchpoint is None or cpu not in alloc.watchpoint.indices):
            continue
        if tid is not None and (alloc.scope.kind is not ScopeKind.TASK or alloc.scope.tid != tid):
            continue
        out.append(render(alloc, who))
        if len(out) >= limit:
            break
    return Json({"allocations": out, "event_id": arb.event_id})


def _visible(alloc: Allocation, who: Caller) -> None:
    if not who.owns(alloc.session):
        raise Forbidden(f"allocation {alloc.id} belongs to another session")


@router.get(
    "/allocations/{allocation_id}",
    response_model=schema.Allocation,
    responses=problems(401, 403, 404),
    summary="One allocation",
)
async def get_allocation(allocation_id: str, request: Request) -> Json:
    d = daemon_of(request)
    who = session_of(request)
    alloc = d.arbiter.allocation(allocation_id)
    _visible(alloc, who)
    return Json(render(alloc, who))


@router.delete(
    "/allocations/{allocation_id}",
    response_model=schema.Allocation,
    responses=problems(401, 403, 404),
    summary="Release (owner or admin); idempotent",
    openapi_extra=inputs.documented(path="allocation_id"),
)
async def release(request: Request) -> Json:
    allocation_id: str = request.path_params["allocation_id"]
    d, who = daemon_of(request), session_of(request)
    alloc = d.arbiter.allocation(allocation_id)
    if alloc.state is not None and alloc.state.value in ("installed", "waiting"):
        # The core decides whether the caller may release it (its owner, or the admin).
        command = {"op": "release", "allocation": allocation_id, "session": who.session_id}
        return Json(changed(d, change(request, command), who))
    _visible(alloc, who)  # released already: nothing to do, and the answer is a read
    return Json(render(alloc, who))


@router.post(
    "/allocations/{allocation_id}/evict",
    response_model=schema.Allocation,
    responses=problems(401, 404, 409, 422),
    summary="Evict one allocation (admin)",
)
async def evict(allocation_id: str, body: schema.EvictRequest, request: Request) -> Json:
    d = daemon_of(request)
    who = admin_of(request)
    alloc = change(request, {"op": "evict", "allocation": allocation_id, "reason": body.reason})
    return Json(changed(d, alloc, who))


@router.post(
    "/evictions",
    response_model=schema.BulkEvictResult,
    responses=problems(401, 404, 422),
    summary="Evict every installed allocation matching cpu, tid and below_priority (admin)",
)
async def evict_matching(body: schema.BulkEvictRequest, request: Request) -> dict[str, Any]:
    admin_of(request)
    below = None if body.below_priority is None else parse_priority(body.below_priority)
    evicted = change(
        request,
        {
            "op": "evict_matching",
            "reason": body.reason,
            "cpu": body.cpu,
            "tid": body.tid,
            "below_priority": below,
        },
    )
    return {"evicted": evicted}

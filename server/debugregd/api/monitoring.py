"""Health and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from debugreg import schema
from debugregd.api.context import daemon_of
from debugregd.api.document import problems
from debugregd.api.errors import Problem

router = APIRouter(tags=["monitoring"])


@router.get(
    "/healthz",
    response_model=schema.Health,
    responses=problems(503),
    summary="Liveness and readiness: ok, or a 503 problem (starting, stopping, journal failed)",
)
async def healthz(request: Request) -> dict[str, Any]:
    # Only ok or not: anyone may ask, so it names no path, id or count. Once the journal has
    # failed, the app's edge answers every request, this one too (`errors.journal_failed`).
    d = daemon_of(request)
    d.rt  # noqa: B018 (the property is the check: a 503 "starting" until the runtime is up)
    if d.stopping:
        raise Problem(503, "stopping", "Stopping", "the daemon is shutting down; retry later")
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    d = daemon_of(request)
    return Response(generate_latest(d.rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

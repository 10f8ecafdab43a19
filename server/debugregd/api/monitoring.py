"""Health and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from debugreg import schema
from debugregd.api.context import daemon_of

router = APIRouter(tags=["monitoring"])


@router.get("/healthz", response_model=schema.Health, summary="Liveness and readiness")
async def healthz(request: Request) -> dict[str, Any]:
    d = daemon_of(request)
    rt = d.rt
    # The last *published* event: a stream started after it misses nothing.
    return {"status": "ok", "event_id": rt.hub.published_id, "journal": str(rt.journal.path)}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    d = daemon_of(request)
    return Response(generate_latest(d.rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

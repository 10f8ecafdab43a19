"""The API document (openapi.json) held to what the daemon answers.

Each route declares the error statuses it answers itself (`problems`); `install` adds those any
route may answer (the edge's and the server's: a Host not allowed or a malformed header, a late
or too large request, a starting or failed daemon) and documents every error the one way the
daemon sends it: an RFC 9457 `application/problem+json` body of the Problem schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from debugreg import schema
from debugregd.api.hosts import ANY_NAME

PROBLEM = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
TITLES = {
    400: "Bad request: a Host this daemon does not answer, a malformed header, cookie or JSON "
    "body, or a body cut short",
    401: "No credential, or one the daemon does not know",
    403: "The credential lacks the ownership or grant this needs",
    404: "No such session, allocation, CPU or task (or it left the bounded history)",
    408: "The request did not arrive whole within --request-timeout",
    409: "Refused (the blockers are named), not allowed in its state, or an Idempotency-Key "
    "already used for another request",
    413: "The request body is larger than --max-body",
    422: "The request cannot be satisfied as written (the detail names the fields)",
    429: "A per-session limit is reached (`limit` and `maximum` say which)",
    431: "The request head is larger than 64 KiB",
    503: "Starting, stopping, the journal failed, the kernel is out of a resource, or every "
    "connection is busy",
}
# Answered on any route: at the edge (Host, body size, a failed journal), by the connection
# (timeouts, head size, the connection bound) or while the daemon starts.
ANY_ROUTE = (400, 408, 413, 431, 503)
# The Host check and header parsing skip the probes' routes; their bodies are never read.
PROBE_ROUTE = (408, 413, 431, 503)
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying (given where waiting helps)",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers these error statuses itself."""
    return {status: {"model": schema.Problem} for status in statuses}


def install(app: FastAPI) -> None:
    """Document every error response of `app` as the daemon sends it (see the module)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI generates once and keeps the document
            _complete(generate())
        return generate()

    app.openapi = openapi  # type: ignore[method-assign]


def _complete(document: dict[str, Any]) -> None:
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status in PROBE_ROUTE if path in ANY_NAME else ANY_ROUTE:
                responses.setdefault(str(status), {})
            for status, response in responses.items():
                if int(status) < 400:
                    continue
                response["description"] = TITLES.get(int(status), "Error")
                response["content"] = {PROBLEM: {"schema": PROBLEM_REF}}
                if status in ("429", "503"):
                    response["headers"] = RETRY_AFTER
    schemas = document.get("components", {}).get("schemas", {})
    text = str(document.get("paths"))
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"/{unused}'" not in text:
            schemas.pop(unused, None)

"""The sans-IO layer: every API v1 call as plain data, and how to read its answer.

A builder returns a `Call`: method, path, query, JSON body, credential and a `parse` function that
turns a `Reply` (status, headers, bytes) into a schema model or raises the typed error. Nothing
here performs I/O, so `Client` and `AsyncClient` share every request and every parser and differ
only in how they wait for the bytes (httpx's own cut between API and transport).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter, ValidationError

from debugreg import schema
from debugreg.errors import from_reply, invalid_locally

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

Params = Mapping[str, str | int]

# GET, PUT and DELETE may be repeated without changing the outcome; a POST only with a key.
_REPEATABLE = frozenset({"GET", "HEAD", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer as plain values: its status and its body."""

    status: int
    content: bytes


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to make and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Reply], T]
    params: Params | None = None
    body: Any = None
    token: str | None = None
    idempotency_key: str | None = None
    repeatable: bool = False

    @property
    def headers(self) -> dict[str, str]:
        out = {"Accept": "application/json"}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        if self.idempotency_key:
            out["Idempotency-Key"] = self.idempotency_key
        return out

    @property
    def safe_to_retry(self) -> bool:
        """Whether sending it again after a lost answer cannot change anything twice."""
        return self.repeatable or self.method in _REPEATABLE or self.idempotency_key is not None

    def retry(self, attempt: int, limit: int, status: int | None) -> bool:
        """Whether to send it again: after no answer (`status` None) or a 503 (the daemon is
        starting), if that is safe and tries remain."""
        return self.safe_to_retry and attempt < limit and (status is None or status == 503)


@dataclass(frozen=True, slots=True)
class Stream:
    """An SSE stream to follow: path, credential, and the baseline to re-read on `reset`."""

    path: str
    token: str | None
    baseline: Call[Baseline]

    def headers(self, last_event_id: int | None) -> dict[str, str]:
        """Request headers; `Last-Event-ID` resumes after the last event handled."""
        out = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        if last_event_id is not None:
            out["Last-Event-ID"] = str(last_event_id)
        return out


class StreamInterrupted(Exception):
    """A stream answered with a status worth reconnecting for later (5xx)."""


def stream_failure(reply: Reply) -> Exception:
    """What a stream's non-200 answer means: the typed error when it is final (bad credential,
    no such session, bad Last-Event-ID), `StreamInterrupted` when it is a reason to reconnect
    later (5xx: restarting, overloaded)."""
    error = from_reply(reply.status, reply.content)
    return error if reply.status < 500 else StreamInterrupted(str(error))


@dataclass(frozen=True, slots=True)
class Baseline:
    """The allocations a stream's reader can see, and the event id they are consistent with
    (None when the daemon does not say)."""

    allocations: list[schema.Allocation]
    event_id: int | None = None


def build(model: type[M], fields: Mapping[str, Any]) -> M:
    """A request model from keyword fields; invalid input raises `InvalidRequest` before any
    byte is sent, worded as the daemon would word it."""
    try:
        return model.model_validate(dict(fields))
    except ValidationError as exc:
        raise invalid_locally(exc) from None


def given(**fields: Any) -> dict[str, Any]:
    """The keyword fields a caller set; None leaves the daemon's default."""
    return {k: v for k, v in fields.items() if v is not None}


def new_idempotency_key() -> str:
    """A fresh key: a retried POST with it is applied at most once."""
    return uuid.uuid4().hex


# ---------------------------------------------------------------- parsers


def _check(reply: Reply, expected: int) -> None:
    if reply.status != expected:
        # Any other 2xx is still a success the parser below can read.
        if 200 <= reply.status < 300 and expected != 204:
            return
        raise from_reply(reply.status, reply.content)


def _model(model: type[M], expected: int = 200) -> Callable[[Reply], M]:
    def parse(reply: Reply) -> M:
        _check(reply, expected)
        return model.model_validate_json(reply.content)

    return parse


def _adapter(adapter: TypeAdapter[T]) -> Callable[[Reply], T]:
    def parse(reply: Reply) -> T:
        _check(reply, 200)
        return adapter.validate_json(reply.content)

    return parse


def _no_content(reply: Reply) -> None:
    if not 200 <= reply.status < 300:
        raise from_reply(reply.status, reply.content)


def _allocation_list(reply: Reply) -> Baseline:
    listing = _model(schema.AllocationList)(reply)
    return Baseline(listing.allocations, listing.event_id)


def _snapshot_baseline(reply: Reply) -> Baseline:
    snap = _model(schema.Snapshot)(reply)
    return Baseline(snap.allocations, snap.event_id)


_JSON_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
_JSON_OBJECTS: TypeAdapter[list[dict[str, Any]]] = TypeAdapter(list[dict[str, Any]])


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def _json(model: BaseModel) -> Any:
    # Unset optional fields stay off the wire, so the daemon applies its own defaults.
    return model.model_dump(mode="json", exclude_none=True)


def _create(
    path: str,
    answer: type[M],
    request: BaseModel,
    token: str | None,
    idempotency_key: str | None,
) -> Call[M]:
    """A POST that creates something (201). It carries an idempotency key, a fresh one if none
    is given, so that sending it again after a lost answer creates nothing twice."""
    return Call(
        "POST",
        path,
        _model(answer, 201),
        body=_json(request),
        token=token,
        idempotency_key=idempotency_key or new_idempotency_key(),
    )


def _post_fields(
    path: str,
    answer: type[M],
    request: type[BaseModel],
    fields: Mapping[str, Any],
    token: str | None,
) -> Call[M]:
    """A POST of a `request` made of the keyword `fields` given (None: the daemon's default)."""
    return Call(
        "POST", path, _model(answer), body=_json(build(request, given(**fields))), token=token
    )


# ---------------------------------------------------------------- anyone


def health() -> Call[schema.Health]:
    return Call("GET", "/healthz", _model(schema.Health))


def host() -> Call[schema.Host]:
    return Call("GET", "/v1/host", _model(schema.Host))


# ---------------------------------------------------------------- sessions


class Grants(TypedDict, total=False):
    """What a session may do beyond the defaults, each only with the admin key: priorities up
    to `max_priority` (above normal), non-evictable allocations, kernel addresses. None leaves
    the daemon's default."""

    max_priority: int | str | None
    allow_non_evictable: bool | None
    allow_kernel: bool | None


def session_request(name: str, ttl_s: float, grants: Grants) -> schema.SessionRequest:
    """The request to open a session; `grants` come from keywords, so anything else among
    them is the caller's mistake (a TypeError, as for any unknown keyword)."""
    unknown = sorted(grants.keys() - Grants.__annotations__.keys())
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    return build(schema.SessionRequest, given(name=name, ttl_s=ttl_s, **grants))


def open_session(
    request: schema.SessionRequest, token: str | None, idempotency_key: str | None = None
) -> Call[schema.Session]:
    return _create("/v1/sessions", schema.Session, request, token, idempotency_key)


def keepalive(session_id: str, token: str | None) -> Call[schema.Keepalive]:
    # Renewing a lease twice is harmless: it only moves the expiry to now + TTL.
    return Call(
        "POST",
        f"/v1/sessions/{_seg(session_id)}/keepalive",
        _model(schema.Keepalive),
        token=token,
        repeatable=True,
    )


def session_info(session_id: str, token: str | None) -> Call[schema.SessionInfo]:
    return Call("GET", f"/v1/sessions/{_seg(session_id)}", _model(schema.SessionInfo), token=token)


def close_session(session_id: str, token: str | None) -> Call[None]:
    return Call("DELETE", f"/v1/sessions/{_seg(session_id)}", _no_content, token=token)


# ---------------------------------------------------------------- allocations


def allocate(
    request: schema.AllocationRequest, token: str | None, idempotency_key: str | None = None
) -> Call[schema.Allocation]:
    return _create("/v1/allocations", schema.Allocation, request, token, idempotency_key)


def allocations(token: str | None, **filters: str | int | None) -> Call[schema.AllocationList]:
    """The live allocations (or those in `state`) of `session`, on `cpu`, of task `tid`: the
    filters given."""
    return Call(
        "GET",
        "/v1/allocations",
        _model(schema.AllocationList),
        params=given(**filters),
        token=token,
    )


def allocation(allocation_id: str, token: str | None) -> Call[schema.Allocation]:
    return Call(
        "GET", f"/v1/allocations/{_seg(allocation_id)}", _model(schema.Allocation), token=token
    )


def release(allocation_id: str, token: str | None) -> Call[schema.Allocation]:
    return Call(
        "DELETE", f"/v1/allocations/{_seg(allocation_id)}", _model(schema.Allocation), token=token
    )


def evict(allocation_id: str, reason: str, token: str | None) -> Call[schema.Allocation]:
    return Call(
        "POST",
        f"/v1/allocations/{_seg(allocation_id)}/evict",
        _model(schema.Allocation),
        body=_json(schema.EvictRequest(reason=reason)),
        token=token,
    )


def evict_matching(token: str | None, **fields: Any) -> Call[schema.BulkEvictResult]:
    """`schema.BulkEvictRequest`'s fields as keywords (`cpu`, `tid`, `below_priority`,
    `reason`); None leaves the daemon's default."""
    return _post_fields(
        "/v1/evictions", schema.BulkEvictResult, schema.BulkEvictRequest, fields, token
    )


# ---------------------------------------------------------------- host views (admin)


def state(token: str | None) -> Call[schema.Snapshot]:
    return Call("GET", "/v1/state", _model(schema.Snapshot), token=token)


def cpus(token: str | None) -> Call[list[dict[str, Any]]]:
    return Call("GET", "/v1/cpus", _adapter(_JSON_OBJECTS), token=token)


def cpu(number: int, token: str | None) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/cpus/{number}", _adapter(_JSON_OBJECT), token=token)


def task(tid: int, token: str | None) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/tasks/{tid}", _adapter(_JSON_OBJECT), token=token)


def debugregs(tid: int, token: str | None) -> Call[schema.DebugRegsState]:
    return Call("GET", f"/v1/tasks/{tid}/debugregs", _model(schema.DebugRegsState), token=token)


def set_debugregs(
    tid: int, regs: schema.DebugRegs | None, token: str | None, **fields: Any
) -> Call[schema.DebugRegsState]:
    """`regs`, or its fields (dr0..dr3, dr7) as keywords."""
    regs = regs or build(schema.DebugRegs, fields)
    return Call(
        "PUT",
        f"/v1/tasks/{tid}/debugregs",
        _model(schema.DebugRegsState),
        body=regs.model_dump(mode="json"),
        token=token,
    )


def sim_access(token: str | None, **fields: Any) -> Call[schema.SimAccessResult]:
    """`schema.SimAccess`'s fields as keywords (`cpu`, `address`, `length`, `access`, `tid`,
    `ip`); None leaves the daemon's default."""
    return _post_fields("/v1/sim/accesses", schema.SimAccessResult, schema.SimAccess, fields, token)


# ---------------------------------------------------------------- event streams


def session_baseline(session_id: str, token: str | None) -> Call[Baseline]:
    """What a session stream's reader reads when it opens and re-reads after a `reset`: its own
    allocations."""
    return Call(
        "GET",
        "/v1/allocations",
        _allocation_list,
        params={"session": session_id},
        token=token,
    )


def state_baseline(token: str | None) -> Call[Baseline]:
    """What the admin stream's reader re-reads after a `reset`: the whole snapshot."""
    return Call("GET", "/v1/state", _snapshot_baseline, token=token)


def session_events(session_id: str, token: str | None) -> Stream:
    return Stream(
        f"/v1/sessions/{_seg(session_id)}/events", token, session_baseline(session_id, token)
    )


def all_events(token: str | None) -> Stream:
    return Stream("/v1/events", token, state_baseline(token))

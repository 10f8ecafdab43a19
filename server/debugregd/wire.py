"""Records and events as they travel: addresses as "0x..." strings, kernel addresses redacted
for readers who may not see them (they would defeat KASLR)."""

from __future__ import annotations

import json
from typing import Any

import orjson

from debugregd.core import Event, EventType


def hex_address(value: int) -> str:
    return f"0x{value:x}"


def record(alloc: dict[str, Any], *, kernel_visible: bool = True) -> dict[str, Any]:
    """An allocation record for the wire."""
    out = dict(alloc)
    if out["space"] == "kernel" and not kernel_visible:
        out["address"] = None
    else:
        out["address"] = hex_address(alloc["address"])
    return out


def event(ev: Event) -> dict[str, Any]:
    """An event for the wire (streams and the journal store exactly this)."""
    out = ev.to_dict()
    if ev.allocation is not None:
        out["allocation"] = record(ev.allocation)
    if ev.type == EventType.HIT and isinstance(out.get("address"), int):
        out["address"] = hex_address(out["address"])
    return out


def blocker_for(blocker: dict[str, Any], reader: str | None) -> dict[str, Any]:
    """A blocker as `reader` may see it (a session id; None: the admin, who sees everything).

    A holder of another session says only "held by another session at priority P": its
    priority and whether it is evictable, not its allocation, session, label or scope. Users
    outside debugregd belong to no session and are shown as they are."""
    if reader is None or blocker.get("outside") or blocker.get("session") == reader:
        return blocker
    return {
        "allocation": None,
        "session": None,
        "priority": blocker["priority"],
        "evictable": blocker["evictable"],
        "scope": None,
        "label": None,
        "outside": False,
    }


def blockers_for(blockers: list[dict[str, Any]], reader: str | None) -> list[dict[str, Any]]:
    """`blocker_for` of each."""
    return [blocker_for(b, reader) for b in blockers]


def event_for(type_: str, body: str, reader: str | None) -> str:
    """An event's `data:` as `reader` may see it (see `blocker_for`): a `waiting` event's
    blockers, and who an `evicted` event's allocation was evicted for, when that is another
    session. The journal keeps the event whole, for the admin."""
    if reader is None or type_ not in (EventType.WAITING, EventType.EVICTED):
        return body
    data = orjson.loads(body)
    if type_ == EventType.WAITING:
        blockers = data.get("blockers") or []
        seen = blockers_for(blockers, reader)
        if seen == blockers:
            return body
        data["blockers"] = seen
    else:
        evictor = data.get("evictor")
        if evictor is None or evictor.get("session") == reader:
            return body
        del data["evictor"]
    return dumps(data)


def dumps(data: Any) -> str:
    """Compact UTF-8 JSON, non-string keys as strings, by orjson: the standard library's encoder
    costs twenty times as much, and every request journals a command and its events."""
    return encode(data).decode()


def encode(data: Any) -> bytes:
    """`dumps` as UTF-8 bytes, for response bodies."""
    try:
        return orjson.dumps(data)
    except TypeError:  # non-string keys (snapshots key by CPU), which this option costs more for
        pass
    try:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson stops at 64-bit integers; the standard library does not
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

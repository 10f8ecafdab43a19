"""Records and events as they travel: addresses as "0x..." strings, kernel addresses redacted
for readers who may not see them (they would defeat KASLR)."""

from __future__ import annotations

import json
from typing import Any

import orjson

from debugregd.core import Event


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
    if ev.type == "hit" and isinstance(out.get("address"), int):
        out["address"] = hex_address(out["address"])
    return out


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

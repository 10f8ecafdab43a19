"""Priorities and limits are defined once (`debugreg.priorities`, `debugreg.limits`), in plain
Python: the wire schema enforces them and the daemon agrees."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import TypeAdapter, ValidationError

from debugreg import schema
from debugreg.limits import ADDRESS_LIMIT, CPU_MAX, LENGTH_MAX, TID_LIMIT, TTL_MAX_S
from debugreg.priorities import (
    PRIORITY_CLASSES,
    PRIORITY_MAX,
    PRIORITY_MIN,
    Priority,
    priority_value,
)


def test_the_class_names_are_the_priority_classes_in_lower_case() -> None:
    assert tuple(p.name.lower() for p in Priority) == PRIORITY_CLASSES


def test_the_wire_accepts_every_class_name_and_no_other() -> None:
    wire = TypeAdapter(schema.PriorityValue)
    assert [wire.validate_python(name) for name in PRIORITY_CLASSES] == list(PRIORITY_CLASSES)
    with pytest.raises(ValidationError):
        wire.validate_python("urgent")


def test_a_priority_is_a_class_name_or_an_integer_in_range() -> None:
    assert priority_value("ptrace") == Priority.PTRACE == 700
    assert priority_value(PRIORITY_MIN) == 0 and priority_value(PRIORITY_MAX) == 1000
    for bad in ("urgent", PRIORITY_MAX + 1, -1, True):
        with pytest.raises(ValueError):
            priority_value(bad)


def test_the_daemon_ranks_the_classes_as_the_wire_does() -> None:
    from debugregd import core

    assert {p.name: int(p) for p in core.Priority} == {p.name: int(p) for p in Priority}


@pytest.mark.parametrize(
    ("model", "field", "largest"),
    [
        (schema.SimAccess, "address", hex(ADDRESS_LIMIT - 1)),
        (schema.SimAccess, "cpu", CPU_MAX),
        (schema.SimAccess, "tid", TID_LIMIT - 1),
        (schema.SimAccess, "length", LENGTH_MAX),
    ],
)
def test_the_wire_takes_each_limit_and_nothing_past_it(
    model: type[schema.Strict], field: str, largest: int | str
) -> None:
    base = {"cpu": 0, "address": 4096, "access": "write"}
    assert model.model_validate({**base, field: largest})
    beyond = hex(ADDRESS_LIMIT) if isinstance(largest, str) else largest + 1
    with pytest.raises(ValidationError):
        model.model_validate({**base, field: beyond})


def test_a_lease_is_at_most_a_day() -> None:
    assert schema.SessionRequest(name="s", ttl_s=TTL_MAX_S).ttl_s == 86_400
    with pytest.raises(ValidationError):
        schema.SessionRequest(name="s", ttl_s=TTL_MAX_S + 1)


@pytest.mark.parametrize("module", ["debugreg.priorities", "debugreg.limits"])
def test_the_module_needs_nothing_beyond_the_standard_library(module: str) -> None:
    # The daemon's pure core imports it: it must not bring pydantic (or httpx) along.
    probe = (
        f"import sys, {module}; print(sorted(m for m in ('pydantic', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

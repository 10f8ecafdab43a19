"""The state table is the law (STYLE "h11"): every allocation state change and every event type the
core publishes comes from `debugregd.core.states`, and the wire schema lists the same event types.

The source checks fail when someone sets a state or names an event type by hand, which is how the
table and the behaviour drift apart."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

import debugregd.core
from debugreg import schema
from debugregd.core import EVENT_OF, TRANSITIONS, Arbiter, EventType, Request, Scope, State, Trigger
from debugregd.core.profiles import Access
from debugregd.core.states import mermaid, transition

CORE = Path(debugregd.core.__file__).parent
SOURCES = sorted(CORE.glob("*.py"))
# Where states may be written without `transition`: the table itself, and a snapshot being read.
STATE_WRITERS_EXEMPT = {"states.py", "snapshots.py"}


def test_the_wire_schema_lists_exactly_the_cores_event_types() -> None:
    assert set(get_args(schema.EventType)) == {t.value for t in EventType}


def test_the_allocation_states_on_the_wire_are_the_cores() -> None:
    assert set(get_args(schema.State)) == {s.value for s in State}


def test_every_trigger_has_an_edge_and_an_event() -> None:
    fired = {trigger for _, trigger in TRANSITIONS}
    assert fired == set(Trigger)
    assert set(EVENT_OF) == set(Trigger)


def test_a_move_keeps_an_installed_allocation_installed_and_is_announced_as_moved() -> None:
    assert transition(State.INSTALLED, Trigger.MOVE) == (State.INSTALLED, EventType.MOVED)


def test_the_readme_diagram_draws_every_edge() -> None:
    drawn = mermaid()
    for (state, trigger), target in TRANSITIONS.items():
        source = "[*]" if state is None else state.value
        assert f"{source} --> {target.value}: {trigger.value} ({EVENT_OF[trigger]})" in drawn


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == name)
            or (isinstance(node.func, ast.Name) and node.func.id == name)
        )
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_events_are_named_by_the_table_never_by_a_string(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for call in _calls(tree, "emit"):
        first = call.args[0]
        by_name = isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name)
        by_name = by_name and first.value.id == "EventType"  # type: ignore[union-attr]
        # Or the event `transition` returned, bound to a plain name.
        assert by_name or isinstance(first, ast.Name), (
            f"{path.name}:{call.lineno} emits {ast.unparse(first)}: name an EventType or the "
            "event `transition` returned"
        )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_states_change_only_through_transition(path: Path) -> None:
    if path.name in STATE_WRITERS_EXEMPT:
        return
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            writes_state = any(isinstance(n, ast.Attribute) and n.attr == "state" for n in names)
            if not writes_state:
                continue
            from_table = bool(_calls(node.value, "transition")) or (
                # `moved_to`, the state `transition` gave for a move.
                isinstance(node.value, ast.Name)
            )
            assert from_table, (
                f"{path.name}:{node.lineno} sets a state to {ast.unparse(node.value)}; "
                "use states.transition so the table decides"
            )
    assert "TRANSITIONS[" not in path.read_text(), f"{path.name} reads the table around transition"


def test_juggling_fires_move_and_announces_it() -> None:
    # Two CPU holders on one CPU take DR3 and DR2; releasing the first packs the second up to
    # DR3: a `moved` event, the table's MOVE edge.
    arb = Arbiter(ncpus=1)
    first, _ = arb.allocate(None, Request(Scope.cpu(0), 0x1000, 8, Access.WRITE, 300), 0)
    second, _ = arb.allocate(None, Request(Scope.cpu(0), 0x2000, 8, Access.WRITE, 300), 0)
    _, events = arb.release(first.id, 1)
    moved = [e for e in events if e.type is EventType.MOVED]
    assert [e.allocation["id"] for e in moved if e.allocation] == [second.id]
    assert second.state is State.INSTALLED

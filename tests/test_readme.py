"""The README is part of the interface: its commands and its state diagram must stay true."""

from __future__ import annotations

from pathlib import Path

from debugregd.core.states import mermaid

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make run", "make test"]


def test_readme_state_diagram_is_generated_from_the_transition_table() -> None:
    assert f"```mermaid\n{mermaid()}\n```" in README, (
        "the README's state diagram differs from core/states.py; paste the output of "
        "`python -c 'from debugregd.core.states import mermaid; print(mermaid())'`"
    )

"""The core is pure (DESIGN section 13, STYLE "h11"): no web framework, no event loop, no clock,
no storage, no randomness. Checked on the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import debugregd.core

CORE = Path(debugregd.core.__file__).parent
FORBIDDEN = frozenset(
    {
        "fastapi",
        "starlette",
        "asyncio",
        "pydantic",
        "sqlite3",
        "time",
        "datetime",
        "httpx",
        "random",
        # Ways around the list above.
        "importlib",
        "uvicorn",
        "secrets",
        "os",
    }
)
SOURCES = sorted(CORE.glob("*.py"))


def imported_modules(path: Path) -> list[str]:
    """Every module an `import` or `from ... import` anywhere in the file names."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            names.append("__import__")
    return names


def test_the_core_has_source_files() -> None:
    assert {p.name for p in SOURCES} >= {"arbiter.py", "admission.py", "eviction.py"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_core_module_imports_no_io_framework_clock_or_randomness(path: Path) -> None:
    bad = [
        name
        for name in imported_modules(path)
        if name == "__import__" or name.split(".")[0] in FORBIDDEN
    ]
    assert not bad, f"{path.name} imports {bad}"


# The wire's constants, plain Python the wire schema and the core share (defined once).
SHARED = frozenset({"debugreg.priorities", "debugreg.limits"})


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_core_module_imports_nothing_of_the_daemon_outside_the_core(path: Path) -> None:
    outside = [
        name
        for name in imported_modules(path)
        if name.startswith(("debugregd.", "debugreg."))
        and not name.startswith("debugregd.core")
        and name not in SHARED
    ]
    assert not outside, f"{path.name} imports {outside}"


def test_the_import_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import time\n    from datetime import date\n")
    assert imported_modules(sample) == ["time", "datetime"]

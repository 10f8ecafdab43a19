"""The committed API document and the command line documentation."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Header

from debugreg import schema
from debugregd.__main__ import main
from debugregd.api.app import openapi_document
from debugregd.config import build_parser

ROOT = Path(__file__).resolve().parents[2]


def differences(a: Any, b: Any, where: str = "") -> Iterator[str]:
    """JSON pointers at which two documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                yield f"{where}/{k}"
            else:
                yield from differences(a[k], b[k], f"{where}/{k}")
    elif a != b:
        yield where or "/"


def test_the_committed_openapi_json_equals_the_apps_generated_document() -> None:
    committed = json.loads((ROOT / "openapi.json").read_text())
    generated = json.loads(openapi_document())
    changed = list(differences(committed, generated))
    assert not changed, (
        "openapi.json is out of date with the app: run `make openapi` and commit the result. "
        f"It differs at: {', '.join(changed[:10])}"
    )


def test_routes_that_read_their_own_inputs_are_documented_as_declared_parameters() -> None:
    # The allocate and release routes read body, header and path themselves (api/inputs.py);
    # their operations must read exactly as FastAPI writes these parameters when declared.
    probe = FastAPI()

    @probe.post("/v1/allocations")
    def allocate(
        body: schema.AllocationRequest,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> None: ...

    @probe.delete("/v1/allocations/{allocation_id}")
    def release(allocation_id: str) -> None: ...

    declared, document = probe.openapi(), json.loads(openapi_document())
    for path, method in (
        ("/v1/allocations", "post"),
        ("/v1/allocations/{allocation_id}", "delete"),
    ):
        want, got = declared["paths"][path][method], document["paths"][path][method]
        for part in ("parameters", "requestBody"):
            assert got.get(part) == want.get(part), f"{method} {path}: {part} differs"
    for name, component in declared["components"]["schemas"].items():
        if name not in ("HTTPValidationError", "ValidationError"):
            assert document["components"]["schemas"][name] == component, name


def test_the_openapi_document_has_every_contract_path() -> None:
    paths = json.loads(openapi_document())["paths"]
    contract = {
        "/v1/sessions": {"post"},
        "/v1/sessions/{session_id}/keepalive": {"post"},
        "/v1/sessions/{session_id}": {"delete"},
        "/v1/sessions/{session_id}/events": {"get"},
        "/v1/allocations": {"get", "post"},
        "/v1/allocations/{allocation_id}": {"get", "delete"},
        "/v1/allocations/{allocation_id}/evict": {"post"},
        "/v1/evictions": {"post"},
        "/v1/host": {"get"},
        "/v1/cpus": {"get"},
        "/v1/cpus/{cpu}": {"get"},
        "/v1/tasks/{tid}": {"get"},
        "/v1/tasks/{tid}/debugregs": {"get", "put"},
        "/v1/state": {"get"},
        "/v1/events": {"get"},
        "/v1/sim/accesses": {"post"},
        "/healthz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in contract.items():
        assert path in paths, f"{path} missing from the API document"
        assert methods <= set(paths[path]), f"{path}: {sorted(paths[path])}"


def serve_flags() -> list[argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices["serve"]._actions if a.option_strings and a.dest != "help"]


def test_serve_help_documents_each_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])  # the `debugregd` console script
    assert exited.value.code == 0
    text = capsys.readouterr().out
    squeezed = "".join(text.split())  # line wrapping may split a help text anywhere
    for flag in (
        "--host",
        "--port",
        "--state-dir",
        "--profile",
        "--cpus",
        "--pools",
        "--mode-switching",
        "--backend",
        "--retention",
        "--history",
        "--sse-buffer",
        "--heartbeat",
        "--max-body",
        "--log-level",
    ):
        assert flag in text, f"{flag} is not in `debugregd serve --help`"
    for action in serve_flags():
        assert action.help and len(action.help) > 5, f"{action.option_strings} has no help"
        assert "".join(action.help.split()) in squeezed, f"{action.option_strings} help missing"
    assert "DEBUGREGD_" in text  # each flag also reads the environment

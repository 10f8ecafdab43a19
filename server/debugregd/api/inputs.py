"""What the hot routes (allocate and release) read from the request themselves.

FastAPI resolves every declared parameter through its dependency machinery on each request, and
its body parameter decodes the JSON with the standard library before validating the Python
objects. On an allocate+release pair that cost more than the arbitration: each header or path
parameter about 60,000 instructions. So these routes take only the `Request`: `body` validates
the same pydantic model straight from the JSON bytes (same rules: a JSON content type, a required
body; same `RequestValidationError`s, which errors.py renders as the same problem+json), `header`
reads a header and path parameters come from Starlette's request, and `documented` writes the
OpenAPI operation exactly as the declared parameters did, so openapi.json is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from debugregd.api.errors import Problem

M = TypeVar("M", bound=BaseModel)

# Event ids, sequence numbers and times all fit in SQLite's signed 64-bit integers: 19 digits.
NUMBER_DIGITS = 19
NUMBER_MAX = 2**63 - 1
HEADER_MAX = 200  # characters of a documented string header (Idempotency-Key)

_documented: dict[str, type[BaseModel]] = {}


def _is_json(content_type: str | None) -> bool:
    # What FastAPI's body parameter accepts: application/json or application/<anything>+json.
    if content_type is None:
        return False
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def header(request: Request, name: bytes) -> str | None:
    """The first `name` header (lowercase, as ASGI servers give them), as `request.headers`
    would read it; without building `request.headers`, whose `get` raises and catches a
    KeyError for every header that is absent."""
    for key, value in request.scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def number(text: str, what: str) -> int:
    """`text` (a header's or a cookie's) as a non-negative integer, or a 400 problem naming
    `what`.

    `str.isdigit` also accepts digits `int` refuses (superscripts such as "\u00b2") and `int`
    spends quadratic time on thousands of digits before refusing them, so only 1 to 19 ASCII
    digits are read, and nothing else reaches `int`.
    """
    digits = text.strip(" \t")
    if (
        not 0 < len(digits) <= NUMBER_DIGITS
        or not digits.isascii()
        or not digits.isdigit()
        or int(digits) > NUMBER_MAX
    ):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise Problem(
            400,
            "malformed-number",
            "Malformed number",
            f"{what} must be a whole number of at most {NUMBER_DIGITS} ASCII digits "
            f"(0 to {NUMBER_MAX}), got {shown!r}",
        )
    return int(digits)


async def body(request: Request, model: type[M]) -> M:
    """The request body as `model`; RequestValidationError (422, or 400 for malformed JSON)."""
    raw = await request.body()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    if not _is_json(header(request, b"content-type")):
        raise RequestValidationError(
            [
                {
                    "type": "content_type",
                    "loc": ("body",),
                    "msg": "send the body as JSON, with 'Content-Type: application/json'",
                    "input": None,
                }
            ]
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def documented(
    body: type[BaseModel] | None = None, *, header: str | None = None, path: str | None = None
) -> dict[str, Any]:
    """`openapi_extra` for a route that reads these itself: the requestBody and parameters that
    FastAPI writes for a body, an optional string header and a string path parameter."""
    extra: dict[str, Any] = {}
    parameters: list[dict[str, Any]] = []
    if path is not None:
        title = path.replace("_", " ").title()
        string = {"title": title, "type": "string"}
        parameters.append({"in": "path", "name": path, "required": True, "schema": string})
    if header is not None:
        text = {"type": "string", "maxLength": HEADER_MAX}
        optional = {"anyOf": [text, {"type": "null"}], "title": header.title()}
        name = header.lower()
        parameters.append({"in": "header", "name": name, "required": False, "schema": optional})
    if parameters:
        extra["parameters"] = parameters
    if body is not None:
        _documented[body.__name__] = body
        ref = {"$ref": f"#/components/schemas/{body.__name__}"}
        content = {"application/json": {"schema": ref}}
        extra["requestBody"] = {"content": content, "required": True}
    return extra


def install(app: FastAPI) -> None:
    """Add the `documented` bodies' models to `app`'s OpenAPI components, as FastAPI writes
    them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI generates once and keeps the document
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            for name, found in _schemas_of(tuple(_documented.values())).items():
                schemas.setdefault(name, found)
        return generate()

    app.openapi = openapi  # type: ignore[method-assign]


def _schemas_of(models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """The components of `models` and of what they refer to, as FastAPI writes them: taken
    from a throwaway app that declares each model as an ordinary body parameter."""
    probe = FastAPI()
    for n, model in enumerate(models):
        probe.post(f"/{n}")(_taking(model))
    every: dict[str, Any] = probe.openapi()["components"]["schemas"]
    wanted, todo = {}, [m.__name__ for m in models]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted[name] = every[name]
            todo += _refs(every[name])
    return wanted


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        own = [ref.rpartition("/")[2]] if isinstance(ref, str) else []
        return own + [name for value in node.values() for name in _refs(value)]
    if isinstance(node, list):
        return [name for value in node for name in _refs(value)]
    return []


def _taking(model: type[BaseModel]) -> Callable[..., None]:
    def endpoint(body: Any) -> None:
        del body

    endpoint.__annotations__ = {"body": model, "return": None}  # a model parameter is a body
    return endpoint

"""The request body limit, answered as problem+json like every other error."""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from debugregd.api.errors import problem
from debugregd.api.inputs import NUMBER_DIGITS


class BodyLimit:
    """Refuse bodies over `limit` bytes: at once when Content-Length says so, else as soon as
    the streamed body passes the limit (an HTTPException the error handlers render)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function returning the inner app's coroutine, not a coroutine of its own: a
        # request waiting for its commit then suspends and resumes through one frame fewer.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        for name, value in scope["headers"]:
            # bytes.isdigit is ASCII only; the length bound keeps `int` from a huge value
            # (the HTTP parser refuses one beyond 64 bits anyway).
            if (
                name == b"content-length"
                and value.isdigit()
                and (len(value) > NUMBER_DIGITS or int(value) > self.limit)
            ):
                response = problem(
                    413, "request-body-too-large", "Request body too large", self._detail()
                )
                return response(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._detail())
            return message

        return self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"the request body is larger than {self.limit} bytes (--max-body); send less"

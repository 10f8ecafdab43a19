"""The dashboard's static files and its sign-in, which trades the admin key for a cookie.

The key never travels in a URL the server sees: `make run` prints `/#key=...`, and a fragment stays
in the browser; the page posts it here and erases it.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from debugregd.api.context import COOKIE, COOKIE_TTL_S, caller_of, daemon_of
from debugregd.api.document import problems
from debugregd.api.errors import unauthorized

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["dashboard"])


class Login(BaseModel):
    key: str = Field(min_length=1, max_length=1024)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.post(
    "/v1/auth/login",
    status_code=204,
    responses=problems(401, 422),
    summary="Sign in to the dashboard with the admin key",
)
async def login(body: Login, request: Request) -> Response:
    d = daemon_of(request)
    if not hmac.compare_digest(body.key.encode(), d.admin_key.encode()):
        raise unauthorized("that is not the admin key")
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE,
        d.cookie_for(int(time.time())),
        max_age=COOKIE_TTL_S,
        httponly=True,
        samesite="strict",
        path="/",
    )
    return response


@router.post("/v1/auth/logout", status_code=204, summary="Sign out of the dashboard")
async def logout() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get(
    "/v1/auth/me",
    responses=problems(401),
    summary="Whether this browser is signed in as admin",
)
async def me(request: Request) -> dict[str, bool]:
    who = caller_of(request)
    return {"admin": who.admin}

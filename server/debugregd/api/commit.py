"""A response waits for its change's commit outside the route, at the edge of the app.

A route that changed the arbiter must not be answered before the group commit holding that
change. Awaiting the commit inside the route suspends the request through every layer of
FastAPI and Starlette (about twenty frames, with their exit stacks) until the commit; measured
on a no-op served the same way, that one suspension cost a fifth of its throughput. So the hot
routes hand their commit to `after_commit` and return: the layers below the edge finish and
unwind, `answer_after_commit` holds the response messages they sent, and it forwards them
once the commit is done. The client sees the same response at the same moment; if the commit
fails, it gets a 503 instead, and the change was never made (the journal holds no trace of it).
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from debugregd.api.errors import journal_failed

COMMITS = "debugregd.commits"  # the scope key: this request's commits, to wait for at the edge


def after_commit(request: Request, committed: asyncio.Future[None]) -> None:
    """Send this request's response only once `committed` is done (the app's edge,
    `answer_after_commit`, waits for it)."""
    commits: list[asyncio.Future[None]] = request.scope[COMMITS]
    commits.append(committed)


async def answer_after_commit(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app` on an HTTP request, holding back its response until the commits its route
    registered with `after_commit` are done."""
    commits: list[asyncio.Future[None]] = []
    scope[COMMITS] = commits
    held: list[Message] = []

    async def hold(message: Message) -> None:
        # A route registers its commit before it answers, so once there is one, all the
        # response's messages are held; streams and read-only routes never register one.
        if commits:
            held.append(message)
        else:
            await send(message)

    await app(scope, receive, hold)
    if not commits:
        return
    try:
        for committed in commits:
            await committed
    except Exception:  # the journal failed: the runtime logged it and stops the daemon
        await journal_failed()(scope, receive, send)
        return
    for message in held:
        await send(message)

"""The one commit path: no response is sent before the commit of any change it could show.

Two rules, both kept here:

- **A change goes through `change`.** A route that changes state builds a journaled command and
  calls `change(request, command)`: the runtime applies it (or it raises a typed error and
  nothing changed) and stages it for the group commit, and `change` registers that commit with
  the request. No route applies a command or awaits a commit itself (a test holds it). Facts a
  route asks the runtime to learn from outside (measuring outside holders, a simulated task
  exit) are staged by the runtime's own intake, as its watchers' are; the second rule holds
  their answers.
- **A response shows only committed state.** The edge (`answer_after_commit`) holds every
  response until everything staged before its first message is committed, whoever staged it:
  a read that follows an uncommitted change, even another request's in the same loop tick,
  waits for that change's commit. So reads need no code of their own, and the check costs one
  look at the runtime's batch when nothing is staged. Once the journal has failed, nothing is
  read back either.

If a commit a response waits for fails, the client gets a 503 (`errors.journal_failed`) in its
place, and the change was never made: the journal holds no trace of it.

A change's response is held at the edge rather than awaited in the route because awaiting the
commit inside the route suspends the request through every layer of FastAPI and Starlette
(about twenty frames, with their exit stacks) until the commit; measured on a no-op served the
same way, that one suspension cost a fifth of its throughput. So `change` only registers the
commit and the route returns: the layers below the edge finish and unwind, the edge holds the
messages they sent, and forwards them once the commit is done. A response with no change of
its own that finds something staged (a read, a refusal) waits at its first message instead,
in place, and so does a stream, whose route does not return until the stream ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from debugregd.api.errors import journal_failed
from debugregd.commands import Command
from debugregd.runtime import Runtime

COMMITS = "debugregd.commits"  # the scope key: this request's commits, to wait for at the edge

# What the edge does with a response's messages.
_FIRST = 0  # none sent yet: the first decides
_PASSING = 1  # sent on at once: what they show is committed
_HOLDING = 2  # kept until the request's commits are done
_REPLACED = 3  # a commit failed and a 503 went out instead: the rest are dropped


def change(request: Request, command: Command) -> Any:
    """Apply `command` through the runtime and return its result; the response is sent only
    once the command is committed (a 503 if that fails). Raises the core's typed error, with
    nothing changed, when the arbiter refuses it."""
    result, committed = request.scope["app"].daemon.rt.apply(command)
    commits: list[asyncio.Future[None]] = request.scope[COMMITS]
    commits.append(committed)
    return result


async def answer_after_commit(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, runtime: Runtime | None
) -> None:
    """Run `app` on an HTTP request, holding back its response until the commits its route
    registered with `change`, or else everything staged when it starts to answer, are done."""
    commits: list[asyncio.Future[None]] = []
    scope[COMMITS] = commits
    held: list[Message] = []
    mode = _FIRST

    async def settle() -> None:
        """Wait for `commits`, then send what was held; a 503 in its place if one failed."""
        nonlocal mode
        try:
            for committed in commits:
                await committed
        except Exception:  # the journal failed: the runtime logged it and stops the daemon
            mode = _REPLACED
            held.clear()
            await journal_failed()(scope, receive, send)
            return
        mode = _PASSING
        for message in held:
            await send(message)
        held.clear()

    async def out(message: Message) -> None:
        nonlocal mode
        if mode == _FIRST:
            if commits:
                mode = _HOLDING
            else:
                staged = None if runtime is None else runtime.uncommitted()
                if staged is None:
                    mode = _PASSING
                else:  # no change of its own, but it may show one not yet committed
                    commits.append(staged)
                    held.append(message)
                    await settle()
                    return
        if mode == _HOLDING:
            held.append(message)
            if message["type"] == "http.response.body" and message.get("more_body", False):
                await settle()  # a stream: its route returns only when the stream ends
        elif mode == _PASSING:
            await send(message)

    await app(scope, receive, out)
    if mode == _HOLDING:
        await settle()

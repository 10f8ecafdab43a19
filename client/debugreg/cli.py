"""`debugreg`: the command line for debugregd. Every read command takes `--json`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from debugreg import api, render, schema
from debugreg.client import DEFAULT_URL, Client
from debugreg.errors import (
    Conflict,
    DebugregError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unreachable,
)
from debugreg.gdb import launch
from debugreg.priorities import DEFAULT_MAX_PRIORITY, priority_value

OK, CONFLICT, USAGE, AUTH, NOT_FOUND, UNREACHABLE, DAEMON_ERROR, INTERRUPTED = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    130,
)

EPILOG = f"""\
environment:
  DEBUGREG_URL         daemon URL (default {DEFAULT_URL})
  DEBUGREG_TOKEN       session token: act as that session (allocate, release, ls, watch)
  DEBUGREG_SESSION     session id for `session keepalive|close|show` and `watch`
  DEBUGREGD_ADMIN_KEY  admin key: evict, state, all allocations, grants
  DEBUGREG_CA          CA bundle (PEM) that signed an https:// daemon's certificate
  DEBUGREG_CERT        client certificate (PEM) for a daemon that asks for one (mutual TLS)
  DEBUGREG_KEY         the private key of DEBUGREG_CERT (if not in the same file)
  With both a token and the admin key, session-scoped commands use the token.

exit codes:
  {OK}    success
  {CONFLICT}    refused (no register free; the blockers are named), another conflict (409) or a
     per-session limit reached (429)
  {USAGE}    usage error or invalid request (400, 413, 422, or rejected before sending)
  {AUTH}    not authorized: missing or unknown credential (401) or missing grant (403)
  {NOT_FOUND}    no such session, allocation, task or CPU (404)
  {UNREACHABLE}    the daemon could not be reached
  {DAEMON_ERROR}    the daemon failed (5xx)
  {INTERRUPTED}  interrupted (Ctrl-C)
"""


def exit_code(exc: DebugregError) -> int:
    """The documented exit code for an error."""
    if isinstance(exc, Conflict):
        return CONFLICT
    if isinstance(exc, InvalidRequest):
        return USAGE
    if isinstance(exc, Unauthorized | Forbidden):
        return AUTH
    if isinstance(exc, NotFound):
        return NOT_FOUND
    if isinstance(exc, Unreachable):
        return UNREACHABLE
    return DAEMON_ERROR


class UsageError(Exception):
    """A command line that parses but cannot be run as given."""


# ---------------------------------------------------------------- helpers


def _out(line: str) -> None:
    print(line, flush=True)


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _show(args: argparse.Namespace, value: Any, lines: Iterable[str]) -> int:
    """Print `value` as one JSON line with --json, else as its human `lines`."""
    if args.json:
        _out(render.to_json(value))
    else:
        for line in lines:
            _out(line)
    return OK


def _cpu_list(text: str) -> list[int] | str:
    if text == "all":
        return "all"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a CPU list looks like '0,1' or 'all', got {text!r}"
        ) from None


def _priority(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _number(text: str) -> int:
    """An integer in decimal or 0x hex."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number like 42 or 0x2a, got {text!r}"
        ) from None


def _needs_grant(priority: int | str) -> bool:
    """Whether a priority needs the `max_priority` grant. An invalid one asks for it too, so
    that the daemon words the error."""
    try:
        return priority_value(priority) > DEFAULT_MAX_PRIORITY
    except ValueError:
        return True


def _session_id(args: argparse.Namespace) -> str:
    session = args.session or os.environ.get("DEBUGREG_SESSION")
    if not session:
        raise UsageError("name the session: give its id or set DEBUGREG_SESSION")
    return str(session)


def _scope(args: argparse.Namespace) -> dict[str, Any]:
    if args.cpu is not None:
        return {"kind": "cpu", "cpu": args.cpu}
    if args.tid is not None:
        scope: dict[str, Any] = {"kind": "task", "tid": args.tid}
        if args.task_cpus is not None:
            scope["cpus"] = args.task_cpus
        return scope
    return {"kind": "cpus", "cpus": args.cpus}


# ---------------------------------------------------------------- commands


def cmd_allocate(client: Client, args: argparse.Namespace) -> int:
    request = api.build(
        schema.AllocationRequest,
        {
            "scope": _scope(args),
            "address": args.address,
            "length": args.length,
            "access": args.access,
            "priority": args.priority,
            "evictable": not args.non_evictable,
            "on_evict": args.on_evict,
            "wait": args.wait,
            "label": args.label,
            "arm": not args.reservation,
        },
    )
    opened: schema.Session | None = None
    if client.token is None:
        opened = _open_for(client, args)
    try:
        alloc = client.allocate(request)
    except DebugregError:
        if opened is not None:
            # The session existed only for this allocation: do not leave it behind.
            with contextlib.suppress(DebugregError):
                client.close_session(opened.id)
        raise
    if args.json:
        _out(render.to_json({"session": _dump(opened), "allocation": _dump(alloc.record)}))
        return OK
    if opened is not None:
        _out(f"session {opened.id} token {opened.token} ttl={opened.ttl_s:g}s")
        _note(
            f"export DEBUGREG_SESSION={opened.id} DEBUGREG_TOKEN={opened.token} to use this "
            f"session; it expires in {opened.ttl_s:g}s unless kept alive "
            "(debugreg session keepalive)"
        )
    _out(render.allocation_line(alloc.record))
    return OK


def _open_for(client: Client, args: argparse.Namespace) -> schema.Session:
    """A session for an allocation made without a token. With the admin key it gets the grants
    the request needs, so `--priority critical --non-evictable` works in one command."""
    grants: dict[str, Any] = {}
    if client.admin_key is not None:
        if _needs_grant(args.priority):
            grants["max_priority"] = args.priority
        if args.non_evictable:
            grants["allow_non_evictable"] = True
        if args.allow_kernel:
            grants["allow_kernel"] = True
    opened = client.open_session(args.name, args.ttl, **grants)
    client.token = opened.token
    return opened


def _dump(model: BaseModel | None) -> Any:
    return None if model is None else model.model_dump(mode="json")


def cmd_release(client: Client, args: argparse.Namespace) -> int:
    for allocation_id in args.ids:
        record = client.release(allocation_id)
        _out(render.to_json(record) if args.json else render.allocation_line(record))
    return OK


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    records = client.allocations(state=args.state, session=args.session, cpu=args.cpu, tid=args.tid)
    if args.json:
        _out(render.to_json(schema.AllocationList(allocations=records)))
    elif records:
        render.console().print(render.allocations_table(records))
    else:
        _out("no allocations")
    return OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    record = client.allocation(args.id)
    return _show(args, record, render.allocation_details(record))


def cmd_evict(client: Client, args: argparse.Namespace) -> int:
    bulk = args.cpu is not None or args.tid is not None or args.below_priority is not None
    if bool(args.ids) == bulk:
        raise UsageError("give allocation ids, or filters (--cpu, --tid, --below-priority)")
    if args.ids:
        for allocation_id in args.ids:
            record = client.evict(allocation_id, args.reason)
            _out(render.to_json(record) if args.json else render.allocation_line(record))
        return OK
    evicted = client.evict_matching(
        cpu=args.cpu, tid=args.tid, below_priority=args.below_priority, reason=args.reason
    )
    if args.json:
        _out(render.to_json(schema.BulkEvictResult(evicted=evicted)))
    else:
        _out(f"evicted {' '.join(evicted)}" if evicted else "nothing evicted")
    return OK


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    session = args.session or os.environ.get("DEBUGREG_SESSION")
    if client.admin_key is None and session is None:
        raise UsageError(
            "watching with a session token needs the session id: --session or DEBUGREG_SESSION"
        )
    for seen, event in enumerate(client.events(args.since, session=session), start=1):
        _out(render.to_json(event) if args.json else render.event_line(event))
        if args.count is not None and seen >= args.count:
            break
    return OK


def cmd_hits(client: Client, args: argparse.Namespace) -> int:
    """Follow one allocation's hits: a live table of its call sites (or a JSON line per report)."""
    record = client.allocation(args.id)
    session = args.session or record.session or os.environ.get("DEBUGREG_SESSION")
    if client.admin_key is None and session is None:
        raise UsageError("following hits with a session token needs the session id: --session")
    table = render.HitTable(record)
    seen = 0
    live = None if args.json else render.live(table.render())
    try:
        for event in client.events(args.since, session=None if client.admin_key else session):
            report = event.hit
            if report is None or event.allocation is None or event.allocation.id != args.id:
                continue
            seen += 1
            if args.json:
                _out(render.to_json(event))
            else:
                table.add(event.at, report)
                if live is not None:
                    live.update(table.render(), refresh=True)
            if args.count is not None and seen >= args.count:
                break
    finally:
        if live is not None:
            live.stop()
        elif not args.json:
            render.console().print(table.render())
    return OK


def cmd_state(client: Client, args: argparse.Namespace) -> int:
    snap = client.state()
    if args.json:
        _out(render.to_json(snap))
        return OK
    _out(f"event_id: {snap.event_id}")
    for line in render.host_lines(snap.host):
        _out(line)
    con = render.console()
    if snap.sessions:
        con.print(render.sessions_table(snap.sessions))
    else:
        _out("no sessions")
    if snap.allocations:
        con.print(render.allocations_table(snap.allocations, title="allocations"))
    else:
        _out("no allocations")
    _out(f"waiting: {' '.join(snap.waiting) or '-'}")
    for line in render.register_lines(snap.cpus):
        _out(line)
    return OK


def cmd_cpus(client: Client, args: argparse.Namespace) -> int:
    views = client.cpus() if args.cpu is None else [client.cpu(args.cpu)]
    return _show(args, views, render.register_lines(views))


def cmd_host(client: Client, args: argparse.Namespace) -> int:
    host = client.host()
    return _show(args, host, render.host_lines(host))


def cmd_debugregs_get(client: Client, args: argparse.Namespace) -> int:
    regs = client.debugregs(args.tid)
    return _show(args, regs, render.debugregs_lines(regs))


def cmd_debugregs_set(client: Client, args: argparse.Namespace) -> int:
    fields = {f"dr{n}": getattr(args, f"dr{n}") for n in range(4)}
    fields["dr7"] = args.dr7
    regs = client.set_debugregs(args.tid, **fields)
    return _show(args, regs, render.debugregs_lines(regs))


def cmd_session_open(client: Client, args: argparse.Namespace) -> int:
    opened = client.open_session(
        args.name,
        args.ttl,
        max_priority=args.max_priority,
        allow_non_evictable=args.allow_non_evictable or None,
        allow_kernel=args.allow_kernel or None,
    )
    if args.export and not args.json:
        _out(f"export DEBUGREG_SESSION={opened.id}")
        _out(f"export DEBUGREG_TOKEN={opened.token}")
        return OK
    return _show(args, opened, render.session_lines(opened))


def cmd_session_keepalive(client: Client, args: argparse.Namespace) -> int:
    session = _session_id(args)
    keepalive = client.keepalive(session)
    _out(
        render.to_json(keepalive)
        if args.json
        else f"{session} expires_at={render.when(keepalive.expires_at)}"
    )
    return OK


def cmd_session_close(client: Client, args: argparse.Namespace) -> int:
    session = _session_id(args)
    client.close_session(session)
    _out(render.to_json({"id": session, "closed": True}) if args.json else f"{session} closed")
    return OK


def cmd_session_show(client: Client, args: argparse.Namespace) -> int:
    info = client.session_info(_session_id(args))
    return _show(args, info, render.session_lines(info))


# ---------------------------------------------------------------- parser


def _connection_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The same options at the top and on every command; below the top they default to
    # SUPPRESS so a command's parser does not overwrite what was given before its name.
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=default(os.environ.get("DEBUGREG_URL", DEFAULT_URL)),
        help="daemon URL (env DEBUGREG_URL)",
    )
    group.add_argument(
        "--token",
        default=default(os.environ.get("DEBUGREG_TOKEN")),
        help="session token (env DEBUGREG_TOKEN)",
    )
    group.add_argument(
        "--admin-key",
        default=default(os.environ.get("DEBUGREGD_ADMIN_KEY")),
        help="admin key (env DEBUGREGD_ADMIN_KEY)",
    )
    # None leaves the client to read DEBUGREG_CA, DEBUGREG_CERT and DEBUGREG_KEY itself.
    group.add_argument(
        "--ca",
        default=default(None),
        help="CA bundle that signed an https:// daemon's certificate (env DEBUGREG_CA)",
    )
    group.add_argument(
        "--cert", default=default(None), help="client certificate, mutual TLS (env DEBUGREG_CERT)"
    )
    group.add_argument(
        "--key", default=default(None), help="client certificate's key (env DEBUGREG_KEY)"
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON (one object per line) instead of text",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="debugreg",
        description="Allocate, watch and evict CPU hardware debug registers through debugregd.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "loadtest",
        help="drive many contending clients and audit the daemon (debugreg loadtest --help)",
        add_help=False,
    )
    commands.add_parser(
        "gdb",
        help="run gdb with the extension that reserves its hardware watchpoints' registers "
        "(debugreg gdb --help)",
        add_help=False,
    )

    def command(
        name: str, run: Callable[[Client, argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _connection_options(sub, top=False)
        sub.set_defaults(run=run)
        return sub

    p = command(
        "allocate",
        cmd_allocate,
        "request debug registers; without a token, open a session named --name first",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--cpu", type=int, help="one CPU")
    where.add_argument("--cpus", type=_cpu_list, help="a CPU set ('0,1') or 'all'")
    where.add_argument("--tid", type=int, help="a thread id")
    p.add_argument("--task-cpus", type=_cpu_list, help="with --tid: the CPUs the task may run on")
    p.add_argument("--address", required=True, help="start of the range (0x7ffd1000 or decimal)")
    p.add_argument("--length", type=int, default=1, help="bytes to watch")
    p.add_argument("--access", choices=["exec", "write", "rw"], default="write")
    p.add_argument("--priority", type=_priority, default="normal", help="class name or 0-1000")
    p.add_argument("--non-evictable", action="store_true", help="never evicted (a grant)")
    p.add_argument("--on-evict", choices=["release", "wait"], default="release")
    p.add_argument("--wait", action="store_true", help="queue instead of being refused")
    p.add_argument("--label", default="")
    p.add_argument(
        "--reservation",
        action="store_true",
        help="reserve for a debugger that writes the registers itself (arm: false; --tid only)",
    )
    p.add_argument("--name", default="cli", help="name of the session opened without a token")
    p.add_argument("--ttl", type=float, default=30.0, help="TTL of that session, seconds")
    p.add_argument("--allow-kernel", action="store_true", help="grant kernel addresses (admin)")

    p = command("release", cmd_release, "release allocations (owner or admin)")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = command("ls", cmd_ls, "list live allocations (own with a token, all with the admin key)")
    p.add_argument("--state", choices=["installed", "waiting", "released", "evicted", "expired"])
    p.add_argument("--session")
    p.add_argument("--cpu", type=int)
    p.add_argument("--tid", type=int)

    p = command("show", cmd_show, "show one allocation")
    p.add_argument("id", metavar="ID")

    p = command("evict", cmd_evict, "evict allocations by id or by filter (admin)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--cpu", type=int, help="every allocation installed on this CPU")
    p.add_argument("--tid", type=int, help="every allocation of this task")
    p.add_argument("--below-priority", type=_priority, help="only holders below this priority")
    p.add_argument("--reason", default="evicted by admin")

    p = command(
        "watch",
        cmd_watch,
        "print events as they happen: all with the admin key, one session's with --session",
    )
    p.add_argument("--since", type=int, help="replay from after this event id")
    p.add_argument("--session", help="only this session's events (env DEBUGREG_SESSION)")
    p.add_argument("--count", type=int, help="exit after this many events")

    p = command(
        "hits",
        cmd_hits,
        "follow an allocation's hits: a live table of the call sites that touched it",
    )
    p.add_argument("id", help="the allocation")
    p.add_argument("--since", type=int, help="include the hits reported after this event id")
    p.add_argument("--session", help="its session, when following with a session token")
    p.add_argument("--count", type=int, help="exit after this many hit reports")

    command("state", cmd_state, "the whole state: sessions, allocations, registers (admin)")
    command("host", cmd_host, "the host's profile, CPUs and pools")
    p = command("cpus", cmd_cpus, "register files index by index (admin)")
    p.add_argument("cpu", nargs="?", type=int)

    p = command("debugregs", cmd_debugregs_get, "a task's raw DR0-DR3/DR7 (ptrace grant or admin)")
    raw = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = raw.add_parser("get", help="read DR0-DR3 and DR7 as last written")
    _connection_options(get, top=False)
    get.add_argument("tid", type=int)
    get.set_defaults(run=cmd_debugregs_get)
    put = raw.add_parser("set", help="write DR0-DR3 and DR7 as ptrace would, all or nothing")
    _connection_options(put, top=False)
    put.add_argument("tid", type=int)
    for n in range(4):
        put.add_argument(f"--dr{n}", default="0", help=f"DR{n} address")
    put.add_argument("--dr7", type=_number, default=0, help="DR7 control value")
    put.set_defaults(run=cmd_debugregs_set)

    p = command("session", cmd_session_show, "open, keep alive, show or close a session")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    opener = acts.add_parser("open", help="open a session and print its id and token")
    _connection_options(opener, top=False)
    opener.add_argument("--name", default="cli")
    opener.add_argument("--ttl", type=float, default=30.0)
    opener.add_argument("--max-priority", type=_priority, help="grant (admin key)")
    opener.add_argument("--allow-non-evictable", action="store_true", help="grant (admin key)")
    opener.add_argument("--allow-kernel", action="store_true", help="grant (admin key)")
    opener.add_argument("--export", action="store_true", help="print shell export lines")
    opener.set_defaults(run=cmd_session_open)
    for action, run, help_text in (
        ("keepalive", cmd_session_keepalive, "renew the lease for another TTL"),
        ("close", cmd_session_close, "close it, releasing everything it holds"),
        ("show", cmd_session_show, "show it"),
    ):
        sub = acts.add_parser(action, help=help_text)
        _connection_options(sub, top=False)
        sub.add_argument("session", nargs="?", help="session id (env DEBUGREG_SESSION)")
        sub.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (see `debugreg --help`)."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["loadtest"]:
        from debugreg import loadtest  # heavy; only this command needs it

        return loadtest.main(words[1:])
    at = launch.command_at(words)
    if at is not None and words[at] == "gdb":
        return launch.main([*words[:at], *words[at + 1 :]])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with Client(
            args.url,
            admin_key=args.admin_key,
            token=args.token,
            retries=1,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
        ) as client:
            code: int = args.run(client, args)
            return code
    except UsageError as exc:
        parser.exit(USAGE, f"debugreg: {exc}\n")
    except DebugregError as exc:
        _note(render.error_line(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # `debugreg watch | head`: the reader left, which is not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK


if __name__ == "__main__":
    sys.exit(main())

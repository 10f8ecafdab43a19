"""How the CLI shows things: one stable line per record or event, rich tables for lists, JSON.

Human lines are `key=value` after a fixed prefix so they stay greppable; `--json` prints the
wire models exactly as the daemon sends them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from debugreg import schema
from debugreg.errors import DebugregError, InvalidRequest, Refused
from debugreg.handles import registers_text


def console() -> Console:
    """A console for tables: as wide as needed when stdout is a pipe, so rows never wrap."""
    tty = sys.stdout.isatty()
    return Console(width=None if tty else 300, no_color=not tty, highlight=False, soft_wrap=False)


def to_json(value: Any) -> str:
    """One compact JSON line for a model, a list of models or plain data."""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, list):
        return json.dumps([_plain(v) for v in value], separators=(",", ":"))
    return json.dumps(_plain(value), separators=(",", ":"))


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def when(at: float) -> str:
    """Unix seconds as an ISO-8601 UTC time with milliseconds."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scope_text(scope: dict[str, Any]) -> str:
    """'cpu:0', 'cpus:all', 'cpus:0,1', 'task:4242', 'task:4242@0,1'."""
    kind = scope.get("kind")
    if kind == "cpu":
        return f"cpu:{scope.get('cpu')}"
    cpus = scope.get("cpus")
    cpu_list = cpus if isinstance(cpus, str) else ",".join(str(c) for c in cpus or [])
    if kind == "task":
        return f"task:{scope.get('tid')}" + (f"@{cpu_list}" if cpus else "")
    return f"cpus:{cpu_list}"


def address_text(record: schema.Allocation) -> str:
    return "(kernel)" if record.address is None else f"0x{record.address:x}"


def allocation_line(record: schema.Allocation) -> str:
    """`a7 installed generation=12 registers=cpu0/dr3 priority=300 scope=cpu:0 ...`."""
    parts = [
        record.id,
        record.state,
        *(() if record.arm else ("reservation",)),
        f"generation={record.generation}",
        f"registers={registers_text(record).replace(' ', ',')}",
        f"priority={record.priority}",
        f"scope={scope_text(record.scope)}",
        f"address={address_text(record)}",
        f"length={record.length}",
        f"access={record.access}",
        f"session={record.session or '-'}",
    ]
    if record.label:
        parts.append(f"label={json.dumps(record.label)}")
    if record.reason:
        parts.append(f"reason={json.dumps(record.reason)}")
    return " ".join(parts)


def allocation_details(record: schema.Allocation) -> list[str]:
    """Every field of a record, one `key: value` line each."""
    return [
        f"id: {record.id}",
        f"state: {record.state}",
        f"session: {record.session or '-'}",
        f"scope: {scope_text(record.scope)}",
        f"address: {address_text(record)}",
        f"length: {record.length}",
        f"access: {record.access}",
        f"space: {record.space}",
        f"priority: {record.priority}",
        f"evictable: {str(record.evictable).lower()}",
        f"on_evict: {record.on_evict}",
        f"arm: {'true' if record.arm else 'false (a reservation: its debugger arms it)'}",
        f"generation: {record.generation}",
        f"registers: {registers_text(record)}",
        f"label: {record.label}",
        f"created_at: {when(record.created_at)}",
        f"updated_at: {when(record.updated_at)}",
        f"reason: {record.reason or '-'}",
    ]


def allocations_table(records: Sequence[schema.Allocation], title: str | None = None) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False
    )
    for name in (
        "ID",
        "SESSION",
        "STATE",
        "PRIO",
        "SCOPE",
        "ADDRESS",
        "LEN",
        "ACCESS",
        "GEN",
        "REGISTERS",
        "LABEL",
    ):
        table.add_column(name, no_wrap=True)
    for r in records:
        table.add_row(
            r.id,
            r.session or "-",
            r.state if r.arm else f"{r.state} (reservation)",
            str(r.priority),
            scope_text(r.scope),
            address_text(r),
            str(r.length),
            r.access,
            str(r.generation),
            registers_text(r),
            r.label,
        )
    return table


def sessions_table(sessions: Sequence[schema.SessionInfo]) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD, title="sessions", title_justify="left", pad_edge=False, show_edge=False
    )
    for name in ("ID", "NAME", "TTL", "EXPIRES", "MAX PRIO", "GRANTS", "ALLOCATIONS"):
        table.add_column(name, no_wrap=True)
    for s in sessions:
        grants = [
            g
            for g, on in (("non-evictable", s.allow_non_evictable), ("kernel", s.allow_kernel))
            if on
        ]
        table.add_row(
            s.id,
            s.name,
            f"{s.ttl_s:g}s",
            when(s.expires_at),
            str(s.max_priority),
            ",".join(grants) or "-",
            str(len(s.allocations)),
        )
    return table


def session_lines(session: schema.Session | schema.SessionInfo) -> list[str]:
    """A session, one `key: value` line a field: with its token as it opens (the one time the
    daemon shows it), with its name and allocations when read back."""
    if isinstance(session, schema.Session):
        first = [f"session: {session.id}", f"token: {session.token}"]
        last = []
    else:
        first = [f"session: {session.id}", f"name: {session.name}"]
        last = [f"allocations: {' '.join(session.allocations) or '-'}"]
    return [
        *first,
        f"ttl_s: {session.ttl_s:g}",
        f"expires_at: {when(session.expires_at)}",
        f"max_priority: {session.max_priority}",
        *last,
    ]


def cell_text(cell: dict[str, Any] | None) -> str:
    """Who holds one register: '-', 'a4', 'a4(reservation)', 'outside'."""
    if not cell:
        return "-"
    if cell.get("outside"):
        return "outside"
    held = ",".join(cell.get("allocations", ()))
    return f"{held}(reservation)" if cell.get("reservation") else held


def register_lines(cpus: Iterable[dict[str, Any]]) -> list[str]:
    """Each CPU's register file, index by index: `cpu0 dr: 0=- 1=- 2=a4 3=a1`."""
    out = []
    for view in cpus:
        for pool, info in sorted(view.get("pools", {}).items()):
            slots = info.get("registers") or []
            cells = [f"{i}={cell_text(reg)}" for i, reg in enumerate(slots)]
            out.append(f"cpu{view.get('cpu')} {pool}: " + " ".join(cells))
            for tid, held in sorted(info.get("tasks", {}).items()):
                cells = [f"{h['index']}={cell_text(h)}" for h in held]
                out.append(f"cpu{view.get('cpu')} {pool} task {tid}: " + " ".join(cells))
    return out


def host_lines(host: schema.Host) -> list[str]:
    pools = ",".join(f"{name}={slots}" for name, slots in sorted(host.pools.items()))
    return [
        f"profile: {host.profile}",
        f"cpus: {host.cpus}",
        f"pools: {pools}",
        f"mode_switching: {str(host.mode_switching).lower()}",
        f"backend: {host.backend}",
        f"version: {host.version}",
        *(f"probe {key}: {value}" for key, value in sorted(host.probe.items())),
        *(f"outside debugregd: {outside_text(o)}" for o in host.outside),
    ]


def outside_text(o: schema.Outside) -> str:
    """'2 registers on CPU 1 (pool dr)', as a refusal names them."""
    t = o.target
    where = {"cpu": f"on CPU {t.cpu}", "task": f"on task {t.tid}"}.get(
        t.kind, f"on another task on CPU {t.cpu}"
    )
    plural = "register" if o.registers == 1 else "registers"
    measured = f", {o.measured} measured" if o.measured != o.registers else ""
    return f"{o.registers} {plural} {where} (pool {o.pool}{measured})"


def debugregs_lines(regs: schema.DebugRegsState) -> list[str]:
    lines = [f"tid: {regs.tid}"]
    lines += [f"dr{n}: 0x{getattr(regs, f'dr{n}'):x}" for n in range(4)]
    lines.append(f"dr7: 0x{regs.dr7:x}")
    lines.append(f"session: {regs.session or '-'}")
    held = " ".join(f"{k}={v}" for k, v in sorted(regs.allocations.items()))
    lines.append(f"allocations: {held or '-'}")
    return lines


def event_line(event: schema.Event) -> str:
    """`#12 2026-01-01T00:00:00.000Z evicted a3 session=s1 state=evicted ... reason="..."`."""
    extra = dict(event.model_extra or {})
    alloc = event.allocation
    subject = alloc.id if alloc is not None else (event.session or "-")
    parts = [f"#{event.id}", when(event.at), event.type, subject]
    if alloc is not None:
        parts += [
            f"session={alloc.session or '-'}",
            f"state={alloc.state}",
            f"generation={alloc.generation}",
            f"registers={registers_text(alloc).replace(' ', ',')}",
        ]
    previous = extra.pop("previous", None)
    if isinstance(previous, list):
        moved_from = ",".join(f"cpu{r['cpu']}/{r['pool']}{r['index']}" for r in previous)
        parts.append(f"previous={moved_from or '-'}")
    reconciled = extra.pop("reconciled", False)
    blockers = extra.pop("blockers", None)
    if isinstance(blockers, list) and blockers:
        parts.append(
            "blockers="
            + ",".join(
                str(
                    b.get("allocation")
                    or (
                        f"outside:{b.get('registers')}"
                        if b.get("outside")
                        else f"another-session@{b.get('priority')}"
                    )
                )
                for b in blockers
            )
        )
    if event.reason is not None:
        parts.append(f"reason={json.dumps(event.reason)}")
    for key, value in extra.items():
        parts.append(f"{key}={value if isinstance(value, int | float) else json.dumps(value)}")
    if reconciled:
        parts.append("(reconciled after reset)")
    return " ".join(parts)


def blocker_text(b: schema.Blocker) -> str:
    """A blocker for people: an allocation with its session, priority and scope; users
    outside debugregd by their label; another session's holder (the daemon names it only to
    the admin) by its priority."""
    evictable = "evictable" if b.evictable else "non-evictable"
    if b.outside:
        return b.label or "outside debugregd"
    if b.allocation is None:
        return f"held by another session at priority {b.priority} ({evictable})"
    scope = "-" if b.scope is None else scope_text(b.scope)
    return (
        f"{b.allocation} (session {b.session or '-'}, priority {b.priority}, {evictable}, {scope})"
    )


def error_line(exc: DebugregError) -> str:
    """One line that says what failed and why, with the blockers of a refusal."""
    kind = {
        0: "unreachable",
        401: "unauthorized",
        403: "forbidden",
        404: "not found",
        409: "refused" if isinstance(exc, Refused) else "conflict",
    }.get(exc.status, "invalid request" if isinstance(exc, InvalidRequest) else exc.problem.title)
    line = f"debugreg: {kind}: {exc.problem.detail}"
    if isinstance(exc, Refused) and exc.blockers:
        named = "; ".join(blocker_text(b) for b in exc.blockers)
        line += f" [blockers: {named}]"
    return line


class HitTable:
    """One allocation's call sites, summed over the hit reports seen: `debugreg hits`."""

    def __init__(self, record: schema.Allocation) -> None:
        self.record = record
        self.count = 0
        self.lost = 0
        self.rate = 0.0  # hits per second in the latest report
        self.unknown = False
        self.sites: dict[str, dict[str, Any]] = {}

    def add(self, at: float, report: schema.HitReport) -> None:
        self.count += report.count or 0
        self.lost += report.lost
        self.unknown = self.unknown or report.unknown
        if report.interval_s:
            self.rate = (report.count or 0) / report.interval_s
        for site in report.sites:
            key = site.ip or "-"
            known = self.sites.setdefault(
                key, {"count": 0, "tids": set(), "threads": 0, "cpus": set(), "last": at}
            )
            known["count"] += site.count
            known["tids"].update(site.tids)
            known["threads"] = max(known["threads"], site.threads, len(known["tids"]))
            known["cpus"].update(site.cpus)
            known["symbol"] = site.symbol
            known["mapping"] = site.mapping
            known["last"] = site.last

    def render(self) -> Table:
        title = (
            f"{self.record.id} {address_text(self.record)}+{self.record.length} "
            f"{self.record.access}: {self.count} hits, {self.lost} samples lost, "
            f"{self.rate:.0f}/s" + (" (some unknown: a restart)" if self.unknown else "")
        )
        table = Table(
            box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False
        )
        for name in ("SAMPLES", "IP", "SYMBOL", "MAPPING", "THREADS", "CPUS", "LAST"):
            table.add_column(name, no_wrap=True)
        ranked = sorted(self.sites.items(), key=lambda kv: -int(kv[1]["count"]))
        for ip, site in ranked:
            mapping = site.get("mapping")
            table.add_row(
                str(site["count"]),
                ip,
                site.get("symbol") or "-",
                f"{mapping.file}+{mapping.offset}" if mapping is not None else "-",
                ",".join(str(t) for t in sorted(site["tids"])[:4])
                + (f" (+{site['threads'] - 4})" if site["threads"] > 4 else ""),
                ",".join(str(c) for c in sorted(site["cpus"])),
                when(site["last"]),
            )
        return table


def live(renderable: Table) -> Live | None:
    """A table redrawn in place on a terminal; None elsewhere (it is printed once, at the end)."""
    out = console()
    if not out.is_terminal:
        return None
    shown = Live(renderable, console=out, auto_refresh=False)
    shown.start()
    return shown

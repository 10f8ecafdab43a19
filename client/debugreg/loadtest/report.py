"""What a run shows: a live panel while it goes, a final report, and one JSON object."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from debugreg.loadtest.runner import Progress, Result
from debugreg.loadtest.stats import summarize_ms

LAG_WARNING_MS = 20.0
ORDER = (
    "allocate",
    "allocate_ptrace",
    "release",
    "set_debugregs",
    "open_session",
    "subscribe",
    "keepalive",
    "close_session",
    "expiry",
    "snapshot",
)


def progress_panel(p: Progress) -> Panel:
    """The live display: rate, evictions, refusals and the recent allocate p99."""
    table = Table.grid(padding=(0, 2))
    for _ in range(4):
        table.add_column(justify="right", style="bold")
        table.add_column()
    table.add_row(
        f"{p.operations:,}",
        "operations",
        f"{p.rate:,.0f}",
        "ops/s",
        f"{p.allocate_p99_ms:,.1f} ms",
        "allocate p99 (5 s)",
        f"{p.clients}",
        "clients",
    )
    table.add_row(
        f"{p.evictions:,}",
        "evictions",
        f"{p.notices:,}",
        "notices",
        f"{p.refusals:,}",
        "refusals",
        f"{p.errors:,}",
        "errors",
    )
    style = "red" if p.violations else "green"
    table.add_row(
        f"{p.events:,}",
        "events",
        f"{p.snapshots}",
        "snapshots",
        Text(f"{p.violations}", style=style),
        "violations so far",
        "",
        "",
    )
    return Panel(table, title=f"debugreg loadtest: {p.phase} {p.elapsed_s:5.1f} s", expand=False)


def _ops_order(names: list[str]) -> list[str]:
    known = [n for n in ORDER if n in names]
    return known + sorted(n for n in names if n not in ORDER)


def to_json(result: Result) -> dict[str, Any]:
    """The machine-readable report (`--json`)."""
    rec = result.recorder
    totals = rec.totals()
    notice_ms = summarize_ms([n.latency_s for n in result.notices])
    load_ops = sum(s.count for name, s in rec.ops.items() if name not in ("snapshot", "expiry"))
    return {
        "passed": result.passed,
        "url": result.config.url,
        "scenarios": list(result.config.scenarios),
        "clients": sum(result.clients.values()),
        "roles": dict(result.clients),
        "seed": result.config.seed,
        "think_ms": result.config.think_ms,
        "host": {
            "profile": result.host.profile,
            "cpus": result.host.cpus,
            "pool": result.host.pool,
            "slots": result.host.slots,
        },
        "duration_s": round(result.load_s, 3),
        "setup_s": round(result.setup_s, 3),
        "drain_s": round(result.drain_s, 3),
        "operations_total": totals["operations"],
        "rate_per_s": round(load_ops / result.load_s, 1) if result.load_s else 0.0,
        "successes": totals["successes"],
        "refusals": totals["refusals"],
        "errors": totals["errors"],
        "error_kinds": dict(rec.error_kinds.most_common(20)),
        "operations": {name: rec.ops[name].summary() for name in _ops_order(list(rec.ops))},
        "evictions": result.evictions,
        "evictions_total": result.evictions_total,
        "notices": len(result.notices),
        "notice_latency_ms": {**notice_ms, "count": len(result.notices)},
        "events": result.events,
        "tester_loop_lag_ms": summarize_ms(result.loop_lag_s),
        "stream_failures": result.stream_failures[:20],
        "audit": result.audit.to_dict(),
    }


def render(result: Result, console: Console) -> None:
    """The human report."""
    data = to_json(result)
    console.print(
        f"[bold]debugreg loadtest[/]: {', '.join(data['scenarios'])}; {data['clients']} clients "
        f"({', '.join(f'{n} {r}' for r, n in data['roles'].items())}); "
        f"{data['host']['profile']}, {data['host']['cpus']} CPUs x {data['host']['slots']} "
        f"{data['host']['pool']}; seed {data['seed']}, think {data['think_ms']:g} ms"
    )
    console.print(
        f"{data['operations_total']:,} operations in {data['duration_s']:.1f} s of load "
        f"({data['rate_per_s']:,.0f}/s); setup {data['setup_s']:.1f} s, drain "
        f"{data['drain_s']:.1f} s"
    )
    table = Table(title="operations (latency in ms)", title_justify="left")
    for column in ("operation", "count", "ok", "refused", "errors"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for column in ("p50", "p90", "p99", "p99.9", "max"):
        table.add_column(column, justify="right")
    for name, s in data["operations"].items():
        table.add_row(
            name,
            f"{s['count']:,}",
            f"{s['successes']:,}",
            f"{s['refusals']:,}",
            f"{s['errors']:,}",
            *(f"{s[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")),
        )
    console.print(table)
    n = data["notice_latency_ms"]
    match = "=" if data["evictions"] == data["notices"] else "[red]!=[/]"
    console.print(
        f"evictions {data['evictions']:,} {match} notices {data['notices']:,} "
        f"(all evictions in the log: {data['evictions_total']:,}); eviction-to-notice ms: "
        f"p50 {n['p50']:.2f}, p90 {n['p90']:.2f}, p99 {n['p99']:.2f}, p99.9 {n['p999']:.2f}, "
        f"max {n['max']:.2f}"
    )
    lag = data["tester_loop_lag_ms"]
    if lag["p99"] > LAG_WARNING_MS:
        console.print(
            f"[yellow]the tester's own event loop lagged (p99 {lag['p99']:.0f} ms, max "
            f"{lag['max']:.0f} ms): it was short of CPU, so latencies above include its delay[/]"
        )
    if data["error_kinds"]:
        console.print("errors: " + "; ".join(f"{k} x{v}" for k, v in data["error_kinds"].items()))
    a = data["audit"]
    checked = ", ".join(f"{v:,} {k}" for k, v in a["checked"].items())
    if a["passed"]:
        console.print(f"[green bold]audit passed[/] ({checked})")
    else:
        kinds = ", ".join(f"{k} x{v}" for k, v in a["violation_kinds"].items())
        console.print(f"[red bold]audit FAILED[/]: {a['violation_count']} violations ({kinds})")
        console.print(f"checked: {checked}")
        for v in a["violations"][:15]:
            console.print(f"  [red]{v['kind']}[/]: {v['detail']}", markup=True, highlight=False)

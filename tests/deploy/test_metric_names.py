"""Every metric a rule, an alert or a panel uses is one a running daemon exports: a renamed or
missing metric would leave an alert silent and a panel empty, and neither says so."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.fleet import SCRAPE_SERIES, board_queries, metric_names, rules
from tests.support.daemon import Daemon

# The series names each type of family stands for.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}


def exported(daemon: Daemon) -> set[str]:
    """The series names a scrape of the daemon's /metrics declares. A labelled family is
    declared (# TYPE) before its first series exists: events by type before the first event,
    outside holders while there are none."""
    with daemon.anon() as http:
        text = http.get("/metrics").text
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_the_name_reader_finds_metrics_and_skips_functions_labels_and_variables() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (node, le) (rate(a_bucket{node="$node",le!="x"}'
        "[$__rate_interval]))) / on (node) group_left b:c:d offset 5m > bool 1e3 and c"
    )
    assert metric_names(expr) == {"a_bucket", "b:c:d", "c"}


def test_every_metric_the_rules_and_the_board_use_is_exported(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    recorded = {r.name for r in rules() if not r.alert}
    uses: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule.expr):
            uses.setdefault(name, set()).add(f"rule {rule.name}")
    for query in board_queries():
        for name in metric_names(query.expr):
            uses.setdefault(name, set()).add(f"panel {query.panel!r}")
    assert "debugregd_registers_used" in uses  # the reader found the names at all

    missing = {
        name: sorted(where)
        for name, where in uses.items()
        if name not in recorded and name not in SCRAPE_SERIES and name not in exported(daemon)
    }
    assert missing == {}, f"used but not exported by the daemon: {missing}"

"""deploy/grafana/debugregd.json: a board Grafana can import, a fleet overview then one node, and
PromQL that Prometheus parses. (test_metric_names.py checks the names against a real daemon.)"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.fleet import as_prometheus_would_see, board, metric_names, panels, tool


def rows(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The panels under each row, by the row's title (rows are flat, as Grafana saves them)."""
    out: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = out.setdefault(panel["title"], [])
        else:
            current.append(panel)
    return out


def test_the_board_is_importable_json_with_a_datasource_and_a_node_variable() -> None:
    dashboard = board()
    assert dashboard["title"] == "debugregd" and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "node" in variables["node"]["query"]["query"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(board()):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x, y in itertools.product(
            range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
        ):
            assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
            cells[(x, y)] = panel["title"]


def test_the_fleet_comes_first_then_one_nodes_registers_evictions_refusals_and_notices() -> None:
    sections = rows(board())
    assert list(sections) == ["Fleet", "Node $node"]
    node = sections["Node $node"]
    for panel in node:
        for target in panel["targets"]:
            assert 'node="$node"' in target["expr"], f"{panel['title']}: {target['expr']}"
    used = set().union(*(metric_names(t["expr"]) for p in node for t in p["targets"]))
    assert {
        "debugregd_registers_used",
        "debugregd_evictions_total",
        "debugregd_refusals_total",
        "debugregd_notice_delivery_seconds_bucket",
        "debugregd_outside_registers",
    } <= used


def test_every_query_is_promql_that_prometheus_parses(tmp_path: Path) -> None:
    # promtool parses expressions only as rules: each query becomes one.
    queries = [t["expr"] for p in panels(board()) for t in p.get("targets", [])]
    group = {
        "name": "board",
        "rules": [
            {"record": f"board:query_{n}", "expr": as_prometheus_would_see(expr)}
            for n, expr in enumerate(queries)
        ],
    }
    path = tmp_path / "board.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    checked = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout

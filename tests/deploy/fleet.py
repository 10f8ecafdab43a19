"""The deployment files under test, and the PromQL they hold: the Prometheus rules and the Grafana
board, read the way Prometheus and Grafana read them."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "rules.test.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
BOARD = DEPLOY / "grafana" / "debugregd.json"
MANIFESTS = DEPLOY / "kubernetes" / "daemonset.yaml"
UNIT = DEPLOY / "debugregd.service"
DROP_INS = sorted((DEPLOY / "systemd").glob("*.conf"))

# Series Prometheus makes itself for every target, not the daemon.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

# Words that stand where a metric name could, but are PromQL's own (the grouping ones may stand
# without a label list: `group_left`).
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "on", "ignoring"}
    | {"group_left", "group_right", "by", "without"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# Not after a word character, a dot or `$` (numbers, durations, Grafana's variables).
_NAME = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords, label names or Grafana variables."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _NAME.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


@dataclass(frozen=True)
class Rule:
    """A recording or alerting rule of rules.yml."""

    group: str
    name: str
    expr: str
    alert: bool
    raw: dict[str, Any]


def rules() -> list[Rule]:
    """Every rule of rules.yml, in order."""
    out = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            out.append(Rule(group["name"], name, rule["expr"], "alert" in rule, rule))
    return out


@dataclass(frozen=True)
class Query:
    """One PromQL target of a Grafana panel."""

    panel: str
    expr: str


def board() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(BOARD.read_text())
    return board


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def board_queries() -> list[Query]:
    return [
        Query(panel["title"], target["expr"])
        for panel in panels(board())
        for target in panel.get("targets", [])
    ]


def as_prometheus_would_see(expr: str) -> str:
    """A panel's query with Grafana's variables filled in as Grafana would."""
    return expr.replace("$__rate_interval", "5m").replace("$node", "n1")


def tool(name: str) -> str:
    """The path of a Debian tool the tests drive (scripts/debian-packages installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run scripts/debian-packages (make test does)")
    return path

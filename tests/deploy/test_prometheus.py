"""deploy/prometheus: the rules load, promtool's unit tests pass, every rule has one, and the
scrape configuration is one Prometheus accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.fleet import RULE_TESTS, RULES, SCRAPE_CONFIG, rules, tool

PROMTOOL_TIMEOUT_S = 60


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
        cwd=cwd,
    )


def test_the_rules_load() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


def test_promtools_unit_tests_of_the_rules_pass() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_recording_rule_and_every_alert_has_a_unit_test() -> None:
    suite = yaml.safe_load(RULE_TESTS.read_text())
    evaluated = {
        case["expr"].strip() for test in suite["tests"] for case in test.get("promql_expr_test", [])
    }
    # An alert is covered only by a case where it fires (and `exp_alerts: []` ones show when not).
    fired = {
        case["alertname"]
        for test in suite["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for test in suite["tests"]
        for case in test.get("alert_rule_test", [])
        if not case["exp_alerts"]
    }
    alerts = {r.name for r in rules() if r.alert}
    records = {r.name for r in rules() if not r.alert}
    assert records - evaluated == set(), "recording rules without a promql_expr_test"
    assert alerts - fired == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"


def test_every_alert_says_how_bad_and_what_happened() -> None:
    for rule in rules():
        if rule.alert:
            assert rule.raw["labels"]["severity"] in ("critical", "warning", "info"), rule.name
            assert {"summary", "description"} <= rule.raw["annotations"].keys(), rule.name


def test_the_scrape_configuration_is_valid_and_labels_each_target_with_its_node(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "debugregd"  # what the rules select on
    assert job["scheme"] == "https"
    assert any(
        r.get("source_labels") == ["__meta_kubernetes_pod_node_name"]
        and r["target_label"] == "node"
        for r in job["relabel_configs"]
    )
    # Debian's promtool is built without Kubernetes service discovery: check everything else
    # (TLS, relabelling, the rule files) with a static target in its place.
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["127.0.0.1:8765"]}]
    (tmp_path / SCRAPE_CONFIG.name).write_text(yaml.safe_dump(config))
    (tmp_path / RULES.name).write_text(RULES.read_text())
    checked = promtool("check", "config", SCRAPE_CONFIG.name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout

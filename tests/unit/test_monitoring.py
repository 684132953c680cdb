"""Monitoring as code: the Prometheus config and rules pass promtool, every alert has the
fields on-call needs, a promtool unit test that makes it fire, and a runbook section, and
every metric they query is one the services export."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from container_checks import ROOT
from signaling_shared.metrics import ServiceMetrics
from support import scaled
from tools import require
from ws_relay.metrics import RelayMetrics

MONITORING = ROOT / "monitoring"
RULES = sorted((MONITORING / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"


def alerts() -> list[dict[str, Any]]:
    return [rule for path in RULES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``name`` run in monitoring/; skipped where missing unless this run requires it (CI)."""
    binary = require(name)
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=scaled(60), check=False, cwd=MONITORING
    )


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return tool("promtool", *args)


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return tool("amtool", *args)


def test_promtool_accepts_the_config_and_rules() -> None:
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", *(str(p) for p in RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *(str(p) for p in RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_each_alert_has_what_on_call_needs(rule: dict[str, Any]) -> None:
    assert rule.get("for"), "no `for`: one bad scrape would page"
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert set(rule["annotations"]) >= {"summary", "description", "runbook_url"}
    anchor = rule["annotations"]["runbook_url"].removeprefix("docs/runbook.md#")
    assert anchor == rule["alert"].lower()
    assert f"\n## {rule['alert']}\n" in RUNBOOK.read_text(), f"docs/runbook.md has no section {rule['alert']}"


def test_each_alert_has_a_unit_test_that_makes_it_fire() -> None:
    fired = {
        check["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for check in test.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    assert {rule["alert"] for rule in alerts()} <= fired


def exported_names() -> set[str]:
    """Every sample name the services can export (counters' _total, histograms' _bucket, ...)."""
    names: set[str] = set()
    for metrics in (ServiceMetrics("any", CollectorRegistry()), RelayMetrics(CollectorRegistry())):
        for family in metrics.registry.collect():
            names.add(family.name)
            kind = family.type
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [])
            names.update(family.name + suffix for suffix in suffixes)
    return names


# What the blackbox exporter reports for the edge-certificate job (module https_certificate).
BLACKBOX = frozenset({"probe_success", "probe_ssl_earliest_cert_expiry"})


def test_rules_query_only_metrics_the_services_export() -> None:
    exported = exported_names()
    for rule in alerts():
        used = set(re.findall(r"\bsignaling_[a-z_]+", rule["expr"]))  # (the others use Prometheus' `up`)
        assert used <= exported, f"{rule['alert']} queries {sorted(used - exported)}, which no service exports"
        probes = set(re.findall(r"\bprobe_[a-z_]+", rule["expr"]))
        assert probes <= BLACKBOX, f"{rule['alert']} queries {sorted(probes - BLACKBOX)}"


def test_the_runbook_has_no_section_without_an_alert() -> None:
    sections = set(re.findall(r"^## (\w+)$", RUNBOOK.read_text(), flags=re.MULTILINE))
    assert sections == {rule["alert"] for rule in alerts()}


def test_the_config_loads_every_rule_file_and_scrapes_every_job() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/*.yml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"auth-api", "rooms-api", "ws-relay", "node", "coturn", "edge-certificate"}


def load_dashboard_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_build", MONITORING / "dashboards" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "dashboards" / "signaling.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_is_what_its_builder_builds() -> None:
    """signaling.json is generated: edit build.py and run it, never the JSON."""
    assert (MONITORING / "dashboards" / "signaling.json").read_text() == load_dashboard_builder().render()


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads((MONITORING / "dashboards" / "signaling.json").read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = [
        (x, y)
        for panel in panels
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(0 <= x < 24 for x, _ in cells)
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        assert panel["fieldConfig"]["defaults"]["unit"]


def test_dashboard_queries_parse_and_use_exported_metrics(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule); each uses only exported metrics."""
    exported = exported_names()
    queries = dashboard_queries()
    for query in queries:
        used = set(re.findall(r"\bsignaling_[a-z_]+", query))
        probes = set(re.findall(r"\bprobe_[a-z_]+", query))
        assert used or probes, query
        assert used <= exported, f"{query} uses {sorted(used - exported)}, which no service exports"
        assert probes <= BLACKBOX, f"{query} uses {sorted(probes - BLACKBOX)}, which the blackbox exporter lacks"
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": q.replace("$__rate_interval", "5m")}
                    for n, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    result = amtool("check-config", "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("severity", "receiver"), [("critical", "page"), ("warning", "notify")])
def test_alerts_route_by_severity(severity: str, receiver: str) -> None:
    result = amtool("config", "routes", "test", "--config.file=alertmanager.yml", f"severity={severity}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


def test_inhibitions_name_real_alerts() -> None:
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    names = {rule["alert"] for rule in alerts()}
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            if matcher.startswith("alertname"):
                pattern = matcher.split("=", 1)[1].lstrip("~").strip('"')
                assert {name for name in names if re.fullmatch(pattern, name)}, matcher
                assert set(pattern.split("|")) <= names, matcher


def test_grafana_provisions_the_dashboard_and_its_datasource() -> None:
    """The provisioning files name a Prometheus datasource and a read-only file provider; the
    dashboard picks its datasource through the variable that datasource satisfies."""
    datasources = yaml.safe_load((MONITORING / "grafana" / "datasources.yml").read_text())
    providers = yaml.safe_load((MONITORING / "grafana" / "dashboards.yml").read_text())
    assert datasources["apiVersion"] == providers["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"].endswith(":9090")
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["options"]["path"]
    dashboard = json.loads((MONITORING / "dashboards" / "signaling.json").read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", source["type"])
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {"${datasource}"}

"""ansible/scripts: the inventory written from Terraform's outputs, and the deploy pipeline's
stage handling and confirmation (no Terraform, Ansible or network needed)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from container_checks import ROOT

SCRIPTS = ROOT / "ansible" / "scripts"
OUTPUTS = json.loads((ROOT / "tests" / "ansible" / "terraform-outputs.json").read_text())


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ansible_scripts_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


inventory = load("inventory")
deploy = load("deploy")


def host(document: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    hosts = document["all"]["children"]["signaling"]["hosts"]
    assert len(hosts) == 1
    name, variables = next(iter(hosts.items()))
    return str(name), dict(variables)


def test_the_firewall_mirrors_the_security_group() -> None:
    _, variables = host(inventory.inventory("dev", OUTPUTS))
    opened = {(rule["name"], rule["protocol"], rule["from"], rule["to"]) for rule in variables["base_firewall_rules"]}
    ports = OUTPUTS["host_network"]["value"]["public_ports"]
    assert opened == {(name, p["protocol"], p["from"], p["to"]) for name, p in ports.items()}
    assert variables["base_firewall_ssh_sources"] == ["198.51.100.0/24"]
    assert variables["base_firewall_metrics_sources"] == ["10.20.0.0/16"]
    assert variables["base_firewall_metrics_ports"] == [9100]


def test_a_remote_environment_is_reached_at_its_elastic_ip() -> None:
    name, variables = host(inventory.inventory("prod", OUTPUTS))
    assert name == "signaling-prod"
    assert variables["ansible_host"] == "203.0.113.7"
    assert "ansible_connection" not in variables
    assert variables["signaling_settings"]["SIGNALING_TABLE_PREFIX"] == "local-"
    assert (variables["coturn_external_ip"], variables["coturn_private_ip"]) == ("203.0.113.7", "10.42.0.12")
    assert (variables["coturn_min_port"], variables["coturn_max_port"]) == (49152, 65535)
    assert variables["signaling_turn_enabled"] is True


def test_local_is_this_machine_over_a_local_connection() -> None:
    name, variables = host(inventory.inventory("local", OUTPUTS))
    assert name == "localhost"
    assert variables["ansible_connection"] == "local"
    assert "ansible_host" not in variables


def test_without_turn_ports_coturn_is_off() -> None:
    outputs = json.loads(json.dumps(OUTPUTS))
    ports = outputs["host_network"]["value"]["public_ports"]
    for name in [name for name in ports if name.startswith("turn")]:
        del ports[name]
    _, variables = host(inventory.inventory("dev", outputs))
    assert variables["signaling_turn_enabled"] is False
    assert "coturn_min_port" not in variables


def test_the_relay_node_count_comes_from_terraform() -> None:
    """host_network's relay_nodes becomes signaling_relay_nodes; an output without it is refused, not taken as 1."""
    _, variables = host(inventory.inventory("dev", OUTPUTS))
    assert variables["signaling_relay_nodes"] == 3
    outputs = json.loads(json.dumps(OUTPUTS))
    del outputs["host_network"]["value"]["relay_nodes"]
    with pytest.raises(inventory.OutputsError, match="relay_nodes"):
        inventory.inventory("dev", outputs)


def test_missing_outputs_are_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    outputs = {name: value for name, value in OUTPUTS.items() if name != "signaling_env"}
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    assert inventory.main(["dev", str(tmp_path / "outputs.json")]) == 1
    assert "terraform output 'signaling_env' is missing: apply the environment first" in capsys.readouterr().err


def test_the_pipeline_names_the_failing_stage_and_runs_nothing_after_it(capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[str] = []
    pipeline = deploy.Pipeline()
    pipeline.add("first", lambda: ran.append("first"))

    def fail() -> None:
        raise deploy.StageFailed("terraform apply exited 1")

    pipeline.add("second", fail)
    pipeline.add("third", lambda: ran.append("third"))
    assert pipeline.run() == 1
    assert ran == ["first"]
    out = capsys.readouterr().out
    assert "==> [1/3] first" in out
    assert "==> [2/3] second" in out
    assert "[3/3]" not in out
    assert "==> FAILED at stage 'second': terraform apply exited 1" in out


def test_apply_and_destroy_need_a_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no terminal
    with pytest.raises(deploy.StageFailed, match="--auto-approve"):
        deploy.confirm("Destroy everything in prod?", False)
    deploy.confirm("Destroy everything in prod?", True)  # --auto-approve: no question


def test_a_no_stops_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    with pytest.raises(deploy.StageFailed, match="not confirmed"):
        deploy.confirm("Apply this plan to prod?", False)


def test_through_ssm_the_host_is_its_instance_id_behind_a_proxy() -> None:
    _, variables = host(inventory.inventory("prod", OUTPUTS, via_ssm=True))
    assert variables["ansible_host"] == "i-0123456789abcdef0"
    assert "aws ssm start-session --target %h" in variables["ansible_ssh_common_args"]


def test_a_domain_without_its_dns_record_stops_the_smoke_stage_with_what_to_do() -> None:
    with pytest.raises(deploy.StageFailed, match=r"point its DNS record at the Elastic IP 203\.0\.113\.7"):
        deploy.check_dns("signaling.example.invalid", "203.0.113.7")  # .invalid never resolves (RFC 6761)


def test_a_domain_elsewhere_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    deploy.check_dns("localhost", "203.0.113.7")
    assert "localhost resolves to" in capsys.readouterr().out

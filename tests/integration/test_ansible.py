"""ansible/: linted (ansible-lint profile production, yamllint), syntax-checked, run in check
mode against this machine, and every template rendered and checked by the program that reads
it (nft, sshd, apt-config, chronyd, turnserver, amtool, the blackbox exporter, systemd,
the services' settings, the compose specification).

The inventory is the one ``ansible/scripts/inventory.py`` writes from Terraform's outputs
(tests/ansible/terraform-outputs.json, shaped as ``terraform output -json`` prints them;
tests/integration/test_deploy.py runs the same path on a real ``terraform apply``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from container_checks import ROOT, SETTINGS
from signaling_shared.settings import CommonSettings
from support import scaled
from tools import TOOLS, require

ANSIBLE = ROOT / "ansible"
OUTPUTS = ROOT / "tests" / "ansible" / "terraform-outputs.json"
BIN = Path(sys.executable).parent
TIMEOUT = scaled(600)


def run(*command: str, cwd: Path = ANSIBLE, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", **env}
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """inventories/local/hosts.yml as make deploy writes it, in a copy of the inventory folder."""
    folder = tmp_path_factory.mktemp("inventory") / "local"
    folder.mkdir()
    (folder / "group_vars").symlink_to(ANSIBLE / "inventories" / "local" / "group_vars")
    result = run(sys.executable, str(ANSIBLE / "scripts" / "inventory.py"), "local", str(OUTPUTS))
    assert result.returncode == 0, result.stderr
    (folder / "hosts.yml").write_text(result.stdout)
    return folder / "hosts.yml"


def test_ansible_lint_production_profile_passes() -> None:
    result = run(str(BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_yamllint_passes() -> None:
    result = run(str(BIN / "yamllint"), "--strict", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_playbook_passes_its_syntax_check(inventory: Path) -> None:
    result = run(str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml", "--syntax-check")
    assert result.returncode == 0, result.stdout + result.stderr


def recap(output: str) -> dict[str, int]:
    match = re.search(r"localhost\s+:\s+(.*)", output.split("PLAY RECAP")[-1])
    assert match, output
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match[1])}


@pytest.fixture(scope="module")
def check_run(inventory: Path) -> subprocess.CompletedProcess[str]:
    return run(str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml", "--check", "--diff")


def test_a_check_mode_run_against_this_machine_succeeds_and_says_what_it_would_change(
    check_run: subprocess.CompletedProcess[str],
) -> None:
    output = check_run.stdout + check_run.stderr
    assert check_run.returncode == 0, output
    counts = recap(output)
    assert counts["failed"] == 0, counts
    assert counts["unreachable"] == 0, counts
    assert counts["changed"] > 0, counts  # nothing of this is on the machine: every file would change
    # Every role ran, and its files show up as diffs.
    for role in ("base", "docker", "coturn", "signaling", "monitoring"):
        assert f"TASK [{role} : " in output, f"role {role} did not run"
    assert 'tcp dport 443 accept comment "https"' in output  # the firewall mirrors the security group
    assert 'ip saddr 198.51.100.0/24 tcp dport 22 accept comment "ssh"' in output
    assert "PermitRootLogin no" in output


def test_check_mode_never_prints_the_secrets(check_run: subprocess.CompletedProcess[str]) -> None:
    secrets = yaml.safe_load((ANSIBLE / "inventories" / "local" / "group_vars" / "signaling" / "main.yml").read_text())
    for secret in secrets["vault_turn_secrets"]:
        assert secret not in check_run.stdout + check_run.stderr


@pytest.fixture(scope="module")
def rendered(inventory: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every role template rendered with the roles' defaults and the local inventory."""
    directory = tmp_path_factory.mktemp("rendered")
    playbook = ROOT / "tests" / "ansible" / "render.yml"
    result = run(str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), "-e", f"render_dir={directory}")
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


def templates() -> list[str]:
    return sorted(
        f"{path.parent.parent.name}/{path.name.removesuffix('.j2')}" for path in ANSIBLE.glob("roles/*/templates/*.j2")
    )


def checked(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def check_nftables(path: Path) -> None:
    checked(run(require("nft"), "--check", "--file", str(path)))


def check_sshd(path: Path) -> None:
    sshd = require("sshd")
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd -t wants its privilege separation folder
    except PermissionError:
        pytest.skip("sshd -t needs /run/sshd, which only root can create here")
    checked(run(sshd, "-t", "-f", str(path)))


def check_apt(path: Path) -> None:
    dump = checked(run(require("apt-config"), "-c", str(path), "dump"))
    assert "Unattended-Upgrade" in dump


def check_chrony(path: Path) -> None:
    printed = checked(run(require("chronyd"), "-p", "-f", str(path)))
    assert "server 169.254.169.123" in printed


def check_docker_sources(path: Path) -> None:
    """apt parses the deb822 source (without downloading it): it lists the index it would fetch."""
    parts = path.parent / "sources.list.d"
    parts.mkdir(exist_ok=True)
    (parts / "docker.sources").write_text(path.read_text())
    listed = checked(
        run(
            require("apt-get"),
            "-o",
            f"Dir::Etc::SourceParts={parts}",
            "-o",
            "Dir::Etc::SourceList=/dev/null",
            "--print-uris",
            "update",
        )
    )
    assert "download.docker.com" in listed


# What systemd-analyze may say about a unit here and nothing else: this machine has no
# Docker engine (no docker.service, and its docker client is not in /usr/bin).
ABSENT_DOCKER = re.compile(
    r".*: (Failed to create \S+/start: Unit docker\.service not found\."
    r"|Command /usr/bin/docker is not executable: No such file or directory)"
)


def check_unit(path: Path) -> None:
    """systemd's own parser: every complaint must be one about Docker being absent here. The
    programs the unit runs must be here for it to verify (a missing one is a missing tool)."""
    analyze = require("systemd-analyze")
    for program in re.findall(r"^Exec\w*=[-@:+!]*(/\S+)", path.read_text(), flags=re.MULTILINE):
        if Path(program).name in TOOLS and not os.access(program, os.X_OK):
            require(Path(program).name)  # skips, or fails where the run requires it
    result = run(analyze, "verify", str(path))
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not ABSENT_DOCKER.fullmatch(line)
    ]
    assert complaints == [], complaints


def check_turnserver(path: Path) -> None:
    """Debian's coturn starts with the file (on a free port) and rejects no line of it, but the
    exporter's, which its build lacks (the role runs the official image, which has it)."""
    from devstack.ports import retrying_on_conflict

    lines = retrying_on_conflict(lambda: turnserver_start_up(path))
    rejected = [line for line in lines if "Bad configuration" in line and "prometheus" not in line]
    assert rejected == [], rejected


def turnserver_start_up(path: Path) -> list[str]:
    """coturn's start-up lines with the file on a free port, up to the one saying it is ready;
    AddressInUse if another program took the port first (coturn would keep trying it)."""
    from devstack.coturn import READY_LINE
    from devstack.ports import AddressInUse, free_port, says_address_in_use

    config = path.read_text().replace("listening-port=3478", f"listening-port={free_port()}")
    config += f"\nlistening-ip=127.0.0.1\npidfile={path.parent}/turnserver.pid\nuserdb={path.parent}/turndb\n"
    (path.parent / "turnserver-test.conf").write_text(config)
    process = subprocess.Popen(
        [require("turnserver"), "-c", str(path.parent / "turnserver-test.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if says_address_in_use(line):
                raise AddressInUse(line)
            if READY_LINE in line:
                break
    finally:
        process.terminate()
        process.communicate(timeout=scaled(30))
    assert any(READY_LINE in line for line in lines), "".join(lines)
    return lines


def check_alertmanager(path: Path) -> None:
    checked(run(require("amtool"), "check-config", str(path)))


def check_blackbox(path: Path) -> None:
    exporter = require("prometheus-blackbox-exporter")
    checked(run(exporter, "--config.check", f"--config.file={path}"))


def check_flags(program: str) -> Any:
    def check(path: Path) -> None:
        """A shell file of ARGS whose every flag the program knows."""
        checked(run("sh", "-n", str(path)))
        args = re.fullmatch(r'ARGS="(.*)"', path.read_text().splitlines()[-1])
        assert args, path.read_text()
        known = checked(run(require(program), "--help"))
        for flag in args[1].split():
            assert f"--{flag.lstrip('-').split('=')[0].removeprefix('no-')}" in known, f"{program} has no {flag}"

    return check


def check_env(path: Path) -> None:
    """Each service loads its settings from the file, TURN lists included."""
    for settings_class in SETTINGS:
        settings: CommonSettings = settings_class(_env_file=path)  # type: ignore[call-arg]
        assert settings.turn_urls == ["turn:localhost:3478?transport=udp"]
        assert len(settings.turn_secrets) == 1
        assert settings.cognito_user_pool_id == "us-west-1_Example00"


def check_compose_override(path: Path) -> None:
    """The compose specification's schema (no compose plugin here; the role runs `docker compose config`);
    with the inventory's three relay nodes, ws-relay-2 and -3 are ws-relay again (extends) with
    their own node id, public URL through the edge and loopback port."""
    override = yaml.safe_load(path.read_text())
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = override["services"]
    added = {name: service["extends"] for name, service in services.items() if name not in compose["services"]}
    assert added == {name: {"file": "compose.yaml", "service": "ws-relay"} for name in ("ws-relay-2", "ws-relay-3")}
    relays = [services[name] for name in ("ws-relay", "ws-relay-2", "ws-relay-3")]
    assert [(r["environment"]["SIGNALING_NODE_ID"], r["environment"]["SIGNALING_PUBLIC_WS_URL"]) for r in relays] == [
        (f"relay-{k}", f"wss://localhost/nodes/relay-{k}") for k in (1, 2, 3)
    ]
    ports = [port for service in services.values() for port in service.get("ports", [])]
    assert [port for port in ports if port.endswith(":8080")] == [f"127.0.0.1:{18080 + k}:8080" for k in (0, 1, 2)]
    assert len(set(ports)) == len(ports)
    assert services["edge"]["environment"] == {"EDGE_WS_RELAY": "ws-relay:8080 ws-relay-2:8080 ws-relay-3:8080"}
    assert set(services["edge"]["depends_on"]) == {"ws-relay-2", "ws-relay-3"}
    checked(run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)))


def caddy_routes(config: dict[str, Any]) -> list[tuple[list[str], list[dict[str, Any]]]]:
    """The public site's routes, subroutes flattened: (path matchers, handlers) in order."""
    (site,) = [s for s in config["apps"]["http"]["servers"].values() if s["listen"] != ["127.0.0.1:8081"]]
    flat: list[tuple[list[str], list[dict[str, Any]]]] = []

    def walk(routes: list[dict[str, Any]], paths: list[str]) -> None:
        for route in routes:
            matched = [p for m in route.get("match", []) for p in m.get("path", [])] or paths
            for handler in route.get("handle", []):
                if handler["handler"] == "subroute":
                    walk(handler["routes"], matched)
                else:
                    flat.append((matched, [handler]))

    walk(site["routes"], [])
    return flat


def check_relay_routes(path: Path) -> None:
    """Caddy adapts services/edge/Caddyfile with these routes imported (and EDGE_WS_RELAY as the
    rendered compose override sets it): /nodes/relay-<k> reaches node k alone at "/", and the
    entry is balanced over the three nodes."""
    caddy = require("caddy")
    override = yaml.safe_load((path.parent / "compose.override.yaml").read_text())
    env = {"EDGE_RELAY_NODES_DIR": str(path.parent), **override["services"]["edge"]["environment"]}
    caddyfile = ROOT / "services" / "edge" / "Caddyfile"
    result = run(caddy, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile", **env)
    checked(result)
    routes = caddy_routes(json.loads(result.stdout))
    for k, upstream in ((1, "ws-relay:8080"), (2, "ws-relay-2:8080"), (3, "ws-relay-3:8080")):
        handlers = [handler for paths, (handler,) in routes if paths == [f"/nodes/relay-{k}"]]
        assert [h["handler"] for h in handlers] == ["rewrite", "reverse_proxy"], handlers
        assert handlers[0]["uri"] == "/"
        assert handlers[1]["upstreams"] == [{"dial": upstream}]
    (entry,) = [handler for paths, (handler,) in routes if not paths and handler["handler"] == "reverse_proxy"]
    assert entry["upstreams"] == [{"dial": f"ws-relay{suffix}:8080"} for suffix in ("", "-2", "-3")]
    assert entry["load_balancing"]["try_duration"] == 5_000_000_000


CHECKS = {
    "base/nftables.conf": check_nftables,
    "base/sshd-signaling.conf": check_sshd,
    "base/20auto-upgrades": check_apt,
    "base/52signaling-unattended-upgrades": check_apt,
    "base/chrony-signaling.conf": check_chrony,
    "base/signaling-firewall.service": check_unit,
    "docker/docker.sources": check_docker_sources,
    "coturn/turnserver.conf": check_turnserver,
    "coturn/coturn.service": check_unit,
    "signaling/signaling.service": check_unit,
    "signaling/env": check_env,
    "signaling/compose.override.yaml": check_compose_override,
    "signaling/relay-nodes.caddy": check_relay_routes,
    "monitoring/alertmanager.yml": check_alertmanager,
    "monitoring/blackbox.yml": check_blackbox,
    "monitoring/prometheus.default": check_flags("prometheus"),
    "monitoring/alertmanager.default": check_flags("prometheus-alertmanager"),
    "monitoring/node-exporter.default": check_flags("prometheus-node-exporter"),
    "monitoring/blackbox.default": check_flags("prometheus-blackbox-exporter"),
}


def test_every_template_has_a_check() -> None:
    assert sorted(CHECKS) == templates()


@pytest.mark.parametrize("template", sorted(CHECKS))
def test_each_rendered_template_passes_the_program_that_reads_it(rendered: Path, template: str) -> None:
    path = rendered / template
    assert path.is_file(), f"{template} was not rendered"
    CHECKS[template](path)


def test_rendered_files_carry_the_managed_header(rendered: Path) -> None:
    for template in templates():
        text = (rendered / template).read_text()
        assert "Managed by Ansible" in text.split("\n\n")[0] or "Managed by Ansible" in text[:300], template


def test_vault_receivers_reach_alertmanager_config(inventory: Path, tmp_path: Path) -> None:
    """The receivers from the vault are merged into the repository's routes, and amtool accepts them."""
    receivers = {
        "page": {"webhook_configs": [{"url": "https://hooks.example.org/page"}]},
        "notify": {"webhook_configs": [{"url": "https://hooks.example.org/notify"}]},
    }
    playbook = ROOT / "tests" / "ansible" / "render.yml"
    result = run(
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(playbook),
        "-e",
        f"render_dir={tmp_path}",
        "-e",
        json.dumps({"vault_alertmanager_receivers": receivers}),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((tmp_path / "monitoring" / "alertmanager.yml").read_text())
    assert {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]} == {
        "page": "https://hooks.example.org/page",
        "notify": "https://hooks.example.org/notify",
    }
    repository = yaml.safe_load((ROOT / "monitoring" / "alertmanager.yml").read_text())
    assert config["route"] == repository["route"]
    assert config["inhibit_rules"] == repository["inhibit_rules"]
    check_alertmanager(tmp_path / "monitoring" / "alertmanager.yml")


def test_the_scrape_targets_list_every_relay_node_and_promtool_accepts_them(rendered: Path) -> None:
    """With three relay nodes, Prometheus scrapes three ws-relay targets (alerts and the dashboard
    tell them apart by instance); promtool reads prometheus.yml with every target file there."""
    folder = rendered / "prometheus"
    (folder / "prometheus.yml").write_text((ROOT / "monitoring" / "prometheus.yml").read_text())
    output = checked(run(require("promtool"), "check", "config", str(folder / "prometheus.yml")))
    assert "SUCCESS" in output
    assert "WARNING" not in output, output  # every job's target file was written
    relays = json.loads((folder / "targets" / "ws-relay.json").read_text())
    assert relays == [{"targets": ["127.0.0.1:18080", "127.0.0.1:18081", "127.0.0.1:18082"]}]


def render(inventory: Path, directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    playbook = ROOT / "tests" / "ansible" / "render.yml"
    return run(
        str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), "-e", f"render_dir={directory}", *extra
    )


def test_one_relay_node_renders_the_single_relay_as_before(inventory: Path, tmp_path: Path) -> None:
    """relay_nodes = 1 (dev): the loopback ports and nothing else, no node id or public URL (the
    seed-compatible relay), the edge as compose.yaml has it, one ws-relay target."""
    result = render(inventory, tmp_path, "-e", "signaling_relay_nodes=1")
    assert result.returncode == 0, result.stdout + result.stderr
    override = yaml.safe_load((tmp_path / "signaling" / "compose.override.yaml").read_text())
    assert override == {
        "services": {
            "auth-api": {"ports": ["127.0.0.1:18001:8001"]},
            "rooms-api": {"ports": ["127.0.0.1:18002:8002"]},
            "ws-relay": {"ports": ["127.0.0.1:18080:8080"]},
        }
    }
    env = (tmp_path / "signaling" / "env").read_text()
    assert "SIGNALING_NODE_ID" not in env
    assert "SIGNALING_PUBLIC_WS_URL" not in env
    relays = json.loads((tmp_path / "prometheus" / "targets" / "ws-relay.json").read_text())
    assert relays == [{"targets": ["127.0.0.1:18080"]}]


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"signaling_relay_nodes": 0}, "no relay"),
        ({"signaling_relay_nodes": 17}, "more than Terraform allows"),
        (
            {
                "signaling_relay_nodes": 3,
                "signaling_loopback_ports": {"auth-api": 18001, "rooms-api": 18082, "ws-relay": 18080},
            },
            "relay-3's loopback port is rooms-api's",
        ),
    ],
    ids=["zero", "seventeen", "port-clash"],
)
def test_the_preflight_refuses_a_bad_relay_node_count(
    inventory: Path, tmp_path: Path, variables: dict[str, Any], reason: str
) -> None:
    result = render(inventory, tmp_path, "-e", json.dumps(variables))
    assert result.returncode != 0, reason
    assert "signaling_relay_nodes must be a whole number from 1 to 16" in result.stdout + result.stderr, reason

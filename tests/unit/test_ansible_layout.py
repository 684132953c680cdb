"""The shape every role keeps (tests/integration/test_ansible.py runs the linters and the
playbook): defaults prefixed with the role's name and each declared in the argument spec and
the README, preflight -> install -> configure -> run, templates headed with ansible_managed,
FQCN modules, and vaults committed only when encrypted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from container_checks import ROOT

ANSIBLE = ROOT / "ansible"
ROLES = sorted(path for path in (ANSIBLE / "roles").iterdir() if path.is_dir())


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_the_roles_the_issue_names_exist() -> None:
    assert [role.name for role in ROLES] == ["base", "coturn", "docker", "monitoring", "signaling"]


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_are_prefixed_specified_and_documented(role: Path) -> None:
    defaults = load(role / "defaults" / "main.yml")
    options = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    readme = (role / "README.md").read_text()
    for name in defaults:
        assert name.startswith(f"{role.name}_"), f"{role.name}: {name} is not prefixed with the role's name"
        assert name in options, f"{role.name}: {name} is not in meta/argument_specs.yml"
        assert f"`{name}`" in readme, f"{role.name}: {name} is not in its README"
    for name, option in options.items():
        assert option.get("description"), f"{role.name}: {name} has no description"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_tasks_run_preflight_install_configure_run(role: Path) -> None:
    main = load(role / "tasks" / "main.yml")
    assert [task["ansible.builtin.import_tasks"] for task in main] == [
        "preflight.yml",
        "install.yml",
        "configure.yml",
        "run.yml",
    ]
    preflight = load(role / "tasks" / "preflight.yml")
    assert any("ansible.builtin.assert" in task for task in preflight), f"{role.name} checks nothing first"
    assert (role / "handlers" / "main.yml").is_file()


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_templates_carry_the_managed_header(role: Path) -> None:
    for template in (role / "templates").glob("*.j2"):
        assert "{{ ansible_managed | comment" in "\n".join(template.read_text().splitlines()[:3]), template.name


def module_names(tasks: list[dict[str, Any]]) -> list[str]:
    keywords = {
        "name", "when", "loop", "loop_control", "register", "notify", "tags", "become", "no_log", "until",
        "retries", "delay", "ignore_errors", "changed_when", "failed_when", "with_fileglob", "vars", "listen",
    }  # fmt: skip
    return [key for task in tasks for key in task if key not in keywords]


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_modules_are_named_by_fqcn(role: Path) -> None:
    for path in [*(role / "tasks").glob("*.yml"), role / "handlers" / "main.yml"]:
        for module in module_names(load(path) or []):
            assert re.fullmatch(r"ansible\.builtin\.\w+", module), f"{path.relative_to(ANSIBLE)}: {module}"


def test_vaults_are_committed_only_encrypted() -> None:
    """Every vault.yml in git's index (and in the working tree) is ansible-vault ciphertext."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "ansible/inventories"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    vaults = [ROOT / name for name in listed if Path(name).name == "vault.yml"]
    vaults += [path for path in ANSIBLE.glob("inventories/*/group_vars/*/vault.yml") if path not in vaults]
    for path in vaults:
        assert path.read_text().startswith("$ANSIBLE_VAULT;"), f"{path} is not encrypted: ansible-vault encrypt it"


def test_the_vault_check_refuses_plaintext(tmp_path: Path) -> None:
    """The header the check above looks for is what ansible-vault writes, and plaintext lacks it."""
    plaintext = tmp_path / "vault.yml"
    plaintext.write_text("vault_turn_secrets: [x]\n")
    encrypted = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-vault")), "encrypt", "--vault-password-file", "/dev/stdin",
         "--output", "-", str(plaintext)],
        input="a-test-password\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    assert encrypted.startswith("$ANSIBLE_VAULT;")
    assert not plaintext.read_text().startswith("$ANSIBLE_VAULT;")


def test_every_environment_has_its_group_vars_and_a_vault_example() -> None:
    for environment in ("dev", "prod"):
        folder = ANSIBLE / "inventories" / environment / "group_vars" / "signaling"
        settings = load(folder / "main.yml")
        assert settings["signaling_turn_secrets"] == "{{ vault_turn_secrets }}"
        assert settings["coturn_auth_secrets"] == "{{ vault_turn_secrets }}"  # one secret for coturn and services
        example = load(folder / "vault.example.yml")
        assert set(example) == {
            "vault_turn_secrets",
            "vault_alertmanager_receivers",
            "vault_registry_username",
            "vault_registry_password",
        }

"""Static rules of terraform/: module file contract, one composition module every environment calls, only the AWS
provider, pinned lock files."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

TERRAFORM = Path(__file__).resolve().parents[2] / "terraform"
MODULES = sorted(path for path in (TERRAFORM / "modules").iterdir() if path.is_dir())
ENVIRONMENTS = {name: TERRAFORM / "environments" / name for name in ("dev", "prod", "local")}
STACK = TERRAFORM / "modules" / "signaling-stack"
STACK_MAIN = (STACK / "main.tf").read_text(encoding="utf-8")
STACK_VARIABLES = (STACK / "variables.tf").read_text(encoding="utf-8")
STACK_OUTPUTS = (STACK / "outputs.tf").read_text(encoding="utf-8")
AWS_VERSION = "5.100.0"


def _tf_files() -> list[Path]:
    return sorted(path for path in TERRAFORM.rglob("*.tf") if ".terraform" not in path.parts)


def _blocks(text: str, kind: str) -> dict[str, str]:
    """Top-level ``kind "name" { ... }`` blocks by name (they end at the first closing brace in column 0)."""
    return dict(re.findall(rf'^{kind} "([^"]+)" \{{\n(.*?)^\}}', text, flags=re.M | re.S))


def test_the_modules_exist() -> None:
    """network, data, identity and signaling-host, and signaling-stack, which composes them."""
    assert [path.name for path in MODULES] == ["data", "identity", "network", "signaling-host", "signaling-stack"]


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_every_module_follows_the_file_contract(module: Path) -> None:
    """main, variables, outputs, versions, README, examples/basic and terraform tests."""
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md", "examples/basic/main.tf"):
        assert (module / name).is_file(), f"{module.name} lacks {name}"
    assert list((module / "tests").glob("*.tftest.hcl")), f"{module.name} has no terraform test"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_every_variable_and_output_is_typed_and_described(module: Path) -> None:
    """Variables have a type and a description; outputs have a description; nothing is typed any."""
    variables = _blocks((module / "variables.tf").read_text(encoding="utf-8"), "variable")
    assert variables
    for name, body in variables.items():
        assert re.search(r"^  description = \S", body, flags=re.M), f"variable {name} has no description"
        assert re.search(r"^  type\s+= \S", body, flags=re.M), f"variable {name} has no type"
        code = "\n".join(line for line in body.splitlines() if not re.match(r"\s*(#|description|error_message)", line))
        assert not re.search(r"\bany\b", code), f"variable {name} is typed any"
    outputs = _blocks((module / "outputs.tf").read_text(encoding="utf-8"), "output")
    assert outputs
    for name, body in outputs.items():
        assert re.search(r"^  description = \S", body, flags=re.M), f"output {name} has no description"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_every_validation_is_proven_by_a_failing_run(module: Path) -> None:
    """Each variable has at least as many expect_failures runs as validation blocks."""
    variables = _blocks((module / "variables.tf").read_text(encoding="utf-8"), "variable")
    validations = Counter(
        {name: body.count("validation {") for name, body in variables.items() if "validation {" in body}
    )
    tests = "".join(path.read_text(encoding="utf-8") for path in (module / "tests").glob("*.tftest.hcl"))
    proven = Counter(re.findall(r"expect_failures = \[var\.(\w+)\]", tests))
    missing = {name: count - proven[name] for name, count in validations.items() if proven[name] < count}
    assert not missing, f"validations without an expect_failures run: {missing}"


def _arguments(body: str) -> dict[str, str]:
    """The ``name = value`` lines of a block's body at its first level of indentation."""
    return dict(re.findall(r"^  (\w+)\s+= (.+)$", body, flags=re.M))


def test_the_environments_take_the_same_variables() -> None:
    """dev, prod and local differ only in the values they pass to signaling-stack (the tests below), so the
    emulator apply tests what production runs: the same variables, local adding the emulator's endpoints."""
    dev_variables = (ENVIRONMENTS["dev"] / "variables.tf").read_text(encoding="utf-8")
    assert (ENVIRONMENTS["prod"] / "variables.tf").read_text(encoding="utf-8") == dev_variables
    assert (ENVIRONMENTS["local"] / "variables.tf").read_text(encoding="utf-8").startswith(dev_variables)


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=str)
def test_each_environment_calls_only_the_stack_module(env: str) -> None:
    """An environment root has one module call, modules/signaling-stack, given every one of its variables
    from the root's variable of the same name; no resource, data source or other module of its own."""
    texts = {path.name: path.read_text(encoding="utf-8") for path in sorted(ENVIRONMENTS[env].glob("*.tf"))}
    for name, text in texts.items():
        assert not re.findall(r'^(resource|data) "', text, flags=re.M), f"{env}/{name} declares its own resources"
        assert set(_blocks(text, "module")) <= ({"stack"} if name == "main.tf" else set()), f"{env}/{name}"
    (body,) = _blocks(texts["main.tf"], "module").values()
    arguments = _arguments(body)
    assert arguments.pop("source") == '"../../modules/signaling-stack"'
    assert arguments == {name: f"var.{name}" for name in _blocks(STACK_VARIABLES, "variable")}


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=str)
def test_each_environment_moves_the_previous_layout_under_the_stack(env: str) -> None:
    """A ``moved`` block per module the root called before signaling-stack existed (network, data,
    identity, host), so a state of that layout plans only moves (the emulator test proves it)."""
    main = (ENVIRONMENTS[env] / "main.tf").read_text(encoding="utf-8")
    moves = re.findall(r"^moved \{\n  from = (\S+)\n  to   = (\S+)\n\}", main, flags=re.M)
    assert len(moves) == main.count("moved {")
    children = sorted(_blocks(STACK_MAIN, "module"))
    assert children == ["data", "host", "identity", "network"]
    assert sorted(moves) == [(f"module.{name}", f"module.stack.module.{name}") for name in children]


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=str)
def test_each_environment_forwards_every_output_of_the_stack(env: str) -> None:
    """The root's outputs are signaling-stack's, under the same names, described (Ansible reads them)."""
    outputs = _blocks((ENVIRONMENTS[env] / "outputs.tf").read_text(encoding="utf-8"), "output")
    assert list(outputs) == list(_blocks(STACK_OUTPUTS, "output"))
    for name, body in outputs.items():
        arguments = _arguments(body)
        assert arguments["value"] == f"module.stack.{name}", f"{env}: output {name}"
        assert arguments["description"].startswith('"'), f"{env}: output {name} has no description"


def test_only_the_aws_provider_is_used() -> None:
    """Every resource and data source is hashicorp/aws's; no other provider is required or configured."""
    for path in _tf_files():
        text = path.read_text(encoding="utf-8")
        for kind, rtype in re.findall(r'^(resource|data) "([^"]+)"', text, flags=re.M):
            assert rtype.startswith("aws_"), f"{path}: {kind} {rtype}"
        assert set(re.findall(r'^provider "([^"]+)"', text, flags=re.M)) <= {"aws"}, path
        assert set(re.findall(r'source\s+=\s+"([a-z0-9-]+/[a-z0-9-]+)"', text)) <= {"hashicorp/aws"}, path


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=str)
def test_each_environment_pins_aws_with_a_lock_for_every_platform(env: str) -> None:
    """versions.tf pins hashicorp/aws 5.100.0; the lock holds the mirror's h1 hash and the registry's zip hashes."""
    versions = (ENVIRONMENTS[env] / "versions.tf").read_text(encoding="utf-8")
    assert f'version = "{AWS_VERSION}"' in versions
    lock = (ENVIRONMENTS[env] / ".terraform.lock.hcl").read_text(encoding="utf-8")
    assert re.findall(r'^provider "([^"]+)"', lock, flags=re.M) == ["registry.terraform.io/hashicorp/aws"]
    assert f'version     = "{AWS_VERSION}"' in lock
    assert len(re.findall(r'"zh:[0-9a-f]{64}"', lock)) >= 14  # one zip per platform the registry publishes
    assert len(re.findall(r'"h1:[A-Za-z0-9+/]{43}="', lock)) >= 1


def test_remote_environments_have_their_own_state_and_lock_table() -> None:
    """dev and prod use the S3 backend with distinct keys, encryption and a DynamoDB lock table."""
    keys = set()
    for env in ("dev", "prod"):
        assert 'backend "s3" {}' in (ENVIRONMENTS[env] / "versions.tf").read_text(encoding="utf-8")
        config = dict(
            re.findall(
                r'^(\w+)\s+= "?([^"\n]+)"?$',
                (ENVIRONMENTS[env] / "backend.hcl").read_text(encoding="utf-8"),
                flags=re.M,
            )
        )
        assert config["encrypt"] == "true"
        assert config["dynamodb_table"]
        keys.add(config["key"])
    assert len(keys) == 2


def test_tfvars_hold_no_secrets() -> None:
    """terraform.tfvars files are committed: no secrets, passwords or keys in them."""
    for path in TERRAFORM.rglob("*.tfvars"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(
            r"^\s*(\w*_)?(secret|secrets|password|access_key|secret_key|private_key)\s*=", text, flags=re.M | re.I
        ), path


def test_every_checkov_skip_gives_its_reason() -> None:
    """A checkov skip sits in its resource with a check id and a reason of a sentence."""
    for path in _tf_files():
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov:skip" in line:
                assert re.fullmatch(r"\s*# checkov:skip=CKV2?_AWS_\d+:.{40,}", line), f"{path}: {line.strip()}"

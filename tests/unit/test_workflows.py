"""The GitHub workflows, checked statically: each validates against the workflow JSON
schema (check-jsonschema's vendored copy: actionlint cannot be installed here), pins every
action by commit SHA, and declares minimal top-level permissions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from container_checks import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_there_are_workflows() -> None:
    assert WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_workflow_schema_accepts_it(path: Path) -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_and_permissions_are_explicit(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    assert "permissions" in workflow, "no top-level permissions: the token would get the repository default"
    for step in steps(workflow):
        if "uses" in step and not step["uses"].startswith("./"):
            assert PINNED.match(step["uses"]), f"{step['uses']} is not pinned to a commit SHA"


def test_the_pin_check_catches_a_tag() -> None:
    assert not PINNED.match("actions/checkout@v4")
    assert PINNED.match("actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683")


def load(name: str) -> dict[str, Any]:
    workflow: dict[str, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    return workflow


def test_github_ci_runs_the_same_script_as_ci_here() -> None:
    """One CI: the workflow's test job runs .ci/run, which installs with `make tools` and tests
    with `make test`, every tool required; the workflow installs nothing of its own but
    Terraform (not an apt package), and sends DynamoDB to its LocalStack service."""
    job = load("ci.yml")["jobs"]["test"]
    runs = [step["run"].strip() for step in job["steps"] if "run" in step]
    assert runs == ["bash .ci/run"]
    uses = [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]
    assert uses == ["actions/checkout", "actions/setup-python", "hashicorp/setup-terraform", "actions/cache"]
    assert job["env"]["AWS_ENDPOINT_URL_DYNAMODB"] == "http://localhost:4566"
    assert "localstack" in job["services"]
    assert job["timeout-minutes"] >= 45  # a run here takes about 25 minutes
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "make tools" in commands
    assert "export SIGNALING_REQUIRE_TOOLS=1" in commands
    assert (
        commands.index("make tools") < commands.index("export SIGNALING_REQUIRE_TOOLS=1") < commands.index("make test")
    )


def test_a_commit_is_deployed_only_after_ci_passed_on_it() -> None:
    """No push trigger: dev is deployed when the ci workflow completed on main (its success
    checked), or by hand after a check of the commit's CI runs, from that very commit; prod
    only after dev."""
    workflow = load("deploy.yml")
    triggers = workflow.get("on") or workflow[True]  # type: ignore[index]  # YAML 1.1 reads `on` as true
    assert "push" not in triggers
    assert triggers["workflow_run"] == {"workflows": ["ci"], "types": ["completed"], "branches": ["main"]}
    jobs = workflow["jobs"]
    gate = jobs["ci-passed"]
    assert "github.event.workflow_run.conclusion == 'success'" in gate["if"]
    assert "gh run list" in gate["steps"][0]["run"]
    assert "--status success" in gate["steps"][0]["run"]
    assert jobs["deploy-dev"]["needs"] == "ci-passed"
    assert jobs["deploy-prod"]["needs"] == "deploy-dev"
    assert workflow["env"]["DEPLOY_SHA"] == "${{ github.event.workflow_run.head_sha || github.sha }}"
    (checkout,) = [step for step in jobs["deploy-dev"]["steps"] if step.get("uses", "").startswith("actions/checkout")]
    assert checkout["with"]["ref"] == "${{ env.DEPLOY_SHA }}"

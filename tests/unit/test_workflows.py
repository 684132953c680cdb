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

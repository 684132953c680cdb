"""``make deploy ENV=local`` end to end: a dev stack's emulator, terraform apply of
environments/local, the inventory from its outputs, the playbook in check mode against this
machine, the smoke test against the stack. And a failing stage is named, with a non-zero
exit, and nothing left running. Each deploy writes into a temporary work directory
(--work-dir): nothing in the working tree, and no state a later run would reuse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from container_checks import ROOT
from support import scaled
from tools import require

DEPLOY = ROOT / "ansible" / "scripts" / "deploy.py"
TIMEOUT = scaled(900)
# A whole deploy (emulator, terraform apply, playbook) outlasts pytest's default 120 s on a
# busy machine: the subprocess's own timeout is the limit.
pytestmark = pytest.mark.timeout(TIMEOUT + scaled(60))


def deploy(*args: str, work_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY), *args, "--work-dir", str(work_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        start_new_session=True,
    )


def require_terraform() -> None:
    require("terraform")


def stages(output: str) -> list[str]:
    return re.findall(r"^==> \[\d/\d\] (\S+)", output, flags=re.MULTILINE)


def test_deploy_local_runs_every_stage_and_says_what_it_would_change(tmp_path: Path) -> None:
    """make deploy ENV=local: every stage runs, the inventory holds Terraform's outputs, the
    playbook says what it would change, the smoke test passes; destroy removes what it wrote."""
    require_terraform()
    result = deploy("deploy", "local", work_dir=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert stages(output) == ["local", "terraform:", "inventory:", "playbook:", "smoke"], output
    assert "Apply complete!" in output
    inventory = tmp_path / "local" / "inventory" / "hosts.yml"
    assert '"SIGNALING_TABLE_PREFIX": "local-"' in inventory.read_text()  # Terraform's outputs reached it
    assert (tmp_path / "local" / "terraform.tfstate").is_file()
    assert "--check" in output
    assert "PLAY RECAP" in output
    assert re.search(r"localhost\s+: ok=\d+\s+changed=[1-9]\d*\s+unreachable=0\s+failed=0", output), output
    steps = ("anonymous sign-in (worker)", "create a room", "worker receives", "client receives", "delete the room")
    for step in steps:
        assert f"ok  {step}" in output
    assert "==> deploy local: done (check mode: nothing on this machine changed)" in output
    assert "stopped the local stack" in output
    destroyed = deploy("destroy", "local", work_dir=tmp_path)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert not (tmp_path / "local").exists()


def test_a_failing_stage_is_named_and_exits_non_zero(tmp_path: Path) -> None:
    """Without terraform on PATH, the terraform stage fails; the stack it started is stopped."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "terraform").exists())
    result = deploy("deploy", "local", work_dir=tmp_path / "work", env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "==> FAILED at stage 'terraform: init, plan and apply environments/local'" in output, output
    assert "terraform is not on PATH" in output
    assert "stopped the local stack" in output
    assert "smoke" not in "".join(stages(output)), "stages after the failure ran"

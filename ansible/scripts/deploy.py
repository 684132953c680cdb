"""``make deploy ENV=local|dev|prod`` and ``make destroy ENV=...``: Terraform, the inventory
from its outputs, the playbook, then a smoke test against the endpoint.

    deploy local   the local environment on the AWS emulator of a dev stack this script
                   starts (free ports), the playbook against this machine in check mode
                   (it says what it would change and changes nothing), the smoke test
                   against that stack; everything stops at the end
    deploy dev     terraform plan, apply (after a yes, or with --auto-approve), the playbook
                   against the host over SSH (to its Elastic IP, or through SSM Session
                   Manager with DEPLOY_VIA_SSM=1; vault password asked, or from
                   ANSIBLE_VAULT_PASSWORD_FILE), the smoke test against https://<domain>
    destroy dev    terraform destroy (after a yes, or with --auto-approve)

Each stage is announced; a failure exits non-zero naming its stage.

What a deploy writes (Terraform's data, state and plans) goes to the work directory, .deploy/
by default, and the inventory to ansible/inventories/<env>/hosts.yml. With --work-dir (or
DEPLOY_WORK_DIR) both go to that directory instead: <dir>/<env>/ for Terraform, and
<dir>/<env>/inventory/hosts.yml beside a link to the environment's group_vars (the tests
deploy into a temporary directory, so nothing is left in the working tree).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
ENVIRONMENTS = ROOT / "terraform" / "environments"
WORK = ROOT / ".deploy"  # the default work directory
BIN = Path(sys.executable).parent
ENVS = ("local", "dev", "prod")


class StageFailed(RuntimeError):
    """A stage could not finish; the message says why."""


@dataclass
class Pipeline:
    """Stages run in order, each announced; the first failure names its stage."""

    stages: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def add(self, name: str, action: Callable[[], None]) -> None:
        self.stages.append((name, action))

    def run(self) -> int:
        for number, (name, action) in enumerate(self.stages, start=1):
            say(f"==> [{number}/{len(self.stages)}] {name}")
            try:
                action()
            except (StageFailed, subprocess.SubprocessError, OSError, AssertionError) as error:
                say(f"==> FAILED at stage '{name}': {error}")
                return 1
        return 0


def say(line: str) -> None:
    print(line, flush=True)


def call(command: Sequence[str], *, env: dict[str, str] | None = None, capture: bool = False) -> str:
    """Run a command, echoed; its output streams through unless captured. StageFailed on a non-zero exit."""
    say(f"    $ {' '.join(command)}")
    result = subprocess.run(  # noqa: S603 - our own tools, arguments built here
        command, env=env, text=True, stdout=subprocess.PIPE if capture else None, check=False
    )
    if result.returncode != 0:
        raise StageFailed(
            f"{Path(command[0]).name} {command[1] if len(command) > 1 else ''} exited {result.returncode}"
        )
    return result.stdout or ""


def confirm(question: str, auto_approve: bool) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        raise StageFailed(f"{question}: no terminal to answer on; pass --auto-approve (AUTO_APPROVE=1)")
    if input(f"    {question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise StageFailed("not confirmed")


@dataclass(frozen=True)
class Workspace:
    """Where a deploy of ``environment`` writes: Terraform's files in ``terraform``, the
    inventory at ``inventory``."""

    environment: str
    terraform: Path
    inventory: Path

    @classmethod
    def of(cls, environment: str, work_dir: Path | None) -> Workspace:
        """.deploy/<env> and the inventory in ansible/inventories/<env>/; with ``work_dir``,
        both under <work_dir>/<env>/."""
        if work_dir is None:
            return cls(environment, WORK / environment, ANSIBLE / "inventories" / environment / "hosts.yml")
        base = work_dir.resolve() / environment
        return cls(environment, base, base / "inventory" / "hosts.yml")

    def prepare_inventory(self) -> None:
        """An inventory outside ansible/inventories needs the environment's group_vars beside it."""
        folder = self.inventory.parent
        folder.mkdir(parents=True, exist_ok=True)
        group_vars = ANSIBLE / "inventories" / self.environment / "group_vars"
        link = folder / "group_vars"
        if link.resolve() != group_vars.resolve():
            if link.is_symlink():
                link.unlink()
            link.symlink_to(group_vars, target_is_directory=True)


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class Terraform:
    """The terraform binary on one environment root. ``local`` keeps its state in the work
    directory (.deploy/local) and talks to the emulator at ``endpoint``; dev and prod use their
    S3 backend."""

    def __init__(self, environment: str, work: Path, endpoint: str | None = None) -> None:
        binary = shutil.which("terraform")
        if binary is None:
            raise StageFailed("terraform is not on PATH (install Terraform >= 1.9)")
        self.binary = binary
        self.environment = environment
        self.root = ENVIRONMENTS / environment
        self.endpoint = endpoint
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}
        self.env["TF_DATA_DIR"] = str(self.work / ".terraform")
        if endpoint is not None:  # the emulator: its fixed test credentials, and nothing of the caller's AWS
            for name in list(self.env):
                if name.startswith("AWS_"):
                    del self.env[name]
            self.env.update(
                AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test",  # noqa: S106 - the emulator's fixed test credentials
                AWS_REGION="us-west-1",
            )
        config = subprocess.run(  # noqa: S603 - the repository's own script
            [str(ROOT / "terraform" / "scripts" / "cli-config.sh"), str(self.work / "cli.tfrc")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if config:
            self.env["TF_CLI_CONFIG_FILE"] = config

    def __call__(self, *args: str, capture: bool = False) -> str:
        return call([self.binary, f"-chdir={self.root}", *args], env=self.env, capture=capture)

    @property
    def variables(self) -> list[str]:
        return [f"-var=endpoint_url={self.endpoint}"] if self.endpoint else []

    def init(self) -> None:
        if self.endpoint is not None:
            backend = f"-backend-config=path={self.work / 'terraform.tfstate'}"
        else:
            backend = "-backend-config=backend.hcl"
        self("init", "-no-color", "-input=false", "-lockfile=readonly", backend)

    def plan(self, *, destroy: bool = False) -> Path:
        plan = self.work / ("destroy.tfplan" if destroy else "deploy.tfplan")
        self("plan", "-no-color", "-input=false", *(["-destroy"] if destroy else []), *self.variables, f"-out={plan}")
        return plan

    def apply(self, plan: Path) -> None:
        self("apply", "-no-color", "-input=false", str(plan))

    def outputs(self) -> dict[str, Any]:
        outputs: dict[str, Any] = json.loads(self("output", "-no-color", "-json", capture=True))
        return outputs


def write_inventory(workspace: Workspace, outputs: dict[str, Any]) -> Path:
    environment, inventory = workspace.environment, workspace.inventory
    workspace.prepare_inventory()
    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump(outputs, handle)
        handle.flush()
        command = [sys.executable, str(ANSIBLE / "scripts" / "inventory.py"), environment, handle.name]
        if os.environ.get("DEPLOY_VIA_SSM") == "1":
            command.append("--via-ssm")
        text = call(command, capture=True)
    inventory.write_text(text)
    say(f"    wrote {shown(inventory)}")
    return inventory


def run_playbook(environment: str, inventory: Path) -> None:
    command = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE / "site.yml"), "--diff"]
    if environment == "local":
        command.append("--check")  # this machine: say what would change, change nothing
    elif not os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE"):
        command.append("--ask-vault-pass")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    call(command, env=env)


def public_domain(environment: str) -> str:
    import yaml

    group_vars = ANSIBLE / "inventories" / environment / "group_vars" / "signaling" / "main.yml"
    domain = yaml.safe_load(group_vars.read_text()).get("signaling_domain")
    if not domain:
        raise StageFailed(f"signaling_domain is not set in {group_vars.relative_to(ROOT)}")
    return str(domain)


def check_dns(domain: str, public_ip: str) -> None:
    """The first deploy of an environment comes before its DNS record: say so, plainly."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(domain, 443, proto=socket.IPPROTO_TCP)}
    except socket.gaierror:
        raise StageFailed(
            f"{domain} does not resolve: point its DNS record at the Elastic IP {public_ip}, "
            "then run make deploy again (Caddy gets its certificate once the name resolves)"
        ) from None
    if public_ip not in addresses:
        say(f"    note: {domain} resolves to {', '.join(sorted(addresses))}, not the Elastic IP {public_ip}")


def run_smoke(api: str, relay: str) -> None:
    sys.path.insert(0, str(ANSIBLE / "scripts"))
    from smoke import smoke

    try:
        asyncio.run(smoke(api, relay))
    except Exception as error:  # any failure of the smoke test fails its stage, named
        raise StageFailed(f"{type(error).__name__}: {error}") from error


def deploy(environment: str, auto_approve: bool, work_dir: Path | None = None) -> int:
    workspace = Workspace.of(environment, work_dir)
    pipeline = Pipeline()
    state: dict[str, Any] = {}
    stack: Any = None

    if environment == "local":
        from devstack import background

        def start_stack() -> None:
            nonlocal stack
            stack = background.start("--table-prefix", "deploy-")
            say(f"    AWS emulator {stack.aws}, APIs {stack.api}, relay {stack.relay}")

        pipeline.add("local stack: the AWS emulator and the services on free ports", start_stack)

    def terraform() -> None:
        tf = Terraform(environment, workspace.terraform, endpoint=stack.aws if stack is not None else None)
        tf.init()
        plan = tf.plan()
        confirm(f"Apply this plan to {environment}?", auto_approve or environment == "local")
        tf.apply(plan)
        state["outputs"] = tf.outputs()

    def inventory() -> None:
        state["inventory"] = write_inventory(workspace, state["outputs"])

    def playbook() -> None:
        run_playbook(environment, state["inventory"])

    def smoke() -> None:
        if stack is not None:
            run_smoke(stack.api, stack.relay)
        else:
            domain = public_domain(environment)
            check_dns(domain, state["outputs"]["host_network"]["value"]["public_ip"])
            run_smoke(f"https://{domain}", f"wss://{domain}")

    pipeline.add(f"terraform: init, plan and apply environments/{environment}", terraform)
    pipeline.add(f"inventory: {shown(workspace.inventory)} from terraform output", inventory)
    mode = "check mode against this machine" if environment == "local" else "against the host"
    pipeline.add(f"playbook: site.yml, {mode}", playbook)
    pipeline.add("smoke test: health, sign-in, room, a message both ways between two peers", smoke)
    try:
        status = pipeline.run()
    finally:
        if stack is not None:
            stack.stop()
            say("    stopped the local stack")
    if status == 0:
        done = " (check mode: nothing on this machine changed)" if environment == "local" else ""
        say(f"==> deploy {environment}: done{done}")
    return status


def destroy(environment: str, auto_approve: bool, work_dir: Path | None = None) -> int:
    workspace = Workspace.of(environment, work_dir)
    if environment == "local":
        shutil.rmtree(workspace.terraform, ignore_errors=True)  # the inventory too, when it is in there
        workspace.inventory.unlink(missing_ok=True)
        where = f"{shown(workspace.terraform)} and {shown(workspace.inventory)}"
        say(f"==> destroy local: removed {where} (the emulator kept nothing)")
        return 0
    pipeline = Pipeline()

    def terraform() -> None:
        tf = Terraform(environment, workspace.terraform)
        tf.init()
        plan = tf.plan(destroy=True)
        confirm(f"Destroy everything in {environment}?", auto_approve)
        tf.apply(plan)

    pipeline.add(f"terraform: plan and apply the destruction of environments/{environment}", terraform)
    return pipeline.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["deploy", "destroy"])
    parser.add_argument("environment", choices=ENVS)
    parser.add_argument("--auto-approve", action="store_true", help="apply or destroy without asking")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=os.environ.get("DEPLOY_WORK_DIR") or None,
        help="write Terraform's files and the inventory here (default: .deploy/ and ansible/inventories/)",
    )
    args = parser.parse_args(argv)
    if args.action == "deploy":
        return deploy(args.environment, args.auto_approve, args.work_dir)
    return destroy(args.environment, args.auto_approve, args.work_dir)


if __name__ == "__main__":
    raise SystemExit(main())

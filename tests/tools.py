"""The host programs the full suite runs, in one place: which package brings each, which
``SIGNALING_REQUIRE_*`` variable makes it mandatory, and how to install them.

In a test, ``require("caddy")`` returns the program's path, or skips the test with a reason
that names the tool (``pytest_terminal_summary`` in conftest.py counts them: one line per
missing tool at the end of the run), or fails it where the run requires the tool (CI sets
the variables). As a script it is ``make tools``::

    python3 tests/tools.py install      # apt-get the missing packages (as root, or with sudo)
    python3 tests/tools.py install --dry-run
    python3 tests/tools.py status       # what is installed, what is missing

Standard library only: it runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REQUIRE_ALL = "SIGNALING_REQUIRE_TOOLS"  # every tool below is required (CI)
TERRAFORM_INSTALL = "https://developer.hashicorp.com/terraform/install (>= 1.9; CI pins 1.11.4)"


@dataclass(frozen=True)
class Tool:
    name: str  # the program the tests run
    package: str  # the Debian package that brings it ("" when apt cannot)
    requirement: str  # with =1 in the environment, a missing tool fails its tests
    purpose: str

    @property
    def install_hint(self) -> str:
        if self.package:
            return f"make tools (apt-get install {self.package})"
        return f"install it by hand: {TERRAFORM_INSTALL}"


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("caddy", "caddy", "SIGNALING_REQUIRE_CADDY", "the edge proxy: its config, and the stack behind it"),
        Tool("chromium", "chromium", "SIGNALING_REQUIRE_CHROMIUM", "a real browser runs the demo page (WebRTC, CORS)"),
        Tool("turnserver", "coturn", "SIGNALING_REQUIRE_TURN", "a real TURN server checks the issued credentials"),
        Tool("promtool", "prometheus", "SIGNALING_REQUIRE_PROMETHEUS", "Prometheus config, rules and rule tests"),
        Tool("prometheus", "prometheus", "SIGNALING_REQUIRE_PROMETHEUS", "a live Prometheus scrapes the stack"),
        Tool("amtool", "prometheus-alertmanager", "SIGNALING_REQUIRE_PROMETHEUS", "the Alertmanager config"),
        Tool(
            "prometheus-alertmanager", "prometheus-alertmanager", "SIGNALING_REQUIRE_PROMETHEUS", "its rendered flags"
        ),
        Tool("prometheus-node-exporter", "prometheus-node-exporter", "SIGNALING_REQUIRE_PROMETHEUS", "host metrics"),
        Tool(
            "prometheus-blackbox-exporter",
            "prometheus-blackbox-exporter",
            "SIGNALING_REQUIRE_HOST_TOOLS",
            "the rendered probe config",
        ),
        Tool("nft", "nftables", "SIGNALING_REQUIRE_HOST_TOOLS", "the rendered firewall"),
        Tool("sshd", "openssh-server", "SIGNALING_REQUIRE_HOST_TOOLS", "the rendered sshd config"),
        Tool("chronyd", "chrony", "SIGNALING_REQUIRE_HOST_TOOLS", "the rendered chrony config"),
        Tool("systemd-analyze", "systemd", "SIGNALING_REQUIRE_HOST_TOOLS", "the rendered systemd units"),
        Tool("apt-config", "apt", "SIGNALING_REQUIRE_HOST_TOOLS", "the rendered apt configs"),
        Tool("apt-get", "apt", "SIGNALING_REQUIRE_HOST_TOOLS", "the rendered apt source"),
        Tool("terraform", "", "SIGNALING_REQUIRE_TERRAFORM", "Terraform checks, the emulator apply, make deploy"),
    )
}

# The reason a missing tool's skip gives; conftest.py counts skips by it.
MISSING = re.compile(r"missing tool (?P<name>[\w.-]+):")


def find(name: str) -> str | None:
    """The program's path: on PATH, or in the sbin folders a non-root PATH leaves out."""
    found = shutil.which(name)
    if found is not None:
        return found
    return next((path for path in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(path, os.X_OK)), None)


def required(tool: Tool) -> bool:
    return os.environ.get(tool.requirement) == "1" or os.environ.get(REQUIRE_ALL) == "1"


def require(name: str) -> str:
    """The path of tool ``name``, or a skip naming it (a failure where this run requires it)."""
    import pytest  # here: the installer runs without the virtual environment

    tool = TOOLS[name]
    binary = find(name)
    if binary is not None:
        return binary
    if required(tool):
        pytest.fail(f"{name} is required in this run ({tool.requirement}=1): {tool.install_hint}")
    pytest.skip(f"missing tool {name}: {tool.purpose}; install: {tool.install_hint}")


def missing(names: Iterable[str] = TOOLS) -> list[Tool]:
    return [TOOLS[name] for name in names if find(name) is None]


def _packages(tools: Sequence[Tool]) -> list[str]:
    return sorted({tool.package for tool in tools if tool.package})


def _run_retried(command: list[str]) -> None:
    """Package mirrors hiccup: a real failure still fails after three tries."""
    for attempt in (1, 2, 3):
        if subprocess.run(command, check=False).returncode == 0:
            return
        print(f"attempt {attempt} of {' '.join(command)} failed", file=sys.stderr)
        if attempt < 3:
            time.sleep(5 * attempt)
    raise SystemExit(f"failed three times: {' '.join(command)}")


def _escalation() -> list[str] | None:
    """[] as root, ["sudo", "-n"] where sudo works without a password, else None."""
    if os.geteuid() == 0:
        return []
    sudo = shutil.which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return [sudo, "-n"]
    return None


def install(*, dry_run: bool) -> int:
    absent = missing()
    packages = _packages(absent)
    manual = [tool for tool in absent if not tool.package]
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if not packages:
        print("make tools: every apt-installable tool is here")
    elif dry_run or shutil.which("apt-get") is None or (prefix := _escalation()) is None:
        why = "would run" if dry_run else "cannot install here (needs apt-get, and root or passwordless sudo); run"
        print(f"make tools: {why}:\n  sudo apt-get update && sudo {' '.join(command)}")
        if not dry_run:
            return 2
    else:
        env_command = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive"]
        _run_retried([*env_command, "apt-get", "update", "-qq"])
        _run_retried([*env_command, *command])
        print(f"make tools: installed {' '.join(packages)}")
    for tool in manual:
        print(f"make tools: {tool.name} is not an apt package here: {tool.install_hint}")
    return 1 if manual and not dry_run else 0


def status() -> int:
    for tool in TOOLS.values():
        path = find(tool.name)
        print(f"  {tool.name:30} {path or 'missing: ' + tool.install_hint}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    install_parser = commands.add_parser("install", help="install the missing tools")
    install_parser.add_argument("--dry-run", action="store_true", help="say what would be installed")
    commands.add_parser("status", help="list the tools and where they are")
    args = parser.parse_args(argv)
    if args.command == "install":
        return install(dry_run=args.dry_run)
    return status()


if __name__ == "__main__":
    sys.exit(main())

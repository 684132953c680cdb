"""``python -m devstack`` as a child process on free ports, for programs that need a stack
for a while (``make demo``, ``make deploy ENV=local``) and stop it when they are done."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

READY = re.compile(r"READY api=(?P<api>\S+) relay=(?P<relay>\S+) aws=(?P<aws>\S+)")


@dataclass
class BackgroundStack:
    """A running dev stack: its process and its API, relay and AWS emulator URLs."""

    process: subprocess.Popen[str]
    api: str
    relay: str
    aws: str

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM (devstack stops its servers and coturn), then SIGKILL to the whole group."""
        self.process.terminate()
        try:
            self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.communicate()


def start(*options: str) -> BackgroundStack:
    """The stack on free ports (API, relay, emulator and coturn), with ``options`` added
    (e.g. ``--table-prefix demo-``). SystemExit, with the way to see why, if it fails."""
    command = [sys.executable, "-m", "devstack", "--api-port", "0", "--relay-port", "0", "--aws-port", "0", "--no-demo"]
    process = subprocess.Popen(  # noqa: S603 - this interpreter's devstack, our own arguments
        [*command, "--turn-port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its emulator and coturn go with it: see stop()
    )
    assert process.stdout is not None
    for line in process.stdout:
        if match := READY.fullmatch(line.strip()):
            return BackgroundStack(process, match["api"], match["relay"], match["aws"])
    BackgroundStack(process, "", "", "").stop()
    raise SystemExit(f"the dev stack did not start (exit {process.returncode}): try `make dev` to see why")

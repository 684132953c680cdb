"""A real coturn (Debian package ``coturn``) for the tests that need a TURN server."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from support import TIMEOUT, free_port


@contextmanager
def coturn_server(directory: Path, secrets: list[str], *, extra: Sequence[str] = ()) -> Iterator[tuple[str, int]]:
    """coturn on loopback with ``use-auth-secret`` and these static secrets; its address."""
    binary = shutil.which("turnserver")
    if binary is None:
        if os.environ.get("SIGNALING_REQUIRE_TURN") == "1":
            pytest.fail("coturn (turnserver) is required here: apt-get install coturn")
        pytest.skip("coturn is not installed (CI installs it and sets SIGNALING_REQUIRE_TURN=1)")
    port = free_port()
    config = Path(directory, "turnserver.conf")
    config.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                "relay-ip=127.0.0.1",
                f"listening-port={port}",
                "use-auth-secret",
                *(f"static-auth-secret={secret}" for secret in secrets),
                "realm=signaling.test",
                "no-tls",
                "no-dtls",
                "no-cli",
                "fingerprint",
                "log-file=stdout",
                "simple-log",
                f"pidfile={directory}/turnserver.pid",
                f"userdb={directory}/turndb",
                *extra,
            ]
        )
    )
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while "Total General servers" not in lines.get(timeout=6 * TIMEOUT):
            pass
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT)
        stdout.close()
        reader.join(timeout=TIMEOUT)

"""A local TURN server: coturn (Debian package ``coturn``) with the TURN REST API secret the
services sign credentials with, so the STUN/TURN servers a local stack hands out answer.

Used by ``make dev`` and by the tests that need a TURN server. Development only: it relays
to loopback peers when asked (``allow-loopback-peers``), which a deployment must not.
"""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from devstack.ports import AddressInUse, free_port, retrying_on_conflict, says_address_in_use

BINARY = "turnserver"
READY_LINE = "Total General servers"  # coturn's last start-up line, once it listens


def installed() -> str | None:
    """The coturn binary, if installed."""
    return shutil.which(BINARY)


def check_free(host: str, port: int) -> None:
    """OSError ("Address already in use") if ``port`` is taken on ``host`` (TCP or UDP):
    coturn itself would only log it and keep running without that listener."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind((host, port))


class Coturn:
    """coturn on ``host``:``port`` (0: a free port, another one if that is taken before coturn
    listens) with ``use-auth-secret`` and ``secrets``, its files in ``directory``. ``start``
    returns once it listens; ``stop`` ends it."""

    def __init__(
        self,
        directory: Path,
        secrets: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        extra: Sequence[str] = (),
    ) -> None:
        binary = installed()
        if binary is None:
            raise FileNotFoundError(f"{BINARY} is not installed (apt-get install coturn)")
        self.binary = binary
        self.directory = directory
        self.secrets = list(secrets)
        self.host = host
        self.port = port
        self.extra = list(extra)
        self.lines: queue.Queue[str] = queue.Queue()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._ready = threading.Event()

    def _config(self) -> str:
        return "\n".join(
            [
                f"listening-ip={self.host}",
                f"relay-ip={self.host}",
                f"listening-port={self.port}",
                "use-auth-secret",
                *(f"static-auth-secret={secret}" for secret in self.secrets),
                "realm=signaling.local",
                "no-tls",
                "no-dtls",
                "no-cli",
                "fingerprint",
                "log-file=stdout",
                "simple-log",
                f"pidfile={self.directory}/turnserver.pid",
                f"userdb={self.directory}/turndb",
                *self.extra,
            ]
        )

    def start(self, timeout: float = 30.0) -> int:
        if self.port != 0:
            check_free(self.host, self.port)
            return self._start(self.port, timeout)
        return retrying_on_conflict(lambda: self._start(free_port(self.host), timeout))

    def _start(self, port: int, timeout: float) -> int:
        """coturn on ``port``, once it listens; AddressInUse if another program has the port
        (coturn would keep trying to bind it instead of saying it is ready)."""
        self.port = port
        lines: queue.Queue[str] = queue.Queue()  # this attempt's start-up lines
        self.lines = lines
        config = self.directory / "turnserver.conf"
        config.write_text(self._config())
        with self._lock:  # start runs in a worker thread: stop may come first (Ctrl-C at start-up)
            if self._stopped:
                raise RuntimeError("coturn was stopped before it started")
            process = subprocess.Popen(  # noqa: S603 - the installed coturn, our own config file
                [self.binary, "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            self._process = process
        stdout = process.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:  # read to the end (a full pipe would block coturn) ...
                if not self._ready.is_set():  # ... but keep only the start-up lines
                    lines.put(line)
            lines.put("")  # end of output: it exited

        self._reader = threading.Thread(target=read, name="coturn-log", daemon=True)
        self._reader.start()
        seen: list[str] = []
        try:
            while READY_LINE not in (line := lines.get(timeout=timeout)):
                if not line:
                    raise RuntimeError(f"coturn exited ({process.wait()}): {''.join(seen[-5:])}")
                if says_address_in_use(line):
                    self._end_attempt()
                    raise AddressInUse(f"coturn: {self.host}:{port} is taken: {line.strip()}")
                seen.append(line)
            self._ready.set()
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"coturn did not start within {timeout} s: {''.join(seen[-5:])}") from None
        except AddressInUse:
            raise
        except BaseException:
            self.stop()
            raise
        return self.port

    def _end_attempt(self) -> None:
        """End a start-up that failed, so that ``start`` may try again on another port."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            self._terminate(process, 10.0)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
            process, self._process = self._process, None
        if process is not None:
            self._terminate(process, timeout)

    def _terminate(self, process: subprocess.Popen[str], timeout: float) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        if process.stdout is not None:
            process.stdout.close()

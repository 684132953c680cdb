"""Host programs the tests run (promtool, nft, turnserver, ...): found on PATH, or the test
is skipped where they are missing, unless this run requires them (CI sets the variable)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(name: str, package: str, requirement: str = "SIGNALING_REQUIRE_HOST_TOOLS") -> str:
    """The path of ``name``; a skip (or, with ``requirement=1`` in the environment, a failure)."""
    binary = shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(path, os.X_OK)), None
    )
    if binary is not None:
        return binary
    if os.environ.get(requirement) == "1":
        pytest.fail(f"{name} is required here: apt-get install {package}")
    pytest.skip(f"{name} is not installed (CI installs {package} and sets {requirement}=1)")

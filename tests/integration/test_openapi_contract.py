"""schemathesis against each HTTP API's own OpenAPI schema, each API on a port of its own.

Every response must be one the operation documents: no 5xx, no undocumented status
code, content type, header or body. schemathesis runs as its CLI in a subprocess (the
APIs keep serving on this test's loop meanwhile), seeded and bounded, with no example
database or cache, writing only into the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from auth_api.main import create_app as create_auth_app
from devstack.stack import StackInfo
from rooms_api.main import create_app as create_rooms_app
from signaling_shared.settings import AuthSettings, RoomsSettings
from support import TIMEOUT, serving, sign_in

pytestmark = pytest.mark.integration

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",  # schema-valid requests are not refused as malformed
    "negative_data_rejection",  # schema-invalid requests are refused
    "missing_required_header",
    "unsupported_method",  # undocumented methods get 405 with an Allow header
    "allow_header_conformance",
    "ignored_auth",  # with a valid token given, each operation is retried without it and with a forged one
    "use_after_free",  # a deleted room is gone (the stateful phase follows the OpenAPI links)
    "ensure_resource_availability",  # a created room can be read
]

# Warnings that mean the run did not exercise what it should: every operation got past
# 404 (links supply real rooms), generated valid data was accepted, nothing was throttled.
FAIL_ON = ["missing_test_data", "validation_mismatch", "rate_limited"]

# The shared stack's limits (conftest's GENEROUS_LIMITS) that these APIs read: no run reaches them.
GENEROUS_LIMITS = {
    "signin_rate_per_minute": 100_000,
    "signin_burst": 10_000,
    "room_create_rate_per_minute": 100_000,
    "room_create_burst": 10_000,
}

MAX_EXAMPLES = 30
SEED = 20240601


def _service_settings(stack: StackInfo) -> dict[str, Any]:
    """The shared stack's AWS resources and generous limits, on port 0."""
    return {**stack.common.model_dump(), **GENEROUS_LIMITS, "port": 0}


async def _schemathesis(base_url: str, workdir: Path, *options: str, fail_on: list[str]) -> None:
    """``st run`` every operation of ``base_url``'s schema; fail with its report on any failure or warning."""
    config = workdir / "schemathesis.toml"
    config.write_text(
        "\n".join(
            [
                "[generation]",
                'database = "none"',
                "[cache]",
                "enabled = false",
                "[warnings]",
                f"fail-on = {json.dumps(fail_on)}",
            ]
        )
    )
    command = [
        *("-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run", f"{base_url}/openapi.json"),
        *("--checks", ",".join(CHECKS), "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED)),
        *("--workers", "1", "--request-timeout", str(TIMEOUT)),
        *options,
    ]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 12 * TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, output.decode(errors="replace")


async def test_auth_api_conforms_to_its_openapi(stack: StackInfo, tmp_path: Path) -> None:
    """auth-api answers schemathesis's generated requests only as its OpenAPI documents."""
    async with serving(create_auth_app(AuthSettings(**_service_settings(stack))), stack.common) as base_url:
        await _schemathesis(base_url, tmp_path, fail_on=FAIL_ON)


async def test_rooms_api_with_id_token_conforms_to_its_openapi(stack: StackInfo, api: str, tmp_path: Path) -> None:
    """rooms-api, given a real ID token (and probed without it and with a forged one), answers only as documented."""
    user = await sign_in(api)
    async with serving(create_rooms_app(RoomsSettings(**_service_settings(stack))), stack.common) as base_url:
        header = f"Authorization: {user.bearer['Authorization']}"
        await _schemathesis(base_url, tmp_path, "--header", header, fail_on=[*FAIL_ON, "missing_auth"])


async def test_rooms_api_without_id_token_conforms_to_its_openapi(stack: StackInfo, tmp_path: Path) -> None:
    """rooms-api, with no or generated garbage Authorization headers, answers only as documented (401)."""
    async with serving(create_rooms_app(RoomsSettings(**_service_settings(stack))), stack.common) as base_url:
        await _schemathesis(base_url, tmp_path, fail_on=FAIL_ON)

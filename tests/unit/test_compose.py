"""Static checks of compose.yaml and .env.example (no Docker engine needed).

Both are parsed as files and compared with the code: the services' Dockerfile, build
arguments and ports, and the settings models that read every SIGNALING_ variable.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
from typing import Any

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from container_checks import ROOT, SECRET_NAME, SERVICES, SETTING_NAMES, SETTINGS, env_name

# PyYAML ships no type information (and types-PyYAML is not a dev requirement).
yaml: Any = importlib.import_module("yaml")


_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}; a variable without a default or `?` could be empty, so it fails."""

    def substitute(match: re.Match[str]) -> str:
        assert match[2], f"${{{match[1]}}} has no default"
        return match[3] if "-" in match[2] else "operator-set"

    return _INTERPOLATION.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", "NAME"] form
        env = {item.partition("=")[0]: item.partition("=")[2] if "=" in item else None for item in env}
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def default_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if not svc.get("profiles")}


def test_images_have_pinned_tags(compose: dict[str, Any]) -> None:
    """Every image has an exact version tag (or digest), never `latest` or no tag at all."""
    for name, service in compose["services"].items():
        image = interpolate(service["image"])
        reference, _, digest = image.partition("@")
        repository, _, tag = reference.rpartition(":")
        assert digest or (repository and "/" not in tag and tag != "latest"), f"{name}: {image}"
        assert digest or re.search(r"\d+\.\d+\.\d+", tag) or tag == "operator-set", f"{name}: {image}"


def test_core_services_are_built_here_and_healthchecked(compose: dict[str, Any]) -> None:
    """auth-api, rooms-api and ws-relay build from the Dockerfile with their own build arguments;
    they and the edge have health checks."""
    services = default_services(compose)
    for service in SERVICES:
        spec = services[service.name]
        assert spec["build"]["context"] == "."
        assert ROOT / spec["build"]["dockerfile"] == service.dockerfile
        assert {k: str(v) for k, v in spec["build"]["args"].items()} == service.build_args, service.name
        assert f"/{service.name}:" in spec["image"]
        test = spec["healthcheck"]["test"]
        assert f"http://127.0.0.1:{service.port}/healthz" in " ".join(test)
    edge = services["edge"]
    assert edge["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    for name, spec in services.items():
        assert spec.get("restart") == "unless-stopped", name
        assert not spec["healthcheck"].get("disable"), name


def test_only_the_edge_publishes_ports(compose: dict[str, Any]) -> None:
    """In the default profile only the edge has published ports; services sit on the internal network."""
    services = default_services(compose)
    publishing = {name for name, spec in services.items() if spec.get("ports")}
    assert publishing == {"edge"}
    networks = compose["networks"]
    assert networks["backend"].get("internal") is True
    edge_networks = set(services["edge"]["networks"])
    for service in SERVICES:
        attached = set(services[service.name]["networks"])
        assert "backend" in attached
        assert not attached & (edge_networks - {"backend"}), f"{service.name} shares the edge's public network"
    for name, spec in compose["services"].items():
        assert spec.get("network_mode") != "host", name


def test_containers_are_hardened(compose: dict[str, Any]) -> None:
    """No container is privileged or mounts the Docker socket; ours and the edges are read-only, capability-free."""
    for name, spec in compose["services"].items():
        assert not spec.get("privileged"), name
        assert not any("docker.sock" in str(volume) for volume in spec.get("volumes", [])), name
    for name in [s.name for s in SERVICES] + ["edge", "edge-seed", "localstack-init"]:
        spec = compose["services"][name]
        assert spec["read_only"] is True, name
        assert spec["cap_drop"] == ["ALL"], name
        assert set(spec.get("cap_add", [])) <= {"NET_BIND_SERVICE"}, name
        assert "no-new-privileges:true" in spec["security_opt"], name
    for name in [s.name for s in SERVICES] + ["edge"]:
        mounts = [str(t).split(":")[0] for t in compose["services"][name]["tmpfs"]]
        assert "/tmp" in mounts, name  # noqa: S108 - reads compose's tmpfs list, creates nothing


def test_edge_uses_the_repository_caddyfile(compose: dict[str, Any]) -> None:
    """The edge mounts services/edge/Caddyfile, the file the tests below check."""
    for name in ("edge", "edge-seed"):
        mounts = [str(v).split(":")[:2] for v in compose["services"][name]["volumes"]]
        assert ["./services/edge/Caddyfile", "/etc/caddy/Caddyfile"] in mounts, name


def test_trusted_proxies_are_the_edges(compose: dict[str, Any]) -> None:
    """The services trust X-Forwarded-For exactly from the edge proxies' fixed addresses."""
    edges = {
        spec["networks"]["backend"]["ipv4_address"]
        for name, spec in compose["services"].items()
        if name.startswith("edge")
    }
    for service in SERVICES:
        trusted = environment(compose["services"][service.name])["SIGNALING_FORWARDED_ALLOW_IPS"]
        assert trusted is not None
        assert set(trusted.split(",")) == edges


def test_no_credentials_in_compose(compose: dict[str, Any]) -> None:
    """Secret-looking variables in compose.yaml are passed through from the shell, never given a value."""
    for name, spec in compose["services"].items():
        for key, value in environment(spec).items():
            assert not (SECRET_NAME.search(key) and value), f"{name}: {key}"


def test_inline_python_compiles_and_imports_exist(compose: dict[str, Any]) -> None:
    """Every `python -c` in compose.yaml parses, and what it imports from our packages exists."""
    snippets = []
    for spec in compose["services"].values():
        for argv in (spec.get("command"), spec.get("healthcheck", {}).get("test")):
            if isinstance(argv, list) and "-c" in argv and "python" in argv:
                snippets.append(argv[argv.index("-c") + 1])
    assert len(snippets) >= 4
    for snippet in snippets:
        for node in ast.walk(ast.parse(snippet)):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def env_example() -> list[tuple[bool, str, str]]:
    """(active, name, value) for every `NAME=value` line of .env.example, commented or not."""
    entries = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            entries.append((match[1] is None, match[2], match[3]))
    return entries


def test_signaling_variables_are_real_settings(compose: dict[str, Any]) -> None:
    """Every SIGNALING_ name in compose.yaml or .env.example is a field of the services' settings."""
    text = (ROOT / "compose.yaml").read_text() + (ROOT / ".env.example").read_text()
    referenced = set(re.findall(r"\bSIGNALING_[A-Z0-9_]+", text))
    assert referenced
    assert referenced - SETTING_NAMES == set()


def test_env_example_documents_every_setting() -> None:
    """.env.example names every settings field of auth-api, rooms-api and ws-relay."""
    documented = {name for _, name, _ in env_example()}
    assert SETTING_NAMES - documented == set()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SIGNALING_ or AWS_ variable from the caller's environment (CI sets some)."""
    for name in list(os.environ):
        if name.startswith(("SIGNALING_", "AWS_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_env_example_values_are_valid(clean_environment: pytest.MonkeyPatch) -> None:
    """Each SIGNALING_ value in .env.example parses as its setting in every service that reads it."""
    for active, name, value in env_example():
        if not name.startswith("SIGNALING_") or (not active and value == ""):
            continue
        clean_environment.setenv(name, value)
        for cls in SETTINGS:
            if name in {env_name(f) for f in cls.model_fields}:
                # A minimal valid production configuration, so each value is judged alone.
                settings: BaseSettings = cls(
                    cognito_user_pool_id="pool", cognito_client_id="client", turn_secrets=[SecretStr("s" * 32)]
                )
                assert settings is not None
        if not active:
            clean_environment.delenv(name)


def test_env_example_holds_no_secrets() -> None:
    """No active line of .env.example sets a secret-looking variable."""
    assert [name for active, name, _ in env_example() if active and SECRET_NAME.search(name)] == []

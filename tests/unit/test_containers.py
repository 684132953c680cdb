"""Static checks of the images, compose.yaml and the edge's Caddyfile (no Docker engine needed).

The Dockerfiles, .dockerignore, compose.yaml, .env.example and services/edge/Caddyfile are
parsed as files and compared with the code: the settings models, the FastAPI apps' routes
and the pinned requirements. Where the ``caddy`` binary exists, Caddy itself adapts the
Caddyfile and the adapted routes are checked too.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic_settings import BaseSettings

from auth_api.main import create_app as create_auth_app
from rooms_api.main import create_app as create_rooms_app
from signaling_shared.settings import AuthSettings, CommonSettings, Environment, RelaySettings, RoomsSettings

# PyYAML ships no type information (and types-PyYAML is not a dev requirement).
yaml: Any = importlib.import_module("yaml")

ROOT = Path(__file__).resolve().parents[2]
CADDYFILE = ROOT / "services" / "edge" / "Caddyfile"
SETTINGS: tuple[type[CommonSettings], ...] = (AuthSettings, RoomsSettings, RelaySettings)
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True)
class Service:
    name: str
    package: str
    settings: type[CommonSettings]

    @property
    def port(self) -> int:
        return int(self.settings.model_fields["port"].default)

    @property
    def upstream(self) -> str:
        return f"{self.name}:{self.port}"

    @property
    def dockerfile(self) -> Path:
        return ROOT / "services" / self.package / "Dockerfile"


AUTH = Service("auth-api", "auth_api", AuthSettings)
ROOMS = Service("rooms-api", "rooms_api", RoomsSettings)
RELAY = Service("ws-relay", "ws_relay", RelaySettings)
SERVICES = (AUTH, ROOMS, RELAY)
by_service = pytest.mark.parametrize("service", SERVICES, ids=[s.name for s in SERVICES])


def env_name(field_name: str) -> str:
    return f"SIGNALING_{field_name.upper()}"


SETTING_NAMES = frozenset(env_name(name) for cls in SETTINGS for name in cls.model_fields)


# --- Dockerfile ----------------------------------------------------------------------


class Instruction(NamedTuple):
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    start = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[start:]


def env_assignments(ins: Instruction) -> dict[str, str | None]:
    """Names set by an ENV or ARG instruction (None: an ARG without a default)."""
    words = shlex.split(ins.args)
    if ins.keyword == "ENV" and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}  # legacy `ENV NAME value`
    pairs = (word.partition("=") for word in words)
    return {name: (value if sep else None) for name, sep, value in pairs}


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return [str(item) for item in value]


def copy_sources(ins: Instruction) -> tuple[list[str], str]:
    words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
    return words[:-1], words[-1]


def secret_assignments(text: str) -> list[str]:
    """ENV/ARG names that look like credentials and carry a value."""
    return [
        name
        for ins in parse_dockerfile(text)
        if ins.keyword in ("ENV", "ARG")
        for name, value in env_assignments(ins).items()
        if SECRET_NAME.search(name) and value
    ]


@pytest.fixture(scope="module")
def dockerfiles() -> dict[str, list[Instruction]]:
    return {s.name: parse_dockerfile(s.dockerfile.read_text()) for s in SERVICES}


@by_service
def test_base_images_are_pinned_python_312_slim(service: Service, dockerfiles: dict[str, list[Instruction]]) -> None:
    """Every stage starts from python:3.12.<patch>-slim[-<debian>], never a floating tag."""
    stages: set[str] = set()
    for ins in dockerfiles[service.name]:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if words[0] not in stages:
                assert re.fullmatch(r"python:3\.12\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", words[0]), ins
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])


@by_service
def test_runs_as_non_root_user(service: Service, dockerfiles: dict[str, list[Instruction]]) -> None:
    """The final stage switches to a non-root USER before its CMD and never back."""
    stage = final_stage(dockerfiles[service.name])
    keywords = [ins.keyword for ins in stage]
    users = [ins.args.split(":")[0] for ins in stage if ins.keyword == "USER"]
    assert users, "no USER in the final stage"
    assert all(user not in ("root", "0") for user in users)
    assert max(i for i, k in enumerate(keywords) if k == "USER") < keywords.index("CMD")


@by_service
def test_healthcheck_gets_healthz_with_urllib(service: Service, dockerfiles: dict[str, list[Instruction]]) -> None:
    """HEALTHCHECK runs python's urllib against /healthz on the port the image EXPOSEs and the service binds."""
    stage = final_stage(dockerfiles[service.name])
    (check,) = [ins for ins in stage if ins.keyword == "HEALTHCHECK"]
    _, _, command = check.args.partition("CMD ")
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    ast.parse(argv[2])
    assert "urllib.request" in argv[2]
    assert f"'http://127.0.0.1:{service.port}/healthz'" in argv[2]
    exposed = {word.split("/")[0] for ins in stage if ins.keyword == "EXPOSE" for word in ins.args.split()}
    assert exposed == {str(service.port)}


@by_service
def test_no_credentials_or_unknown_settings_baked_in(
    service: Service, dockerfiles: dict[str, list[Instruction]]
) -> None:
    """No ENV/ARG named like a secret has a value, and every SIGNALING_ ENV is a real setting."""
    assert secret_assignments(service.dockerfile.read_text()) == []
    names = {n for ins in dockerfiles[service.name] if ins.keyword == "ENV" for n in env_assignments(ins)}
    assert {n for n in names if n.startswith("SIGNALING_")} <= SETTING_NAMES


def test_secret_detector_flags_credentials() -> None:
    """The secret check catches ENV and ARG credentials, so a pass above means something."""
    text = (
        "FROM x\nARG GITHUB_TOKEN=abc\nARG NPM_TOKEN\n"
        "ENV A=1 \\\n    AWS_SECRET_ACCESS_KEY=xyz\nENV DB_PASSWORD hunter2\n"
    )
    assert secret_assignments(text) == ["GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD"]


@by_service
def test_runtime_environment_and_cmd(service: Service, dockerfiles: dict[str, list[Instruction]]) -> None:
    """The image runs `python -m <package>.main` (whose main() exists) unbuffered, without writing bytecode."""
    stage = final_stage(dockerfiles[service.name])
    env = {k: v for ins in stage if ins.keyword == "ENV" for k, v in env_assignments(ins).items()}
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["SIGNALING_HOST"] == "0.0.0.0", "the default 127.0.0.1 is unreachable from other containers"
    assert "ENTRYPOINT" not in [ins.keyword for ins in stage]
    (cmd,) = [ins for ins in stage if ins.keyword == "CMD"]
    assert exec_form(cmd.args) == ["python", "-m", f"{service.package}.main"]
    assert callable(importlib.import_module(f"{service.package}.main").main)


@by_service
def test_copied_files_exist_and_reach_the_build_context(
    service: Service, dockerfiles: dict[str, list[Instruction]]
) -> None:
    """Every COPY source exists in the repository and .dockerignore lets its files through."""
    rules = dockerignore_rules()
    copied: list[str] = []
    for ins in dockerfiles[service.name]:
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            sources, _ = copy_sources(ins)
            copied += sources
    assert {"requirements/runtime.txt", "services/shared", f"services/{service.package}"} <= set(copied)
    for source in copied:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            generated = re.search(r"__pycache__|\.egg-info/|(^|/)build/", relative)
            assert dockerignored(relative, rules) == bool(generated), relative


@by_service
def test_installs_pinned_requirements_then_packages_without_deps(
    service: Service, dockerfiles: dict[str, list[Instruction]]
) -> None:
    """requirements/runtime.txt is installed; everything else is an exact pin or --no-deps."""
    instructions = dockerfiles[service.name]
    destinations: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            sources, destination = copy_sources(ins)
            destinations.update(dict.fromkeys(sources, destination))
    args = {k: v for ins in instructions if ins.keyword == "ARG" for k, v in env_assignments(ins).items()}
    commands = [
        shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]] or "", part))
        for ins in instructions
        if ins.keyword == "RUN"
        for part in ins.args.split("&&")
        if re.search(r"\bpip (install|wheel)\b", part)
    ]
    requirement_installs = [c for c in commands if destinations["requirements/runtime.txt"] in c]
    assert requirement_installs, "requirements/runtime.txt is never installed"
    assert all({"--requirement", "-r"} & set(c) for c in requirement_installs)
    for command in commands:
        if command in requirement_installs or "--no-deps" in command:
            continue
        packages = command[command.index("install" if "install" in command else "wheel") + 1 :]
        assert all(re.fullmatch(r"[\w.-]+==[\w.]+", p) for p in packages), f"unpinned install: {command}"
    no_deps = " ".join(word for c in commands if "--no-deps" in c for word in c)
    for package in ("services/shared", f"services/{service.package}"):
        assert destinations[package] in no_deps, f"{package} is not installed with --no-deps"
    dev_pin = re.search(r"^setuptools==(\S+)", (ROOT / "requirements" / "dev.txt").read_text(), re.MULTILINE)
    assert dev_pin is not None
    assert args.get("SETUPTOOLS_VERSION") == dev_pin[1], "the build backend pin drifted from requirements/dev.txt"


# --- .dockerignore -------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str | None = None) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per .dockerignore line, in order."""
    text = (ROOT / ".dockerignore").read_text() if text is None else text
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            pattern = posixpath.normpath(line.removeprefix("!").strip("/"))
            rules.append((negated, _glob_regex(pattern)))
    return rules


def dockerignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_local_state_out() -> None:
    """The build context leaves out the venv, git, tests, .env files, Terraform state and caches."""
    rules = dockerignore_rules()
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/unit/test_containers.py",
        ".env",
        "services/auth_api/.env",
        "terraform/envs/prod/terraform.tfstate",
        "terraform/.terraform/providers/x",
        "services/shared/signaling_shared/__pycache__/settings.cpython-312.pyc",
        ".mypy_cache/3.11/x.json",
        "services/rooms_api/build/lib/rooms_api/main.py",
    ):
        assert dockerignored(path, rules), path
    assert not dockerignored("services/shared/signaling_shared/settings.py", rules)


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher applies the last matching pattern and parent directories, as Docker does."""
    rules = dockerignore_rules("*\n!keep/\n**/*.pyc\n!keep/x.pyc\n")
    assert dockerignored("other/a.py", rules)
    assert not dockerignored("keep/a.py", rules)
    assert dockerignored("keep/deep/a.pyc", rules)
    assert not dockerignored("keep/x.pyc", rules)


# --- compose.yaml and .env.example ---------------------------------------------------

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
    """auth-api, rooms-api and ws-relay build from their Dockerfiles; they and the edge have health checks."""
    services = default_services(compose)
    for service in SERVICES:
        spec = services[service.name]
        assert spec["build"]["context"] == "."
        assert ROOT / spec["build"]["dockerfile"] == service.dockerfile
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
                settings: BaseSettings = cls(cognito_user_pool_id="pool", cognito_client_id="client")
                assert settings is not None
        if not active:
            clean_environment.delenv(name)


def test_env_example_holds_no_secrets() -> None:
    """No active line of .env.example sets a secret-looking variable."""
    assert [name for active, name, _ in env_example() if active and SECRET_NAME.search(name)] == []


# --- services/edge/Caddyfile ---------------------------------------------------------


class Action(NamedTuple):
    kind: str  # "proxy" or "respond"
    target: str  # upstream, or status code
    body_limited: bool


Router = Callable[[str], Action]


@dataclass
class Node:
    tokens: list[str]
    children: list[Node] = field(default_factory=list)


def parse_caddyfile(text: str, env: dict[str, str]) -> list[Node]:
    """A Caddyfile as nested blocks, with {$VAR:default} replaced as Caddy does before parsing."""
    text = re.sub(r"\{\$(\w+)(?::([^}]*))?\}", lambda m: env.get(m[1], m[2] or ""), text)
    root = Node([])
    stack = [root]
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line == "}":
            stack.pop()
        elif line.endswith("{"):
            node = Node(line[:-1].split())
            stack[-1].children.append(node)
            stack.append(node)
        elif line:
            stack[-1].children.append(Node(line.split()))
    assert stack == [root], "unbalanced braces"
    return root.children


def caddyfile_router(text: str, env: dict[str, str] | None = None) -> Router:
    """Where the main site sends a path: its `handle` blocks in order, the bare `handle` last."""
    nodes = parse_caddyfile(text, env or {})
    snippets = {n.tokens[0][1:-1]: n.children for n in nodes if n.tokens[0].startswith("(")}
    (site,) = [n for n in nodes if any(c.tokens[0] == "handle" for c in n.children)]
    matchers = {c.tokens[0]: c.tokens[2:] for c in site.children if c.tokens[0].startswith("@")}
    handles: list[tuple[list[str] | None, Action]] = []
    for block in (c for c in site.children if c.tokens[0] == "handle"):
        body = [n for c in block.children for n in (snippets[c.tokens[1]] if c.tokens[0] == "import" else [c])]
        limited = any(n.tokens[0] == "request_body" and n.children for n in body)
        proxies = [Action("proxy", n.tokens[1], limited) for n in body if n.tokens[0] == "reverse_proxy"]
        responses = [Action("respond", n.tokens[-1], limited) for n in body if n.tokens[0] == "respond"]
        (action,) = proxies + responses
        handles.append((matchers[block.tokens[1]] if len(block.tokens) > 1 else None, action))
    handles.sort(key=lambda h: h[0] is None)

    def route(path: str) -> Action:
        for patterns, action in handles:
            if patterns is None or any(fnmatch.fnmatchcase(path, p) for p in patterns):
                return action
        raise AssertionError(f"nothing handles {path}")

    return route


def sample_path(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "room-1", template)


def public_paths(app: FastAPI) -> set[str]:
    """The app's route templates minus the operations endpoints.

    FastAPI >= 0.16x keeps included routers behind wrapper routes in ``app.routes``, so the
    OpenAPI paths (the contract) are read as well as any top-level ``APIRoute``.
    """
    paths = set(app.openapi()["paths"]) | {route.path for route in app.routes if isinstance(route, APIRoute)}
    assert paths >= OPS_PATHS
    return paths - OPS_PATHS


@pytest.fixture(scope="module")
def api_routes() -> dict[str, Service]:
    """Each public route template of the two FastAPI apps, with the service that serves it."""
    common: dict[str, Any] = {"environment": Environment.DEVELOPMENT, "aws_region": "us-west-1"}
    auth = public_paths(create_auth_app(AuthSettings(**common)))
    rooms = public_paths(create_rooms_app(RoomsSettings(**common)))
    assert auth
    assert rooms
    return {**dict.fromkeys(auth, AUTH), **dict.fromkeys(rooms, ROOMS)}


def check_routes(route: Router, api_routes: dict[str, Service]) -> None:
    for template, service in api_routes.items():
        assert route(sample_path(template)) == Action("proxy", service.upstream, True), template
    assert route("/").kind == "proxy"
    assert route("/").target == RELAY.upstream
    assert route("/any/path").target == RELAY.upstream
    for path in ("/metrics", "/readyz"):
        assert route(path)[:2] == ("respond", "404"), path


def test_caddyfile_routes_every_public_route(api_routes: dict[str, Service]) -> None:
    """Each API route reaches its service with a body limit, ops endpoints stay private, the rest reaches the relay."""
    check_routes(caddyfile_router(CADDYFILE.read_text()), api_routes)


def test_caddyfile_routes_only_real_paths(api_routes: dict[str, Service]) -> None:
    """Every path the Caddyfile sends to an API matches a route of that API (no stale routes)."""
    nodes = parse_caddyfile(CADDYFILE.read_text(), {})
    (site,) = [n for n in nodes if any(c.tokens[0] == "handle" for c in n.children)]
    route = caddyfile_router(CADDYFILE.read_text())
    for matcher in (c for c in site.children if c.tokens[0].startswith("@")):
        for pattern in matcher.tokens[2:]:
            action = route(pattern.replace("*", "room-1"))
            if action.kind == "proxy" and action.target != RELAY.upstream:
                served = [t for t, s in api_routes.items() if s.upstream == action.target]
                assert any(fnmatch.fnmatchcase(sample_path(t), pattern) for t in served), pattern


def test_caddyfile_router_detects_misrouting(api_routes: dict[str, Service]) -> None:
    """A Caddyfile that sends /rooms/* to the relay fails the routing check."""
    broken = CADDYFILE.read_text().replace(" /rooms/*", "")
    with pytest.raises(AssertionError):
        check_routes(caddyfile_router(broken), api_routes)


def adapted_router(routes: list[dict[str, Any]]) -> Router:
    """Where Caddy's adapted JSON routes send a path (path matchers, groups, subroutes, terminal)."""

    def handlers(routes: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
        chosen: list[dict[str, Any]] = []
        groups: set[str] = set()
        for route in routes:
            sets = route.get("match")
            if route.get("group") in groups or (
                sets and not any(fnmatch.fnmatchcase(path, p) for s in sets for p in s.get("path", ["*"]))
            ):
                continue
            if "group" in route:
                groups.add(route["group"])
            for handler in route.get("handle", []):
                is_sub = handler["handler"] == "subroute"
                chosen += handlers(handler["routes"], path) if is_sub else [handler]
            if route.get("terminal"):
                break
        return chosen

    def route(path: str) -> Action:
        chain = handlers(routes, path)
        limited = any(h["handler"] == "request_body" and h.get("max_size") for h in chain)
        for h in chain:
            if h["handler"] == "reverse_proxy":
                return Action("proxy", h["upstreams"][0]["dial"], limited)
            if h["handler"] == "static_response":
                return Action("respond", str(h.get("status_code")), limited)
        raise AssertionError(f"nothing handles {path}")

    return route


def caddy_adapt(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    caddy = shutil.which("caddy")
    assert caddy is not None
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    command = [caddy, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    return subprocess.run(command, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False)


needs_caddy = pytest.mark.skipif(
    shutil.which("caddy") is None, reason="caddy is not installed (CI installs it: apt-get install caddy)"
)


@needs_caddy
@pytest.mark.parametrize(
    ("env", "listeners"),
    [
        ({}, [":443"]),
        ({"EDGE_DOMAIN": "signaling.example.com"}, [":443"]),
        ({"EDGE_DOMAIN": "signaling.example.com", "EDGE_TLS": "internal"}, [":443"]),
        ({"EDGE_DOMAIN": "http://:8001, http://:8080"}, [":8001", ":8080"]),
    ],
    ids=["default", "public-domain", "tls-internal", "seed-ports"],
)
def test_caddy_adapts_and_routes(env: dict[str, str], listeners: list[str], api_routes: dict[str, Service]) -> None:
    """`caddy adapt` accepts the Caddyfile and the routes Caddy builds send every path where intended."""
    result = caddy_adapt(env)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    servers = config["apps"]["http"]["servers"].values()
    public = [s for s in servers if s["listen"] != ["127.0.0.1:8081"]]
    assert sorted(listen for s in public for listen in s["listen"]) == listeners
    for server in public:
        check_routes(adapted_router(server["routes"]), api_routes)
    issuers = [
        issuer["module"]
        for policy in config["apps"].get("tls", {}).get("automation", {}).get("policies", [])
        for issuer in policy.get("issuers", [])
    ]
    assert ("internal" in issuers) == (env.get("EDGE_TLS") == "internal")


@needs_caddy
def test_caddy_refuses_an_unknown_tls_mode() -> None:
    """EDGE_TLS other than acme or internal stops Caddy from loading instead of serving without TLS."""
    result = caddy_adapt({"EDGE_TLS": "off"})
    assert result.returncode != 0
    assert "tls-off" in result.stderr

"""Static checks of the edge's Caddyfile (no Docker engine needed).

services/edge/Caddyfile is parsed as a file and its routes compared with the FastAPI apps'
routes. Where the ``caddy`` binary exists, Caddy itself adapts the Caddyfile and the
adapted routes are checked too.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from auth_api.main import create_app as create_auth_app
from container_checks import AUTH, RELAY, ROOMS, ROOT, Service
from rooms_api.main import create_app as create_rooms_app
from signaling_shared.settings import AuthSettings, Environment, RoomsSettings
from support import scaled
from tools import require

CADDYFILE = ROOT / "services" / "edge" / "Caddyfile"
OPS_PATHS = frozenset({"/healthz", "/health", "/readyz", "/metrics"})


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
    snippets = {n.tokens[0][1:-1]: n.children for n in nodes if n.tokens and n.tokens[0].startswith("(")}
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
    caddy = require("caddy")
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    command = [caddy, "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    return subprocess.run(command, env={**base, **env}, capture_output=True, text=True, timeout=scaled(60), check=False)


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


def public_proxies(env: dict[str, str]) -> list[dict[str, Any]]:
    """The reverse_proxy handlers of the public site Caddy adapts, in route order."""
    result = caddy_adapt(env)
    assert result.returncode == 0, result.stderr
    servers = json.loads(result.stdout)["apps"]["http"]["servers"].values()
    (site,) = [s for s in servers if s["listen"] != ["127.0.0.1:8081"]]
    found: list[dict[str, Any]] = []

    def walk(routes: list[dict[str, Any]]) -> None:
        for route in routes:
            for handler in route.get("handle", []):
                if handler["handler"] == "subroute":
                    walk(handler["routes"])
                elif handler["handler"] == "reverse_proxy":
                    found.append(handler)

    walk(site["routes"])
    return found


def test_the_relay_entry_retries_a_refusing_node_and_balances_several(tmp_path: Path) -> None:
    """One relay: the same single upstream as before, dialled again for up to 5 s while it
    restarts; several (EDGE_WS_RELAY space-separated): the entry spreads over all of them.
    Without relay node routes (EDGE_RELAY_NODES_DIR empty) nothing else changes."""
    empty = {"EDGE_RELAY_NODES_DIR": str(tmp_path)}
    *_, entry = public_proxies(empty)
    assert entry["upstreams"] == [{"dial": RELAY.upstream}]
    assert entry["load_balancing"] == {"try_duration": 5_000_000_000}
    assert "health_checks" not in entry  # a lone relay is never kept out after it came back
    assert len(public_proxies(empty)) == 3  # auth-api, rooms-api, the relay: no node route
    nodes = "127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003"
    *_, entry = public_proxies({**empty, "EDGE_WS_RELAY": nodes})
    assert [upstream["dial"] for upstream in entry["upstreams"]] == nodes.split()


def test_caddy_refuses_an_unknown_tls_mode() -> None:
    """EDGE_TLS other than acme or internal stops Caddy from loading instead of serving without TLS."""
    result = caddy_adapt({"EDGE_TLS": "off"})
    assert result.returncode != 0
    assert "tls-off" in result.stderr


def test_the_caddyfile_is_formatted_as_caddy_formats_it() -> None:
    """`caddy fmt` changes nothing (Caddy warns at every load otherwise)."""
    caddy = require("caddy")
    result = subprocess.run(
        [caddy, "fmt", str(CADDYFILE)], capture_output=True, text=True, timeout=scaled(60), check=True
    )
    assert result.stdout == CADDYFILE.read_text()

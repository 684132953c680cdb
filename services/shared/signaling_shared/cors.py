"""CORS for browser clients: Starlette's ``CORSMiddleware``, one per route, from the routes.

Each route template gets a ``CORSMiddleware`` that allows the methods it serves and, where
it takes a Bearer token (OpenAPI ``security``), the ``Authorization`` header; Starlette
always adds the CORS-safelisted request headers (``Content-Type`` among them, which a JSON
body needs). Credentials are never allowed: the ID token travels in ``Authorization``, not
in a cookie. ``Retry-After`` and ``X-Request-ID`` are exposed to the page's script.

Only a request whose ``Origin`` is allowed reaches a ``CORSMiddleware``: any other (no
``Origin``, a refused one, a path without a policy) goes straight to the app, so its answer
carries no CORS header at all, and a refused preflight is the route's 405 with ``Allow``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi.openapi.utils import get_openapi
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

EXPOSED_HEADERS = ("Retry-After", "X-Request-ID")


@dataclass(frozen=True)
class RoutePolicy:
    """What a browser may send to one route template."""

    template: str  # e.g. /rooms/{room_id}
    methods: tuple[str, ...]
    headers: tuple[str, ...]  # beyond the CORS-safelisted ones


def route_policies(routers: Sequence[APIRouter]) -> list[RoutePolicy]:
    """Each template of ``routers`` (in routing order) with its methods and request headers,
    read from their OpenAPI operations: the contract clients are written against."""
    routes = [route for router in routers for route in router.routes]
    paths: dict[str, dict[str, dict[str, object]]] = get_openapi(title="cors", version="0", routes=routes)["paths"]
    policies = []
    for template, operations in paths.items():
        headers = {"Authorization" for operation in operations.values() if operation.get("security")}
        policies.append(RoutePolicy(template, tuple(sorted(m.upper() for m in operations)), tuple(sorted(headers))))
    return policies


class RouteCORSMiddleware:
    """Dispatch each request from an allowed origin to its route's ``CORSMiddleware``."""

    def __init__(self, app: ASGIApp, *, policies: Sequence[RoutePolicy], origins: Sequence[str], max_age: int) -> None:
        self.app = app
        self.routes: list[tuple[re.Pattern[str], CORSMiddleware]] = [
            (
                compile_path(policy.template)[0],
                CORSMiddleware(
                    app,
                    allow_origins=tuple(origins),
                    allow_methods=policy.methods,
                    allow_headers=policy.headers,
                    allow_credentials=False,
                    expose_headers=EXPOSED_HEADERS,
                    max_age=max_age,
                ),
            )
            for policy in policies
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            origin = Headers(scope=scope).get("origin")
            cors = self._for_path(scope) if origin is not None else None
            if cors is not None and origin is not None and cors.is_allowed_origin(origin):
                await cors(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _for_path(self, scope: Scope) -> CORSMiddleware | None:
        """The first template matching the path, as the router picks the first route."""
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return next((cors for pattern, cors in self.routes if pattern.match(path)), None)

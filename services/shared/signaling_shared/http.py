"""What both FastAPI services share: error rendering, request context, metrics, health.

One handler renders every error as ``{"error": CODE, "detail": reason}``; every route
lists the errors it can return (``error_responses``), so OpenAPI is the contract.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import structlog
import uvicorn
from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from signaling_shared.auth import Identity, TokenVerifier
from signaling_shared.aws import use_io_threads
from signaling_shared.cors import RouteCORSMiddleware, route_policies
from signaling_shared.errors import (
    ErrorCode,
    InternalError,
    InvalidIdToken,
    InvalidRequest,
    MethodNotAllowed,
    RepositoryError,
    RouteNotFound,
    SignalingError,
    as_signaling_error,
    describe_validation_error,
)
from signaling_shared.health import HealthBody, Readiness, ReadinessBody, ReadinessCheck
from signaling_shared.metrics import ServiceMetrics
from signaling_shared.settings import CommonSettings

log = structlog.stdlib.get_logger("signaling.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ErrorBody(BaseModel):
    """Every error response."""

    error: ErrorCode = Field(description="Stable machine-readable code.")
    detail: str = Field(description="Human-readable reason; may change between releases.")


def error_responses(*errors: type[SignalingError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a route can return (422 and 500 always)."""
    by_status: dict[int, list[type[SignalingError]]] = {}
    listed: tuple[type[SignalingError], ...] = (*errors, InvalidRequest, InternalError)
    for error in listed:
        by_status.setdefault(error.http_status, []).append(error)
    return {
        status: {
            "model": ErrorBody,
            "description": " / ".join(sorted({e.code.value for e in group})),
        }
        for status, group in sorted(by_status.items())
    }


def error_response(
    error: SignalingError, metrics: ServiceMetrics | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    if metrics is not None:
        metrics.errors.labels(error.code.value).inc()
    response_headers = dict(headers or {})
    if error.http_status == 401:  # RFC 9110 15.5.2 / RFC 6750 3: a 401 carries its challenge
        response_headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if error.retry_after is not None:
        response_headers["Retry-After"] = str(max(1, int(error.retry_after + 0.999)))
    return JSONResponse(
        ErrorBody(error=error.code, detail=error.reason).model_dump(mode="json"),
        status_code=error.http_status,
        headers=response_headers,
    )


# Every method a route can declare (Starlette's list), in the order Allow lists them.
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY")


def _allowed_methods(request: Request) -> str:
    """The ``Allow`` value for the request's path: the methods the app's router serves there.

    Asked of the router itself (each method tried on the path), since neither shortcut
    holds: Starlette's 405 names only the first route that matched the path (and
    ``/rooms/{room_id}`` is one route per method), and FastAPI keeps included routers behind
    wrapper routes in ``app.router.routes``, so looking for ``Route`` objects there finds
    none (which once gave an empty ``Allow``).
    """
    path, root_path = request.scope["path"], request.scope.get("root_path", "")
    routes = request.app.router.routes
    allowed = [
        method
        for method in _HTTP_METHODS
        if any(
            # A fresh scope per probe: matching writes FastAPI's routing state into it.
            route.matches({"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []})[0]
            is Match.FULL
            for route in routes
        )
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    async def on_signaling_error(_: Request, exc: Exception) -> Response:
        return error_response(as_signaling_error(exc), metrics)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        reason = describe_validation_error(exc.errors())
        return error_response(InvalidRequest(reason), metrics)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:  # RFC 9110: a 405 lists the methods the resource supports
            return error_response(MethodNotAllowed(), metrics, {"Allow": _allowed_methods(request)})
        if exc.status_code == 404:
            return error_response(RouteNotFound(), metrics)
        return error_response(InvalidRequest(), metrics)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.error("unhandled_error", error_type=type(exc).__name__, exc_info=exc)
        return error_response(as_signaling_error(exc), metrics)

    app.add_exception_handler(SignalingError, on_signaling_error)
    app.add_exception_handler(RepositoryError, on_signaling_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


class RequestContextMiddleware:
    """Request id (``X-Request-ID`` in and out), access log and HTTP metrics.

    Pure ASGI so it wraps streaming and error responses alike. The route label is the
    route's template (``/rooms/{room_id}``), never the raw path.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                elapsed = time.perf_counter() - started
                method = str(scope.get("method", ""))
                self.metrics.http_requests.labels(template, method, str(status)).inc()
                self.metrics.http_duration.labels(template, method).observe(elapsed)
                log.info(
                    "http_request",
                    method=method,
                    route=template,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )


def ops_router(metrics: ServiceMetrics, checks: Mapping[str, ReadinessCheck]) -> APIRouter:
    """``/healthz`` (liveness, no dependencies), ``/readyz`` (dependencies), ``/metrics``."""
    router = APIRouter(tags=["operations"])
    readiness = Readiness(checks, metrics.dependency_up)

    @router.get("/healthz", response_model=HealthBody, summary="Liveness: the process serves requests.")
    @router.get("/health", response_model=HealthBody, summary="/healthz, by the name the seed's successor uses.")
    async def healthz() -> HealthBody:
        return HealthBody(status="ok")

    @router.get(
        "/readyz",
        response_model=ReadinessBody,
        summary="Readiness: every dependency answers.",
        responses={503: {"model": ReadinessBody, "description": "A dependency is failing; 'failing' names it."}},
    )
    async def readyz() -> Response:
        body = await readiness.run()
        return JSONResponse(body.model_dump(), status_code=200 if not body.failing else 503)

    @router.get(
        "/metrics",
        summary="Prometheus metrics.",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics."}},
    )
    async def prometheus_metrics() -> Response:
        await readiness.refresh()
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return router


def client_ip(request: Request) -> str:
    """The client address (uvicorn has already applied trusted X-Forwarded-For)."""
    return request.client.host if request.client else "unknown"


# At module level: FastAPI resolves the dependency's (postponed) annotation in this module.
_BEARER = HTTPBearer(auto_error=False, description="Cognito ID token from /anonymous-signin.")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]


def bearer_identity(verifier: TokenVerifier) -> Callable[..., Awaitable[Identity]]:
    """A dependency giving the caller's verified identity (401 INVALID_ID_TOKEN otherwise)."""

    async def identity(credentials: BearerCredentials) -> Identity:
        if credentials is None:
            raise InvalidIdToken("Authorization header with a Bearer ID token is required")
        return await verifier.verify(credentials.credentials)

    return identity


def build_app(
    *,
    title: str,
    description: str,
    metrics: ServiceMetrics,
    checks: Mapping[str, ReadinessCheck],
    routers: list[APIRouter],
    settings: CommonSettings,
) -> FastAPI:
    """A service's FastAPI app: its routers plus errors, request context and health, and
    CORS on the routers' routes for ``settings.cors_origins`` (none: no CORS at all)."""
    app = FastAPI(title=title, version="0.1.0", description=description)
    app.state.metrics = metrics
    install_error_handlers(app, metrics)
    if settings.cors_origins:  # inside the request context: preflights are logged and counted
        app.add_middleware(
            RouteCORSMiddleware,
            policies=route_policies(routers),
            origins=settings.cors_origins,
            max_age=settings.cors_max_age_seconds,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    for router in routers:
        app.include_router(router)
    app.include_router(ops_router(metrics, checks))
    return app


def uvicorn_config(app: ASGIApp, settings: CommonSettings, port: int) -> uvicorn.Config:
    """How every API is served. X-Forwarded-For counts only from ``forwarded_allow_ips``."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=port,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        access_log=False,
        log_config=None,
        lifespan="off",
        timeout_graceful_shutdown=10,
    )


def serve(app: FastAPI, settings: CommonSettings, port: int) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; uvicorn drains in-flight requests first.

    The socket is bound here, so the port it got (``port`` 0: any free one) is logged as
    ``api_listening``; a connection made from then on waits in the backlog until uvicorn
    accepts it. ``settings.host`` is an address (IPv4 or IPv6), as in uvicorn's own
    ``bind_socket``: a host name would bind its first address only."""

    async def run() -> None:
        use_io_threads(asyncio.get_running_loop(), settings)
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        with socket.create_server((settings.host, port), family=family) as sock:
            bound = sock.getsockname()
            log.info("api_listening", service=app.title, host=bound[0], port=bound[1])
            await uvicorn.Server(uvicorn_config(app, settings, port)).serve(sockets=[sock])

    asyncio.run(run())

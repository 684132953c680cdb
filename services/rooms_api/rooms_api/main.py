"""rooms-api entry point: ``create_app(settings)`` builds the app, ``main()`` serves it."""

from __future__ import annotations

from fastapi import FastAPI

from rooms_api.routes import rooms_router
from rooms_api.service import RoomsService
from signaling_shared.auth import TokenVerifier
from signaling_shared.cognito import CognitoGateway
from signaling_shared.dynamo import Repository
from signaling_shared.http import bearer_identity, build_app, serve
from signaling_shared.logging import configure_logging
from signaling_shared.metrics import ServiceMetrics
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.settings import RoomsSettings


def create_app(settings: RoomsSettings, metrics: ServiceMetrics | None = None) -> FastAPI:
    metrics = metrics or ServiceMetrics("rooms-api")
    repository = Repository.from_settings(settings, metrics.dynamodb_error)
    cognito = CognitoGateway.from_settings(settings, metrics.cognito_error)
    verifier = TokenVerifier.from_settings(settings)
    service = RoomsService(
        repository,
        cognito,
        room_ttl_seconds=settings.room_ttl_seconds,
        create_limiter=KeyedRateLimiter.per_minute(settings.room_create_rate_per_minute, settings.room_create_burst),
    )

    return build_app(
        title="rooms-api",
        description="Rooms with a room token and an expiry for the signaling service.",
        metrics=metrics,
        checks={"dynamodb": repository.check, "jwks": verifier.check},
        routers=[rooms_router(service, bearer_identity(verifier), settings)],
        settings=settings,
    )


def main() -> None:
    settings = RoomsSettings()
    configure_logging(settings.log_level)
    serve(create_app(settings), settings, settings.port)


if __name__ == "__main__":
    main()

"""auth-api entry point: ``create_app(settings)`` builds the app, ``main()`` serves it."""

from __future__ import annotations

from fastapi import FastAPI

from auth_api.routes import signin_router
from auth_api.service import SignInService
from signaling_shared.auth import TokenVerifier
from signaling_shared.cognito import CognitoGateway
from signaling_shared.http import build_app, serve
from signaling_shared.logging import configure_logging
from signaling_shared.metrics import ServiceMetrics
from signaling_shared.ratelimit import KeyedRateLimiter
from signaling_shared.settings import AuthSettings


def create_app(settings: AuthSettings, metrics: ServiceMetrics | None = None) -> FastAPI:
    metrics = metrics or ServiceMetrics("auth-api")
    cognito = CognitoGateway.from_settings(settings, metrics.cognito_error)
    verifier = TokenVerifier.from_settings(settings)
    limiter = KeyedRateLimiter.per_minute(settings.signin_rate_per_minute, settings.signin_burst)

    return build_app(
        title="auth-api",
        description="Anonymous sign-in through AWS Cognito for the signaling service.",
        metrics=metrics,
        checks={"cognito": cognito.check, "jwks": verifier.check},
        routers=[
            signin_router(
                SignInService(
                    cognito,
                    limiter,
                    user_lifetime=settings.anonymous_user_lifetime_seconds,
                    sweep_interval=settings.user_sweep_interval_seconds,
                )
            )
        ],
        settings=settings,
    )


def main() -> None:
    settings = AuthSettings()
    configure_logging(settings.log_level)
    serve(create_app(settings), settings, settings.port)


if __name__ == "__main__":
    main()

"""boto3 clients built from settings, so one code path serves AWS, LocalStack and moto."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config

from signaling_shared.settings import CommonSettings


def make_client(settings: CommonSettings, service: str) -> Any:
    """A boto3 client for ``service`` with bounded retries and timeouts: a storage fault is
    answered (STORAGE_UNAVAILABLE, AUTH_PROVIDER_UNAVAILABLE) within about
    ``aws_max_attempts * aws_timeout_seconds`` plus botocore's backoff, not after tens of seconds.

    Clients are thread-safe and are shared by the worker threads that run blocking calls.
    """
    config = Config(
        region_name=settings.aws_region,
        retries={"mode": "standard", "total_max_attempts": settings.aws_max_attempts},  # the first included
        connect_timeout=settings.aws_timeout_seconds,
        read_timeout=settings.aws_timeout_seconds,
        max_pool_connections=settings.aws_max_connections,
    )
    return boto3.session.Session().client(service, endpoint_url=settings.endpoint_for(service), config=config)


def use_io_threads(loop: asyncio.AbstractEventLoop, settings: CommonSettings) -> None:
    """Size the loop's default executor (where blocking boto3 calls run) to the connection pool."""
    loop.set_default_executor(ThreadPoolExecutor(max_workers=settings.aws_max_connections, thread_name_prefix="aws-io"))

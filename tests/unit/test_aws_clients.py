"""boto3 clients answer a storage fault fast: a DynamoDB that accepts connections and never
answers gives a typed error after the configured time limit and attempts, not after the
tens of seconds botocore's defaults take (issue 16, finding 11)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from signaling_shared.dynamo import Repository
from signaling_shared.errors import RepositoryError, as_signaling_error
from signaling_shared.settings import CommonSettings, Environment
from support import TIMEOUT, scaled


async def test_a_hanging_dynamodb_is_a_typed_error_within_the_configured_budget() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel does), never answers
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = CommonSettings(
            environment=Environment.TEST,
            dynamodb_endpoint_url=endpoint,
            aws_timeout_seconds=scaled(0.3),
            aws_max_attempts=2,
        )
        repository = Repository.from_settings(settings)
        client = repository._client
        assert client.meta.config.read_timeout == settings.aws_timeout_seconds
        assert client.meta.config.retries["total_max_attempts"] == 2
        # Well within the test's budget; botocore's defaults (60 s reads, 3 attempts) are not.
        with pytest.raises(RepositoryError) as failed:
            await asyncio.wait_for(repository.get_room("room-1"), TIMEOUT)
        assert as_signaling_error(failed.value).code.value == "STORAGE_UNAVAILABLE"

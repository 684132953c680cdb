"""The repository contract (tests/contract/repository_cases.py) against the in-memory
repository and against the DynamoDB one on moto in-process (no HTTP, no emulator: moto
answers botocore's requests, from the worker threads the repository calls boto3 in)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import boto3
import pytest
from moto import mock_aws

from contract.repository_cases import CASES, AnyRepository, Case, case_id
from fakes.memory_repository import MemoryRepository
from signaling_shared.bootstrap import ensure_tables
from signaling_shared.dynamo import Repository
from signaling_shared.settings import CommonSettings, Environment

REGION = "us-east-1"


@pytest.fixture(params=["memory", "moto"])
async def repository(request: pytest.FixtureRequest) -> AsyncIterator[AnyRepository]:
    if request.param == "memory":
        yield MemoryRepository()
        return
    with mock_aws():
        settings = CommonSettings(environment=Environment.TEST, table_prefix="contract-")
        client = boto3.session.Session().client(
            "dynamodb",
            region_name=REGION,
            endpoint_url=f"https://dynamodb.{REGION}.amazonaws.com",  # not AWS_ENDPOINT_URL's emulator: moto's
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        ensure_tables(client, settings)
        yield Repository(
            client,
            rooms_table=settings.rooms_table,
            peers_table=settings.peers_table,
            messages_table=settings.messages_table,
        )
        client.close()


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_the_repository_contract(case: Case, repository: AnyRepository) -> None:
    await case(repository)

"""The repository contract (tests/contract/repository_cases.py) against the in-memory
repository and against the DynamoDB one on moto in-process (no HTTP, no emulator: moto
answers botocore's requests, from the worker threads the repository calls boto3 in)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from contract.repository_cases import CASES, AnyRepository, Case, case_id
from fakes.memory_repository import MemoryRepository
from fakes.moto_in_process import dynamodb_in_process
from signaling_shared.bootstrap import ensure_tables
from signaling_shared.dynamo import Repository
from signaling_shared.settings import CommonSettings, Environment


@pytest.fixture(params=["memory", "moto"])
async def repository(request: pytest.FixtureRequest) -> AsyncIterator[AnyRepository]:
    if request.param == "memory":
        yield MemoryRepository()
        return
    with dynamodb_in_process() as client:
        settings = CommonSettings(environment=Environment.TEST, table_prefix="contract-")
        ensure_tables(client, settings)
        yield Repository(
            client,
            rooms_table=settings.rooms_table,
            peers_table=settings.peers_table,
            messages_table=settings.messages_table,
        )


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_the_repository_contract(case: Case, repository: AnyRepository) -> None:
    await case(repository)

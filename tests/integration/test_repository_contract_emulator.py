"""The repository contract (tests/contract/repository_cases.py) against the DynamoDB
repository on the integration tier's emulator, over HTTP as the services reach it (the
embedded moto server, or LocalStack): the same cases the unit tier runs against the
in-memory repository and moto in-process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from contract.repository_cases import CASES, Case, case_id
from devstack.stack import StackInfo
from signaling_shared.aws import make_client
from signaling_shared.bootstrap import ensure_tables
from signaling_shared.dynamo import Repository

pytestmark = pytest.mark.integration


@pytest.fixture
async def repository(stack: StackInfo) -> AsyncIterator[Repository]:
    """The repository over three empty tables of its own on the stack's emulator (the node
    registry is one item of the rooms table: the stack's relays write theirs to its own)."""
    settings = stack.common.model_copy(update={"table_prefix": f"contract-{uuid.uuid4().hex[:8]}-"})
    client = make_client(settings, "dynamodb")
    await asyncio.to_thread(ensure_tables, client, settings)
    try:
        yield Repository(
            client,
            rooms_table=settings.rooms_table,
            peers_table=settings.peers_table,
            messages_table=settings.messages_table,
        )
    finally:
        for table in (settings.rooms_table, settings.peers_table, settings.messages_table):
            await asyncio.to_thread(client.delete_table, TableName=table)
        client.close()


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_the_repository_contract_on_the_emulator(case: Case, repository: Repository) -> None:
    await case(repository)

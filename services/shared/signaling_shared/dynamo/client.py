"""The one way the stores call DynamoDB: a blocking boto3 call in a worker thread, its
botocore error turned into a typed one (keeping the AWS error code), failures reported.

Every store of the package shares one ``Dynamo``: one client, one set of table names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from signaling_shared.errors import ConditionFailed, RepositoryError, Throttled, Unavailable

T = TypeVar("T")

_BATCH_ATTEMPTS = 6
_BATCH_SIZE = 25  # BatchWriteItem's limit

_THROTTLE_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})


def translate_error(operation: str, exc: Exception) -> RepositoryError:
    """Map a botocore exception to the typed error a service can branch on."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        if code == "ConditionalCheckFailedException":
            return ConditionFailed("condition failed", aws_code=code, operation=operation)
        if code == "TransactionCanceledException":
            reasons = tuple(
                (reason.get("Code") if reason.get("Code") not in (None, "None") else None)
                for reason in exc.response.get("CancellationReasons", [])
            )
            if "ConditionalCheckFailed" in reasons:
                return ConditionFailed("condition failed", aws_code=code, operation=operation, reasons=reasons)
            if any(r in _THROTTLE_CODES or r == "ThrottlingError" for r in reasons):
                return Throttled("throttled", aws_code=code, operation=operation, reasons=reasons)
        if code in _THROTTLE_CODES:
            return Throttled("throttled", aws_code=code, operation=operation)
        return Unavailable(f"request refused ({code})", aws_code=code, operation=operation)
    return Unavailable(f"unreachable ({type(exc).__name__})", operation=operation)


class Dynamo:
    """A boto3 DynamoDB client and the three tables' names.

    ``on_error`` is told of every failed call (operation name, error), for metrics; a
    refused condition is an answer, not a failure, and is not told.
    """

    def __init__(
        self,
        client: Any,
        *,
        rooms_table: str,
        peers_table: str,
        messages_table: str,
        on_error: Callable[[str, RepositoryError], None] | None = None,
    ) -> None:
        self.client = client
        self.rooms_table = rooms_table
        self.peers_table = peers_table
        self.messages_table = messages_table
        self._on_error = on_error

    async def call(self, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(partial(fn, *args, **kwargs))
        except (ClientError, BotoCoreError) as exc:
            error = translate_error(operation, exc)
            if self._on_error is not None and not isinstance(error, ConditionFailed):
                self._on_error(operation, error)
            raise error from exc

    def batch_delete(self, table: str, keys: list[dict[str, Any]]) -> None:
        """Delete ``keys`` (blocking: run it through ``call``)."""
        self.batch_write(table, [{"DeleteRequest": {"Key": key}} for key in keys])

    def batch_write(self, table: str, all_requests: list[dict[str, Any]]) -> None:
        """Write ``all_requests`` 25 at a time, retrying what DynamoDB leaves unprocessed
        (blocking: run it through ``call``); Throttled if some are still left."""
        client = self.client
        for start in range(0, len(all_requests), _BATCH_SIZE):
            requests = all_requests[start : start + _BATCH_SIZE]
            pending: dict[str, Any] = {table: requests}
            for attempt in range(_BATCH_ATTEMPTS):
                if attempt:
                    time.sleep(min(0.05 * 2**attempt, 1.0))  # in a worker thread, never on the loop
                response = client.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
            else:
                raise Throttled(f"batch write to {table} left unprocessed items", operation="batch_write")

    async def check(self) -> None:
        """Raise unless every table is reachable and active."""
        client = self.client
        for table in (self.rooms_table, self.peers_table, self.messages_table):
            response = await self.call("describe_table", client.describe_table, TableName=table)
            status = response["Table"]["TableStatus"]
            if status not in ("ACTIVE", "UPDATING"):
                raise Unavailable(f"table {table} is {status}", operation="describe_table")


class Store:
    """Base of the per-aggregate stores: the shared ``Dynamo``, its client and its ``call``."""

    def __init__(self, db: Dynamo) -> None:
        self._db = db
        self._client = db.client

    async def _call(self, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._db.call(operation, fn, *args, **kwargs)

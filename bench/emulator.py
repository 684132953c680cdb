"""``python -m bench.emulator <devstack options>``: the dev stack, with one emulator fix for load.

moto's ``TransactWriteItems`` deep-copies every table it touches before each transaction,
to roll back on failure: each registration (ws-relay claims its routing entry in a
transaction) then costs time and garbage in proportion to the whole peers and rooms tables.
At 10,000 peers that is quadratic: the emulator, not the relay, sets the pace (and grew past
10 GiB in a trial). Real DynamoDB does nothing of the kind. Here the backup is taken of the
items the transaction touches instead, and those are restored on failure: the same outcome,
at a cost independent of the table's size. Nothing else of the stack changes.
"""

from __future__ import annotations

import copy
import sys
import types
from typing import Any


def patch_moto() -> None:
    from moto.dynamodb import models  # dev dependency; present wherever devstack runs
    from moto.dynamodb.models.table import Table

    backend = models.DynamoDBBackend
    original = backend.transact_write_items

    class _NoTableCopy(types.SimpleNamespace):
        """moto's module-level ``copy``, minus the copy of whole tables."""

        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        touched: list[tuple[str, dict[str, Any], Any]] = []
        for entry in transact_items:
            op_type, op = next(iter(entry.items()))
            name = op.get("TableName")
            if not name or name not in self.tables:
                continue
            table = self.tables[name]
            if op_type == "Put":
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op.get("Key", {})
            try:
                before = self.get_item(name, key)
            except Exception:  # noqa: BLE001, S112 - a malformed key fails inside the transaction, as before
                continue
            touched.append((name, key, copy.deepcopy(before.to_json()["Attributes"]) if before else None))
        try:
            original(self, transact_items)
        except Exception:
            for name, key, attributes in reversed(touched):
                if attributes is None:
                    self.delete_item(name, key)
                else:
                    self.put_item(name, attributes)
            raise

    setattr(models, "copy", _NoTableCopy())  # noqa: B010 - moto's own module, patched in this process only
    setattr(backend, "transact_write_items", transact_write_items)  # noqa: B010


def main() -> int:
    patch_moto()
    from devstack.__main__ import main as devstack_main

    return devstack_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

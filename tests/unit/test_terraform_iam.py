"""The host role's IAM actions are exactly the AWS calls the services make.

The services' calls are read from their code (every ``self._client.<operation>`` or
``client.<operation>`` in the shared package, on a client made by ``make_client``; a
subpackage, such as ``dynamo/``, counts as one module whose client one of its files makes), mapped
to IAM action names, and compared with the list the signaling-host module grants
(``service-actions.json``, which its terraform test and the emulator apply check against
the rendered and the applied policy).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "services" / "shared" / "signaling_shared"
ACTIONS_FILE = ROOT / "terraform" / "modules" / "signaling-host" / "service-actions.json"

# The emulator bootstrap creates what Terraform owns in AWS and refuses to run without an
# emulator endpoint: its calls never need the host role.
NOT_RUN_IN_AWS = frozenset({"bootstrap.py"})
# boto3 client methods that are not AWS operations.
CLIENT_HELPERS = frozenset({"get_paginator", "get_waiter", "can_paginate", "close", "meta", "exceptions"})
# A transaction is authorized per item action (AWS: "Using IAM with DynamoDB transactions").
TRANSACTION_ITEM_ACTIONS = {
    "ConditionCheck": "ConditionCheckItem",
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
}
TRANSACTIONS = frozenset({"transact_write_items"})


def _is_client(node: ast.expr) -> bool:
    """``self._client`` or ``client``."""
    if isinstance(node, ast.Name):
        return node.id == "client"
    return isinstance(node, ast.Attribute) and node.attr == "_client" and isinstance(node.value, ast.Name)


def _pascal(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))


def _walk(trees: list[ast.Module]) -> list[ast.AST]:
    return [node for tree in trees for node in ast.walk(tree)]


def aws_actions(*sources: str) -> dict[str, set[str]]:
    """IAM actions, by service prefix, of the boto3 calls in one module's source (or those
    of a package's modules, taken together)."""
    trees = [ast.parse(source) for source in sources]
    services = {
        node.args[1].value
        for node in _walk(trees)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "make_client"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    }
    if not services:
        return {}
    assert len(services) == 1, f"one AWS service per module, found {sorted(services)}"
    operations: set[str] = set()
    for node in _walk(trees):
        if isinstance(node, ast.Attribute) and _is_client(node.value) and node.attr not in CLIENT_HELPERS:
            operations.add(node.attr)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get_paginator"
            and _is_client(node.func.value)
        ):
            (argument,) = node.args
            assert isinstance(argument, ast.Constant)
            assert isinstance(argument.value, str)
            operations.add(argument.value)
    item_kinds = {
        key.value
        for node in _walk(trees)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant) and key.value in TRANSACTION_ITEM_ACTIONS
    }
    actions: set[str] = set()
    for operation in operations:
        if operation in TRANSACTIONS:
            assert item_kinds, f"{operation} without ConditionCheck/Put/Update/Delete items"
            actions |= {TRANSACTION_ITEM_ACTIONS[kind] for kind in item_kinds}
        else:
            actions.add(_pascal(operation))
    return {services.pop(): actions}


def services_actions() -> dict[str, set[str]]:
    """IAM actions, by service prefix, of every AWS call the services make."""
    found: dict[str, set[str]] = {}
    modules = [[path] for path in sorted(SHARED.glob("*.py")) if path.name not in NOT_RUN_IN_AWS]
    modules += [sorted(init.parent.glob("*.py")) for init in sorted(SHARED.glob("*/__init__.py"))]
    for paths in modules:
        for service, actions in aws_actions(*(path.read_text(encoding="utf-8") for path in paths)).items():
            found.setdefault(service, set()).update(actions)
    return found


def granted_actions() -> dict[str, set[str]]:
    data = json.loads(ACTIONS_FILE.read_text(encoding="utf-8"))
    return {service: set(actions) for service, actions in data.items() if service != "description"}


def test_the_role_grants_exactly_the_services_calls() -> None:
    """The module's action list equals the IAM actions of the services' AWS calls, both ways."""
    assert granted_actions() == services_actions()


def test_the_scan_finds_the_known_calls() -> None:
    """The scan sees direct, referenced, paginated and transactional calls (it cannot silently find nothing)."""
    found = services_actions()
    assert {"GetItem", "Query", "BatchWriteItem", "ConditionCheckItem", "DescribeTable"} <= found["dynamodb"]
    assert {"AdminCreateUser", "AdminInitiateAuth", "AdminDeleteUser"} <= found["cognito-idp"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("c = make_client(s, 'dynamodb')\nself._client.scan(TableName='x')", {"dynamodb": {"Scan"}}),
        (
            "c = make_client(s, 'dynamodb')\nself._call('q', self._client.batch_get_item)",
            {"dynamodb": {"BatchGetItem"}},
        ),
        ("c = make_client(s, 'dynamodb')\nclient.get_paginator('scan')", {"dynamodb": {"Scan"}}),
        (
            "c = make_client(s, 'dynamodb')\nself._client.transact_write_items(TransactItems=[{'Delete': {}}])",
            {"dynamodb": {"DeleteItem"}},
        ),
        ("c = make_client(s, 'cognito-idp')\nself._client.admin_get_user()", {"cognito-idp": {"AdminGetUser"}}),
        ("client.get('https://example.org')", {}),
    ],
)
def test_a_new_call_shows_up_as_a_new_action(source: str, expected: dict[str, set[str]]) -> None:
    """A call added to the services becomes an action the policy must grant."""
    assert aws_actions(source) == expected


def test_the_module_builds_its_policy_from_the_list() -> None:
    """The host module reads service-actions.json, so the list is the policy's only source of service actions."""
    main = (ACTIONS_FILE.parent / "main.tf").read_text(encoding="utf-8")
    assert 'jsondecode(file("${path.module}/service-actions.json"))' in main

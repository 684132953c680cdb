"""terraform/environments/local applied to the embedded AWS emulator: apply, no drift, destroy;
and a state of the layout before modules/signaling-stack planned by today's root: only moves.

Real processes: a moto server on a free port, and the terraform binary. Every environment
calls the one composition, modules/signaling-stack (tests/unit/test_terraform_layout.py
checks it), so this proves that the modules apply, converge and destroy cleanly, that what
they create is what the services expect, and that the environments' ``moved`` blocks keep
an existing state.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from signaling_shared.bootstrap import table_definitions
from signaling_shared.settings import CommonSettings, Environment
from support import TIMEOUT, scaled
from tools import require

pytestmark = [pytest.mark.integration, pytest.mark.timeout(scaled(900))]

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "terraform" / "environments" / "local"
# environments/local before modules/signaling-stack: the four module calls at the root.
PREVIOUS_LOCAL = ROOT / "tests" / "terraform" / "previous-local"
SERVICE_ACTIONS = ROOT / "terraform" / "modules" / "signaling-host" / "service-actions.json"
REGION = "us-west-1"
TERRAFORM_TIMEOUT = 60 * TIMEOUT  # one terraform command: 300 s, scaled like every test timeout


@dataclass(frozen=True)
class Applied:
    endpoint: str
    outputs: dict[str, Any]

    def client(self, service: str) -> Any:
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )


class Terraform:
    """The terraform binary on a root (environments/local unless told), with its data and (unless
    given) its state in a temporary folder; ``variables`` are -var values besides endpoint_url."""

    def __init__(
        self,
        workdir: Path,
        endpoint: str,
        root: Path = LOCAL,
        state: Path | None = None,
        variables: dict[str, str] | None = None,
    ) -> None:
        self.binary = require("terraform")
        self.endpoint = endpoint
        self.root = root
        self.state = state or workdir / "terraform.tfstate"
        self.variables = [
            f"-var={name}={value}" for name, value in {"endpoint_url": endpoint, **(variables or {})}.items()
        ]
        self.env = {
            **os.environ,
            "TF_DATA_DIR": str(workdir / ".terraform"),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": REGION,
        }
        # Only the emulator: no profile, session or endpoint of the caller's (or another fixture's).
        for name in list(self.env):
            if name in ("AWS_PROFILE", "AWS_SESSION_TOKEN") or name.startswith("AWS_ENDPOINT_URL"):
                del self.env[name]
        config = subprocess.run(
            [str(ROOT / "terraform" / "scripts" / "cli-config.sh"), str(workdir / "cli.tfrc")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if config:
            self.env["TF_CLI_CONFIG_FILE"] = config

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, f"-chdir={self.root}", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TERRAFORM_TIMEOUT,
        )
        if check and result.returncode != 0:
            pytest.fail(f"terraform {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def init(self) -> None:
        self.run("init", "-no-color", "-lockfile=readonly", f"-backend-config=path={self.state}")

    def apply(self, command: str = "apply") -> None:
        """``terraform apply`` (or ``destroy``) without a prompt."""
        self.run(command, "-auto-approve", "-no-color", *self.variables)

    def plan(self) -> subprocess.CompletedProcess[str]:
        return self.run("plan", "-detailed-exitcode", "-no-color", *self.variables, check=False)

    def saved_plan(self, path: Path) -> dict[str, Any]:
        """``terraform plan -out=path``, then the plan as ``terraform show -json`` gives it."""
        self.run("plan", f"-out={path}", "-no-color", *self.variables)
        plan: dict[str, Any] = json.loads(self.run("show", "-json", str(path)).stdout)
        return plan

    def managed_addresses(self) -> set[str]:
        """Addresses of the managed resources (not data sources) in the state."""
        state = json.loads(self.run("show", "-json").stdout)
        addresses: set[str] = set()
        modules = [state["values"]["root_module"]]
        while modules:
            module = modules.pop()
            addresses.update(r["address"] for r in module.get("resources", []) if r["mode"] == "managed")
            modules.extend(module.get("child_modules", []))
        return addresses

    def outputs(self) -> dict[str, Any]:
        raw = json.loads(self.run("output", "-json").stdout)
        return {name: entry["value"] for name, entry in raw.items()}


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """A moto server of its own, on a free port of 127.0.0.1."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def terraform(emulator: str, tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    return Terraform(tmp_path_factory.mktemp("terraform-local"), emulator)


@pytest.fixture(scope="module")
def applied(terraform: Terraform) -> Iterator[Applied]:
    """The local environment, applied; destroyed (and checked gone) afterwards."""
    lock = (LOCAL / ".terraform.lock.hcl").read_bytes()
    terraform.init()
    assert (LOCAL / ".terraform.lock.hcl").read_bytes() == lock, "init changed the committed lock file"
    terraform.apply()
    result = Applied(terraform.endpoint, terraform.outputs())
    yield result
    terraform.apply(command="destroy")
    assert json.loads(terraform.state.read_text())["resources"] == []
    dynamodb = result.client("dynamodb")
    assert not [name for name in dynamodb.list_tables()["TableNames"] if name.startswith("local-")]
    cognito = result.client("cognito-idp")
    assert not [
        pool for pool in cognito.list_user_pools(MaxResults=60)["UserPools"] if pool["Name"].startswith("local-")
    ]
    reservations = result.client("ec2").describe_instances()["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} <= {"terminated"}


def test_outputs_give_ansible_and_the_services_what_they_need(applied: Applied) -> None:
    """Region, Elastic IP, DNS name, table names, pool and client ids and the relay node count are the real ones."""
    outputs = applied.outputs
    assert outputs["region"] == REGION
    assert outputs["environment"] == "local"
    assert outputs["table_prefix"] == "local-"
    assert outputs["table_names"] == {"rooms": "local-rooms", "peers": "local-peers", "messages": "local-messages"}
    assert outputs["instance_id"].startswith("i-")
    assert outputs["public_dns"]
    address = applied.client("ec2").describe_addresses(PublicIps=[outputs["public_ip"]])["Addresses"][0]
    assert address["InstanceId"] == outputs["instance_id"]
    pool = applied.client("cognito-idp").describe_user_pool(UserPoolId=outputs["user_pool_id"])["UserPool"]
    assert pool["Name"] == "local-signaling-users"
    assert outputs["host_network"]["relay_nodes"] == 3  # local runs the several-node shape (terraform.tfvars)
    assert outputs["signaling_env"] == {
        "SIGNALING_AWS_REGION": REGION,
        "SIGNALING_TABLE_PREFIX": "local-",
        "SIGNALING_COGNITO_USER_POOL_ID": outputs["user_pool_id"],
        "SIGNALING_COGNITO_CLIENT_ID": outputs["user_pool_client_id"],
    }


def test_tables_are_what_the_services_bootstrap_creates(applied: Applied) -> None:
    """Keys, the peer_id index, on-demand billing, TTL on expires_at and point-in-time recovery."""
    created = {
        d["TableName"].removeprefix("test-"): d
        for d in table_definitions(CommonSettings(table_prefix="test-", environment=Environment.DEVELOPMENT))
    }
    assert set(created) == {"rooms", "peers", "messages"}  # the tables checked below are all there are
    dynamodb = applied.client("dynamodb")
    rooms = dynamodb.describe_table(TableName="local-rooms")["Table"]
    assert rooms["KeySchema"] == [{"AttributeName": "room_id", "KeyType": "HASH"}]
    peers = dynamodb.describe_table(TableName="local-peers")["Table"]
    assert peers["KeySchema"] == [
        {"AttributeName": "room_id", "KeyType": "HASH"},
        {"AttributeName": "peer_id", "KeyType": "RANGE"},
    ]
    (index,) = peers["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "peer_id-index"
    assert index["KeySchema"] == [
        {"AttributeName": "peer_id", "KeyType": "HASH"},
        {"AttributeName": "room_id", "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["expires_at"]}
    messages = dynamodb.describe_table(TableName="local-messages")["Table"]
    assert messages["KeySchema"] == [
        {"AttributeName": "room_id", "KeyType": "HASH"},
        {"AttributeName": "msg_key", "KeyType": "RANGE"},
    ]
    for table in ("local-rooms", "local-peers", "local-messages"):
        described = dynamodb.describe_table(TableName=table)["Table"]
        assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert described["SSEDescription"]["Status"] == "ENABLED"
        ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
        backups = dynamodb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_the_app_client_allows_user_password_auth_without_a_secret(applied: Applied) -> None:
    """The auth-api's flow (ADMIN_USER_PASSWORD_AUTH, no secret) is what the client allows, and
    only an administrator creates users (no SignUp past auth-api's rate limit)."""
    client = applied.client("cognito-idp").describe_user_pool_client(
        UserPoolId=applied.outputs["user_pool_id"], ClientId=applied.outputs["user_pool_client_id"]
    )["UserPoolClient"]
    assert set(client["ExplicitAuthFlows"]) == {"ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"}
    assert "ClientSecret" not in client
    pool = applied.client("cognito-idp").describe_user_pool(UserPoolId=applied.outputs["user_pool_id"])["UserPool"]
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True


def test_the_host_requires_imdsv2_and_encrypts_its_volume(applied: Applied) -> None:
    """The running instance has IMDSv2 required, hop limit 2, an encrypted root volume and the role."""
    ec2 = applied.client("ec2")
    (reservation,) = ec2.describe_instances(InstanceIds=[applied.outputs["instance_id"]])["Reservations"]
    (instance,) = reservation["Instances"]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    assert instance["IamInstanceProfile"]["Arn"].endswith("/signaling-local")
    assert "KeyName" not in instance or not instance["KeyName"]
    volume_ids = [mapping["Ebs"]["VolumeId"] for mapping in instance["BlockDeviceMappings"]]
    volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    assert volumes
    assert all(volume["Encrypted"] for volume in volumes)


def test_only_https_and_turn_are_open_to_the_internet(applied: Applied) -> None:
    """The applied security group lets in 443 (TCP, UDP) and TURN, and nothing else."""
    ec2 = applied.client("ec2")
    (instance,) = ec2.describe_instances(InstanceIds=[applied.outputs["instance_id"]])["Reservations"][0]["Instances"]
    (group,) = instance["SecurityGroups"]
    rules = ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}])
    ingress = {
        (rule["IpProtocol"], rule["FromPort"], rule["ToPort"], rule.get("CidrIpv4"))
        for rule in rules["SecurityGroupRules"]
        if not rule["IsEgress"]
    }
    assert ingress == {
        ("tcp", 443, 443, "0.0.0.0/0"),
        ("udp", 443, 443, "0.0.0.0/0"),
        ("udp", 3478, 3478, "0.0.0.0/0"),
        ("tcp", 3478, 3478, "0.0.0.0/0"),
        ("udp", 49152, 65535, "0.0.0.0/0"),
    }
    egress = {
        (rule["IpProtocol"], rule["FromPort"], rule["ToPort"], rule.get("CidrIpv4"))
        for rule in rules["SecurityGroupRules"]
        if rule["IsEgress"]
    }
    # HTTPS and package mirrors out, TURN relaying, and the relay's TURN probe to this host only.
    assert egress == {
        ("tcp", 443, 443, "0.0.0.0/0"),
        ("tcp", 80, 80, "0.0.0.0/0"),
        ("udp", 1, 65535, "0.0.0.0/0"),
        ("tcp", 3478, 3478, f"{applied.outputs['public_ip']}/32"),
    }


def test_the_applied_role_policy_grants_exactly_the_services_calls(applied: Applied) -> None:
    """The policy in the emulator grants the listed service actions on this environment's tables and pool only."""
    iam = applied.client("iam")
    document = iam.get_role_policy(RoleName="signaling-local", PolicyName="signaling-services")["PolicyDocument"]
    if isinstance(document, str):
        document = json.loads(document)
    statements = {statement["Sid"]: statement for statement in document["Statement"]}
    expected = json.loads(SERVICE_ACTIONS.read_text(encoding="utf-8"))
    granted: dict[str, set[str]] = {}
    for sid in ("ServiceTables", "ServiceIndexes", "ServiceUserPool"):
        for action in statements[sid]["Action"]:
            service, name = action.split(":")
            granted.setdefault(service, set()).add(name)
    assert granted == {"dynamodb": set(expected["dynamodb"]), "cognito-idp": set(expected["cognito-idp"])}
    tables = {arn.rsplit("/", 1)[1] for arn in statements["ServiceTables"]["Resource"]}
    assert tables == {"local-rooms", "local-peers", "local-messages"}
    assert [arn.split(":table/")[1] for arn in statements["ServiceIndexes"]["Resource"]] == [
        "local-peers/index/peer_id-index"
    ]
    pool_arn = applied.client("cognito-idp").describe_user_pool(UserPoolId=applied.outputs["user_pool_id"])["UserPool"][
        "Arn"
    ]
    assert statements["ServiceUserPool"]["Resource"] == [pool_arn]


def test_a_second_plan_shows_no_changes(applied: Applied, terraform: Terraform) -> None:
    """Right after the apply, terraform plan -detailed-exitcode finds nothing to change (exit 0)."""
    result = terraform.plan()
    assert result.returncode == 0, f"plan found changes or failed:\n{result.stdout}\n{result.stderr}"


def test_a_state_of_the_previous_layout_plans_only_moves(emulator: str, tmp_path: Path) -> None:
    """A state written by environments/local before modules/signaling-stack: today's root plans every
    resource as moved under module.stack and nothing created, changed, replaced or destroyed; the moves
    apply, a second plan is empty, and the new root destroys everything."""
    assert (PREVIOUS_LOCAL / ".terraform.lock.hcl").read_bytes() == (LOCAL / ".terraform.lock.hcl").read_bytes()
    # Its own environment name: nothing in common with the `applied` fixture's resources in the
    # emulator both use (tables, pool, role and log group are named after the environment).
    variables = {"environment": "moved"}
    state = tmp_path / "terraform.tfstate"
    previous = Terraform(tmp_path / "previous", emulator, root=PREVIOUS_LOCAL, state=state, variables=variables)
    current = Terraform(tmp_path / "current", emulator, state=state, variables=variables)
    previous.init()
    try:
        previous.apply()
        before = previous.managed_addresses()
        assert {address.split(".")[1] for address in before} == {"network", "data", "identity", "host"}
        current.init()
        plan = current.saved_plan(tmp_path / "moves.tfplan")
        changes = plan["resource_changes"]
        changed = {c["address"]: c["change"]["actions"] for c in changes if c["change"]["actions"] != ["no-op"]}
        assert not changed, f"the plan does more than move: {changed}"
        moves = {c["previous_address"]: c["address"] for c in changes if "previous_address" in c}
        assert set(moves) == before, "every resource of the previous state moves"
        assert all(new == f"module.stack.{old}" for old, new in moves.items()), moves
        assert {c["address"] for c in changes} == {f"module.stack.{address}" for address in before}
        current.run("apply", "-no-color", str(tmp_path / "moves.tfplan"))
        assert current.managed_addresses() == {f"module.stack.{address}" for address in before}
        second = current.plan()
        assert second.returncode == 0, (
            f"plan after the moves found changes or failed:\n{second.stdout}\n{second.stderr}"
        )
    finally:
        # The moved blocks let today's root destroy a state of either layout.
        current.init()
        current.apply(command="destroy")
    assert json.loads(state.read_text())["resources"] == []

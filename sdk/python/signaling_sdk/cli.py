"""``signaling``: a GPU worker and a client that meet through the service and move a file.

    signaling rooms create                                   # prints room_id and token
    signaling worker --room ROOM --token=TOKEN --out ./received --max-claims 1
    signaling client --room ROOM --token=TOKEN --file job.zip --tag gpu   # books a free worker

URLs come from --api/--relay or SIGNALING_API_URL/SIGNALING_RELAY_URL, defaulting to the
local stack (``make dev``); behind the edge they are https://HOST and wss://HOST (with
--ca-file or SIGNALING_CA_FILE for a private CA). Exit codes: 0 done, 1 the transfer failed its check, 2 the
service refused (the error code is printed; the --worker named is busy), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from signaling_sdk.errors import AlreadyClaimed, PeerError, SignalingError
from signaling_sdk.http import Identity, Room, ServiceClient
from signaling_sdk.session import Lease, Session

if TYPE_CHECKING:
    from signaling_sdk.webrtc import PeerLink

CHUNK = 16 * 1024
HIGH_WATER = 1024 * 1024  # bytes queued in the data channel before the sender waits
REPLY_GRACE_SECONDS = 10.0
MIN_TOKEN_CHARS = 32  # room tokens are 43; no option of this CLI is that long
MAX_NAME_BYTES = 200  # a received file's name (file systems allow 255)
MAX_CLAIMS = 64  # the relay's bound on a worker's max_claims
WORKER_WAIT_SECONDS = 30.0  # discover again this often while no worker is free
console = Console(stderr=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="signaling", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--api", default=os.environ.get("SIGNALING_API_URL", "http://127.0.0.1:8001"))
    parser.add_argument("--relay", default=os.environ.get("SIGNALING_RELAY_URL", "ws://127.0.0.1:8080"))
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=os.environ.get("SIGNALING_CA_FILE") or None,
        help="trust this CA for https/wss too (e.g. Caddy's local CA: EDGE_TLS=internal)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    rooms = commands.add_parser("rooms", help="create, show or delete a room").add_subparsers(
        dest="action", required=True
    )
    rooms.add_parser("create", help="sign in and create a room; prints its id, token and your ID token")
    for action in ("show", "delete"):
        sub = rooms.add_parser(action, help=f"{action} a room you created")
        sub.add_argument("room_id")
        sub.add_argument("--id-token", required=True, help="the ID token `rooms create` printed")
    commands.add_parser("ice-servers", help="sign in and print STUN/TURN servers with fresh credentials")

    for name in ("worker", "client"):
        sub = commands.add_parser(name, help=f"run a {name}")
        sub.add_argument("--room", required=True, help="room id")
        sub.add_argument("--token", required=True, help="room token")
        sub.add_argument("--peer-id", default=None)
        sub.add_argument(
            "--relay-only", action="store_true", help="connect through the TURN server only (never directly)"
        )
    worker = commands.choices["worker"]
    worker.add_argument("--out", type=Path, default=Path("received"), help="where received files go")
    worker.add_argument("--tag", action="append", default=[], help="a tag clients can filter on (repeatable)")
    worker.add_argument("--gpu-name", default=None, help="override what nvidia-smi reports")
    worker.add_argument("--gpu-memory-mb", type=int, default=None, help="override what nvidia-smi reports")
    worker.add_argument("--once", action="store_true", help="exit after one file")
    worker.add_argument(
        "--max-claims",
        type=_max_claims,
        default=None,
        help=f"how many clients may book this worker at once (1 to {MAX_CLAIMS}; the relay's default: 1);"
        " it still negotiates with one at a time",
    )
    client = commands.choices["client"]
    client.add_argument("--file", type=Path, required=True)
    client.add_argument("--worker", default=None, help="a worker's peer id (else: discover one)")
    client.add_argument("--tag", action="append", default=[], help="only workers with this tag (repeatable)")
    client.add_argument("--min-gpu-memory-mb", type=int, default=None)
    return parser.parse_args(_joined_tokens(sys.argv[1:] if argv is None else argv))


def _max_claims(value: str) -> int:
    number = int(value)
    if not 1 <= number <= MAX_CLAIMS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_CLAIMS}, not {number}")
    return number


def _joined_tokens(argv: Sequence[str]) -> list[str]:
    """``--token VALUE`` as ``--token=VALUE``: a room token (43 characters of URL-safe base64)
    may start with '-', which argparse would take for an option. Shorter values starting
    with '-' stay as they are (``--token --once`` is still a missing token)."""
    args = list(argv)
    for index in range(len(args) - 1, -1, -1):
        value = args[index + 1] if index + 1 < len(args) else ""
        if args[index] == "--token" and value.startswith("-") and len(value) >= MIN_TOKEN_CHARS:
            args[index : index + 2] = [f"--token={value}"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except SignalingError as exc:
        console.print(f"[red]error {exc.code}[/red]: {exc.reason}")
        return 2
    except KeyboardInterrupt:
        return 130


async def run(args: argparse.Namespace, *, ice_servers: list[dict[str, Any]] | None = None) -> int:
    """The command in ``args``; ``ice_servers`` overrides the session's (tests)."""
    args.ssl = None
    if args.ca_file:  # the usual CAs, and this one too
        args.ssl = ssl.create_default_context()
        args.ssl.load_verify_locations(cafile=args.ca_file)
    async with ServiceClient(args.api, ssl=args.ssl) as service:
        if args.command == "rooms":
            return await _rooms(service, args)
        identity = await service.sign_in()
        if args.command == "ice-servers":
            print(json.dumps(await service.ice_servers(identity), indent=2))
            return 0
    room = Room(args.room, args.token, 0)
    try:
        import aiortc  # noqa: F401
    except ImportError:
        console.print("[red]worker and client need WebRTC[/red]: pip install 'signaling-sdk[webrtc]'")
        return 2
    if args.command == "worker":
        return await run_worker(args, identity, room, ice_servers)
    return await run_client(args, identity, room, ice_servers)


async def _rooms(service: ServiceClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        identity = await service.sign_in()
        room = await service.create_room(identity)
        print(
            json.dumps(
                {
                    "room_id": room.room_id,
                    "token": room.token,
                    "expires_at": room.expires_at,
                    "id_token": identity.id_token,
                }
            )
        )
        return 0
    identity = Identity(args.id_token, "")
    if args.action == "show":
        print(json.dumps(await service.room(identity, args.room_id), indent=2))
    else:
        print(json.dumps(await service.delete_room(identity, args.room_id)))
    return 0


async def gpu_facts() -> dict[str, Any]:
    """What nvidia-smi says of the first GPU, or nothing."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return {}
    process = await asyncio.create_subprocess_exec(
        binary, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits", stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 10)
    except TimeoutError:
        process.kill()
        return {}
    name, _, memory = out.decode().splitlines()[0].partition(",") if out.strip() else ("", "", "")
    return {"gpu_name": name.strip(), "gpu_memory_mb": int(memory)} if memory.strip().isdigit() else {}


async def run_worker(
    args: argparse.Namespace, identity: Identity, room: Room, ice_servers: list[dict[str, Any]] | None
) -> int:
    from signaling_sdk.webrtc import ChannelClosed, NegotiationFailed, accept

    facts = await gpu_facts()
    if args.gpu_name is not None:
        facts["gpu_name"] = args.gpu_name
    if args.gpu_memory_mb is not None:
        facts["gpu_memory_mb"] = args.gpu_memory_mb
    metadata = {"tags": list(args.tag), "properties": facts}
    peer_id = args.peer_id or f"worker-{identity.username[:8]}"
    args.out.mkdir(parents=True, exist_ok=True)
    async with (
        await Session.open(
            args.relay,
            room,
            identity,
            peer_id,
            role="worker",
            metadata=metadata,
            ssl=args.ssl,
            max_claims=args.max_claims,
        ) as session,
        _reporting_bookings(session),
    ):
        console.print(f"worker [bold]{peer_id}[/bold] waiting in room {room.room_id} ({metadata})")
        while True:
            try:
                link = await accept(session, ice_servers=ice_servers, relay_only=args.relay_only)
                try:
                    await _receive_file(link, args.out)
                finally:
                    await link.close()
            except (TransferRefused, NegotiationFailed, ChannelClosed, OSError) as exc:
                # One transfer's failure: tell the person running the worker, serve the next.
                code, reason = (exc.code, exc.reason) if isinstance(exc, SignalingError) else ("WRITE_FAILED", str(exc))
                console.print(f"[yellow]transfer failed[/yellow] ({code}): {reason}")
                if args.once:
                    return 1
                continue
            if args.once:
                return 0


@contextlib.asynccontextmanager
async def _reporting_bookings(session: Session) -> AsyncIterator[None]:
    """While inside, print who books this worker and when each booking ends."""

    async def report() -> None:
        with contextlib.suppress(SignalingError):  # the session ended
            while True:
                event = await session.recv()
                if event.get("type") == "booked":
                    until = _local_time(event.get("expires_at"))
                    console.print(f"booked by {event.get('by_peer_id')} (lease {event.get('lease_id')}) until {until}")
                elif event.get("type") == "lease_ended":
                    console.print(
                        f"lease {event.get('lease_id')} of {event.get('holder_peer_id')} {event.get('reason')}"
                    )

    task = asyncio.get_running_loop().create_task(report())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _local_time(epoch_seconds: Any) -> str:
    if not isinstance(epoch_seconds, int | float):
        return "?"
    return datetime.fromtimestamp(epoch_seconds).astimezone().isoformat(timespec="seconds")


class TransferRefused(SignalingError):
    """What a client sent over the data channel is not a file transfer (BAD_TRANSFER)."""


def _header(raw: str | bytes) -> tuple[str, int]:
    try:
        header = json.loads(raw)
        name, size = header["name"], header["size"]
    except (ValueError, TypeError, KeyError) as exc:
        raise TransferRefused("BAD_TRANSFER", f"the first message is not a file header: {exc}") from exc
    if not isinstance(name, str) or not isinstance(size, int) or size < 0:
        raise TransferRefused("BAD_TRANSFER", "the header needs a string name and a size >= 0")
    base = Path(name).name  # never a path outside ``out``
    if base in ("", ".", "..") or "\x00" in base or len(base.encode()) > MAX_NAME_BYTES:
        raise TransferRefused("BAD_TRANSFER", f"the file name must be a plain name of at most {MAX_NAME_BYTES} bytes")
    return base, size


async def _receive_file(link: PeerLink, out: Path) -> None:
    from aiortc.exceptions import InvalidStateError

    from signaling_sdk.webrtc import ChannelClosed

    name, size = _header(await link.recv())
    digest = hashlib.sha256()
    received = 0
    partial = out / f".{name}.part"  # renamed to ``name`` once complete, removed if not
    try:
        with partial.open("wb") as file, _progress() as progress:
            task = progress.add_task(f"receiving {name}", total=size)
            while (chunk := await link.recv()) != "end":
                if not isinstance(chunk, bytes) or received + len(chunk) > size:
                    raise TransferRefused("BAD_TRANSFER", f"{name}: more than the {size} bytes announced, or text")
                file.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                progress.advance(task, len(chunk))
        if received != size:
            raise TransferRefused("BAD_TRANSFER", f"{name}: {received} of the {size} bytes announced")
        partial.replace(out / name)
    finally:
        partial.unlink(missing_ok=True)
    console.print(f"received {name} ({size} bytes), sha256 {digest.hexdigest()}")
    try:
        link.channel.send(json.dumps({"sha256": digest.hexdigest()}))
    except InvalidStateError as exc:
        raise ChannelClosed("CHANNEL_CLOSED", f"{name} kept, but the client left before its hash") from exc
    with contextlib.suppress(TimeoutError):  # the client closes once it has read the hash
        async with asyncio.timeout(REPLY_GRACE_SECONDS):
            await link.closed.wait()


async def run_client(
    args: argparse.Namespace, identity: Identity, room: Room, ice_servers: list[dict[str, Any]] | None
) -> int:
    from signaling_sdk.webrtc import connect

    data = args.file.read_bytes()
    expected = hashlib.sha256(data).hexdigest()
    peer_id = args.peer_id or f"client-{identity.username[:8]}"
    async with await Session.open(args.relay, room, identity, peer_id, role="client", ssl=args.ssl) as session:
        try:
            lease = await book_worker(session, args)
        except AlreadyClaimed:
            console.print(f"[red]worker {args.worker} is busy[/red] (claimed by another client): ALREADY_CLAIMED")
            return 2
        async with lease:  # renewed while the file goes, released after
            worker = lease.peer_id
            console.print(f"claimed {worker} lease {lease.lease_id} until {_local_time(lease.expires_at)}")
            console.print(f"sending {args.file.name} ({len(data)} bytes) to {worker}")
            link = await connect(session, worker, label="file", ice_servers=ice_servers, relay_only=args.relay_only)
            console.print(f"connected to {worker}: {link.describe()}")
            try:
                await _send_file(link.channel, args.file.name, data)
                reply = json.loads(await link.recv())
            finally:
                await link.close()
    if reply.get("sha256") != expected:
        console.print(f"[red]hash mismatch[/red]: sent {expected}, worker wrote {reply.get('sha256')}")
        return 1
    console.print(f"[green]verified[/green]: the worker wrote {args.file.name} with sha256 {expected}")
    return 0


async def book_worker(session: Session, args: argparse.Namespace) -> Lease:
    """A lease on ``--worker`` (AlreadyClaimed if it is busy), else on the first matching
    worker with a free slot: one claimed by another client since it was discovered, or gone,
    gives way to the next; with none free, wait until one joins or frees a slot."""
    if args.worker:
        return await session.claim(args.worker)
    filters: dict[str, Any] = {"role": "worker", "tags": list(args.tag), "available": True}
    if args.min_gpu_memory_mb is not None:
        filters["properties"] = {"gpu_memory_mb": {"$gte": args.min_gpu_memory_mb}}
    while True:
        for peer in await session.discover(filters):
            worker = str(peer["peer_id"])
            try:
                return await session.claim(worker)
            except (AlreadyClaimed, PeerError) as exc:  # booked or gone since discover answered
                busy = "is busy (claimed by another client)" if isinstance(exc, AlreadyClaimed) else "left"
                console.print(f"worker {worker} {busy}; trying the next")
        console.print("no free matching worker in the room yet; waiting for one")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WORKER_WAIT_SECONDS):
                while not _may_free_a_worker(await session.recv()):
                    pass


def _may_free_a_worker(event: dict[str, Any]) -> bool:
    kind = event.get("type")
    return kind == "peer_joined" or (kind == "peer_availability" and event.get("available") is True)


async def _send_file(channel: Any, name: str, data: bytes) -> None:
    drained = asyncio.Event()
    channel.bufferedAmountLowThreshold = HIGH_WATER // 4
    channel.on("bufferedamountlow", drained.set)
    channel.send(json.dumps({"name": name, "size": len(data)}))
    with _progress() as progress:
        task = progress.add_task(f"sending {name}", total=len(data))
        for start in range(0, len(data), CHUNK):
            while channel.bufferedAmount > HIGH_WATER:
                drained.clear()
                await drained.wait()
            channel.send(data[start : start + CHUNK])
            progress.advance(task, min(CHUNK, len(data) - start))
    channel.send("end")


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
    )


if __name__ == "__main__":
    sys.exit(main())

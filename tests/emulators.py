"""The AWS emulators the tests can run on besides the embedded moto server: LocalStack's
DynamoDB through testcontainers, where a Docker engine answers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

LOCALSTACK_IMAGE = "localstack/localstack:3.8.1"


def docker_available() -> bool:
    """Whether a Docker engine answers (not only a client on PATH); never with
    SIGNALING_TEST_EMULATOR=moto."""
    if os.environ.get("SIGNALING_TEST_EMULATOR", "auto") == "moto":
        return False
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    import docker

    try:
        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        client.ping()
    except Exception:
        return False
    finally:
        client.close()
    return True


@contextmanager
def localstack_dynamodb() -> Iterator[str]:
    """LocalStack with DynamoDB only, in a container; its endpoint URL."""
    from testcontainers.localstack import LocalStackContainer

    with LocalStackContainer(image=LOCALSTACK_IMAGE).with_services("dynamodb") as container:
        yield str(container.get_url())

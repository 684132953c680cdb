"""JSON logs through structlog, with request/connection context and secrets redacted.

Code never logs tokens, ID tokens, SDP or candidates in the first place; the
redaction processor is the second line: any event key that names a secret is masked,
whatever logged it (our code, uvicorn, websockets or botocore through stdlib logging).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SENSITIVE_KEYS = frozenset(
    {
        "token",
        "room_token",
        "id_token",
        "idtoken",
        "access_token",
        "refresh_token",
        "authorization",
        "password",
        "sdp",
        "candidate",
        "candidates",
        "credential",
        "secret",
    }
)
REDACTED = "[redacted]"


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = REDACTED
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]


def configure_logging(level: str = "INFO", *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to one JSON-lines stream.

    Called once from each service's ``main()`` (or by the local stack), never at import.
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that would log request bodies or repeat our own access logs.
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "uvicorn.access", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # websockets logs frame contents (tokens, SDP) at DEBUG: never below INFO.
    logging.getLogger("websockets").setLevel(max(logging.INFO, root.level))

    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

"""Structured logging: one event name per line plus its fields; secrets never printed."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from .config import LogConfig

SECRET_KEYS = frozenset({"password", "secret", "token", "api_key", "api_token", "private_key", "authorization", "credentials"})
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def mask_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event:
        if key.lower() in SECRET_KEYS and event[key]:
            event[key] = "********"
    return event


def configure(config: LogConfig, stream: Any = None) -> None:
    """(Re)configure structlog; called at start and on every SIGHUP."""
    stream = stream or sys.stderr
    fmt = config.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )

"""Structured logging: one event name per line plus its fields; secrets never printed.

structlog renders every line: readable on a terminal, JSON lines otherwise (journald reads stderr).
Libraries that log through the standard ``logging`` module (asyncio, aiohttp, aiosmtpd) are routed
through the same processors, so the journal never gets a line in another shape.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import structlog

from .config import LogConfig

MASK = "********"
# A field is secret when its name contains one of these (smtp_password, api_token, dkim_private_key...).
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "private_key", "authorization", "credential")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@functools.lru_cache(maxsize=4096)  # field names are few; every log line asks for each of them
def is_secret(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in SECRET_WORDS)


_SCALARS = (str, int, float, bool, type(None))


def _masked(value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and is_secret(k) and v else _masked(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_masked(v) for v in value)
    return value


def mask_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace the value of every secret-named field, at any depth, before rendering."""
    for key, value in list(event.items()):
        if key != "event":
            event[key] = MASK if is_secret(key) and value else _masked(value)
    return event


def configure(config: LogConfig, stream: Any = None) -> None:
    """(Re)configure structlog and the stdlib root logger; called at start and on every SIGHUP."""
    stream = stream or sys.stderr
    fmt = config.format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secrets,
    ]
    level = _LEVELS[config.level]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_gateway", False):
            root.removeHandler(old)
    handler._gateway = True  # type: ignore[attr-defined] - marks the handler a reload replaces
    root.addHandler(handler)
    root.setLevel(level)

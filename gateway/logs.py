"""Structured logging: one event name per line plus its fields; secrets never printed.

structlog renders every line: readable on a terminal, JSON lines otherwise (journald reads stderr).
Libraries that log through the standard ``logging`` module (asyncio, aiohttp, aiosmtpd) are routed
through the same processors, so the journal never gets a line in another shape.

Cheap at the default level, since every message logs a line as it is queued and one per recipient
delivered: a JSON line is made by one processor (``JsonLine``: level, timestamp, masking, the
JSON) writing to one logger made at configure time, instead of structlog's chain of six processors
and a new PrintLogger per call. The time stamp's date and time are formatted once a second;
``json`` is called through an encoder made once (``json.dumps`` with ``default=`` builds a new one
per call). A "queued" line with its usual eleven fields: 163,000 -> 121,000 instructions
(callgrind), a filtered-out debug call 24,000 -> 20,000; what is left is mostly structlog's own
call path and the JSON encoder (a hand-written encoder for plain fields measured no better).
Loggers are not cached on first use (structlog's ``cache_logger_on_first_use``): a cached logger
would keep the configuration of its first call, and SIGHUP and the tests reconfigure. structlog's
lazy proxy instead assembles a new bound logger for every call (11 of the "queued" line's 37 us,
scripts/bench_cpu.py log_queued); ``get_logger``'s proxy keeps the one it assembled for as long as
structlog's configuration is that same one (the same processor list, wrapper class and logger
factory objects: ``configure`` and structlog's ``capture_logs`` replace them), so the hot path's
modules (submission, delivery) pay it once per configuration.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from typing import Any

import structlog
from structlog import _config as _structlog_config

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
_SCALAR_TYPES = frozenset(_SCALARS)


def _masked(value: Any) -> Any:
    if type(value) in _SCALAR_TYPES or isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and is_secret(k) and v else _masked(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_masked(v) for v in value)
    return value


def mask_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Replace the value of every secret-named field, at any depth, before rendering."""
    for key, value in event.items():   # values replaced in place: the dict's size never changes
        if type(value) in _SCALAR_TYPES:
            if value and key != "event" and is_secret(key):
                event[key] = MASK
        elif key != "event":
            event[key] = MASK if is_secret(key) and value else _masked(value)
    return event


def _json_default(obj: Any) -> Any:
    """What JSON cannot carry: an object's ``__structlog__()``, else its repr (as structlog's renderer)."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


class Stamp:
    """ISO 8601 UTC time stamps, the date and time formatted once a second (as TimeStamper("iso", utc=True))."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:   # two threads may both format it: the same text either way
            self._prefix, self._second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)), second
        return f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"


_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


class JsonLine:
    """The whole processor chain for JSON lines, in one call: the level and a time stamp added,
    secrets masked, an exception formatted, the line encoded (the fields in the order structlog's
    chain gives them: the call's own, event, level, timestamp)."""

    def __init__(self) -> None:
        self.stamp = Stamp()
        self.encode = json.JSONEncoder(default=_json_default).encode

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> str:
        event["level"] = _LEVEL_NAMES.get(name, name)
        event["timestamp"] = self.stamp()
        mask_secrets(logger, name, event)
        if "exc_info" in event or "exception" in event:
            event = structlog.processors.format_exc_info(logger, name, event)
        return self.encode(event)


class Logger:
    """``structlog.get_logger(name)`` that assembles its bound logger once per structlog configuration
    (the module's docstring says why); ``bind`` and every logging method behave as structlog's."""

    __slots__ = ("_args", "_bound", "_made_for")

    def __init__(self, *args: Any) -> None:
        self._args = args
        self._bound: Any = None
        self._made_for: tuple[Any, Any, Any, Any] | None = None

    def _logger(self) -> Any:
        c = _structlog_config._CONFIG
        made = self._made_for
        if (made is None or made[0] is not c.default_processors or made[1] is not c.default_wrapper_class
                or made[2] is not c.logger_factory or made[3] is not c.default_context_class):
            self._bound = structlog.get_logger(*self._args).bind()
            self._made_for = (c.default_processors, c.default_wrapper_class, c.logger_factory, c.default_context_class)
        return self._bound

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._logger(), name)


def get_logger(*args: Any) -> Logger:
    return Logger(*args)


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
    processors: list[Any]
    if fmt == "console":
        processors = [*shared, structlog.processors.format_exc_info, renderer]
    else:
        processors = [structlog.contextvars.merge_contextvars, JsonLine()]
    printer = structlog.PrintLogger(file=stream)   # one writer for every logger (it locks per write)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_args: printer,
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

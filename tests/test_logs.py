"""Logging: JSON lines off a terminal, every line with an event, secrets never printed."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from gateway import logs
from gateway.config import LogConfig


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stream():
    out = io.StringIO()
    yield out
    # Leave structlog and the root logger as the other tests expect them.
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_gateway", False):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_event_level_and_time(stream):
    logs.configure(LogConfig(format="auto"), stream)
    structlog.get_logger("t").info("message_queued", queue_id="q1", recipients=3)
    (line,) = lines(stream)
    assert line["event"] == "message_queued" and line["queue_id"] == "q1" and line["recipients"] == 3
    assert line["level"] == "info" and line["timestamp"].endswith("Z")


def test_secrets_never_appear(stream):
    logs.configure(LogConfig(format="json"), stream)
    log = structlog.get_logger("t")
    log.info("auth_attempt", user="app1", password="hunter2-secret")
    log.info("connector_saved", smtp_password="pw-1", api_token="tok-2", config={"relay": {"api_key": "key-3", "host": "h"}},
             headers=[{"Authorization": "Bearer tok-4"}])
    log.info("nothing_secret", password="")
    text = stream.getvalue()
    for secret in ("hunter2-secret", "pw-1", "tok-2", "key-3", "tok-4"):
        assert secret not in text
    first, second, third = lines(stream)
    assert first["password"] == "********" and first["user"] == "app1"
    assert second["config"]["relay"] == {"api_key": "********", "host": "h"}
    assert second["headers"] == [{"Authorization": "********"}]
    assert third["password"] == ""  # an empty value says "none set", which is not a secret


def test_level_is_configurable(stream):
    logs.configure(LogConfig(level="warning", format="json"), stream)
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_stdlib_logging_comes_out_the_same_way(stream):
    logs.configure(LogConfig(format="json"), stream)
    logging.getLogger("asyncio").error("Task exception was never retrieved password=%s", "x")
    (line,) = lines(stream)
    assert line["event"].startswith("Task exception was never retrieved")
    assert line["logger"] == "asyncio" and line["level"] == "error"
    # Reconfiguring (SIGHUP) replaces our handler instead of adding a second one.
    logs.configure(LogConfig(format="json"), stream)
    assert sum(getattr(h, "_gateway", False) for h in logging.getLogger().handlers) == 1


def test_console_on_a_terminal():
    tty = Tty()
    try:
        logs.configure(LogConfig(format="auto"), tty)
        structlog.get_logger("t").info("daemon_started", pid=1, password="pw")
        text = tty.getvalue()
        assert "daemon_started" in text and "pid" in text and "pw" not in text.replace("password", "")
        with pytest.raises(ValueError):
            json.loads(text)
    finally:
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_gateway", False):
                root.removeHandler(handler)


def test_json_line_fields_time_stamp_and_exceptions(stream):
    """The one-call JSON processor writes what structlog's chain wrote: the call's fields, event,
    level, an ISO UTC time stamp; objects JSON cannot carry as their repr; exceptions as text."""
    import datetime
    import re
    from pathlib import PurePosixPath

    logs.configure(LogConfig(format="json"), stream)
    log = structlog.get_logger("t")
    log.info("stored", path=PurePosixPath("/a"), raw=b"\x00", nested={"token": "t0k", "n": [1, 2.5]})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", step="x")
    log.warning("careful")
    stored, failed, careful = lines(stream)
    assert list(stored) == ["path", "raw", "nested", "event", "level", "timestamp"]
    assert stored["path"] == "PurePosixPath('/a')" and stored["raw"] == "b'\\x00'"
    assert stored["nested"] == {"token": "********", "n": [1, 2.5]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stored["timestamp"]), stored["timestamp"]
    at = datetime.datetime.strptime(stored["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - at).total_seconds()) < 60
    assert failed["level"] == "error" and "ValueError: boom" in failed["exception"] and failed["step"] == "x"
    assert careful["level"] == "warning"


def test_a_kept_logger_follows_every_reconfiguration(stream):
    """logs.get_logger keeps its bound logger only while structlog's configuration is the same."""
    from structlog.testing import capture_logs

    log = logs.get_logger("t")
    logs.configure(LogConfig(format="json"), stream)
    log.info("first", n=1)
    kept = log._logger()
    log.info("second", n=2)
    assert log._logger() is kept                       # the same configuration: assembled once
    logs.configure(LogConfig(level="warning", format="json"), stream)   # SIGHUP with a new level
    log.info("quiet")
    log.warning("loud")
    with capture_logs() as captured:                   # the tests' capture replaces the processors
        log.warning("captured", n=3)
    log.warning("after")
    assert [line["event"] for line in lines(stream)] == ["first", "second", "loud", "after"]
    assert captured == [{"event": "captured", "n": 3, "log_level": "warning"}]
    assert log.bind(k="v")._context == {"k": "v"} and log.is_enabled_for(logging.WARNING)

"""The CLI's side of the admin socket: blocking, small, and quick to import."""

from __future__ import annotations

import itertools
import json
import socket
import struct
from pathlib import Path
from typing import Any

from ..errors import AdminClientError


class DaemonNotRunning(AdminClientError):
    def __init__(self, path: Path, reason: str):
        self.path = path
        super().__init__(f"the daemon is not running: nothing answers at {path} ({reason})")


class AdminError(AdminClientError):
    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(message)


def request_line(req_id: int, method: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"id": req_id, "method": method, "params": params}, separators=(",", ":")).encode() + b"\n"


def result_of(raw: bytes) -> Any:
    """The result in one reply line; AdminError for an error reply, a malformed one or none."""
    if not raw:
        raise AdminError("disconnected", "the daemon closed the connection")
    try:
        reply = json.loads(raw)
    except ValueError:
        raise AdminError("bad_reply", f"the daemon sent a malformed reply: {raw[:200]!r}") from None
    if not isinstance(reply, dict):
        raise AdminError("bad_reply", f"the daemon sent a malformed reply: {raw[:200]!r}")
    if "error" in reply:
        raise AdminError(reply["error"].get("code", "error"), reply["error"].get("message", ""))
    return reply.get("result")


class AdminClient:
    def __init__(self, path: Path, timeout: float = 60.0):
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._ids = itertools.count(1)
        self.peer_pid: int | None = None

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except FileNotFoundError:
            sock.close()
            raise DaemonNotRunning(self.path, "no such socket") from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonNotRunning(self.path, "connection refused") from None
        except PermissionError:
            sock.close()
            # It may well be running: say what is actually wrong.
            raise AdminError(
                "permission", f"cannot connect to {self.path}: permission denied; run as the gateway user or a member of its group"
            ) from None
        self._sock = sock
        self._file = sock.makefile("rb")
        try:  # who listens there: the kernel's word (Linux), for "acted on the daemon ... (pid N)"
            self.peer_pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        except (AttributeError, OSError):
            self.peer_pid = None

    def call(self, method: str, **params: Any) -> Any:
        if self._sock is None:
            self.connect()
        req_id = next(self._ids)
        self._sock.sendall(request_line(req_id, method, params))
        return result_of(self._file.readline())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

"""Where the daemon keeps its state and its admin socket.

State directory: --state-dir, else $STATE_DIRECTORY (set by systemd's StateDirectory=), else ./var.
Admin socket: admin.socket from the config, else $RUNTIME_DIRECTORY/admin.sock (systemd's
RuntimeDirectory=), else <state dir>/admin.sock. The CLI resolves the socket the same way, and
$GATEWAY_SOCKET or --socket override it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    socket: Path

    @property
    def database(self) -> Path:
        return self.state_dir / "gateway.db"

    @property
    def lock(self) -> Path:
        return self.state_dir / "gateway.lock"

    @property
    def attachments_dir(self) -> Path:
        """Content-addressed attachment files of received mail (gateway/inbound/attachments.py)."""
        return self.state_dir / "attachments"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"


def state_dir_from(option: str | os.PathLike | None) -> Path:
    # systemd may list several directories separated by ':'; the first one is ours.
    raw = option or (os.environ.get("STATE_DIRECTORY") or "").split(":")[0] or "var"
    return Path(raw).absolute()


def resolve_paths(config: Config, state_dir_option: str | os.PathLike | None = None) -> Paths:
    state_dir = state_dir_from(state_dir_option)
    if config.admin.socket:
        socket = Path(config.admin.socket)
    elif os.environ.get("RUNTIME_DIRECTORY"):
        socket = Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "admin.sock"
    else:
        socket = state_dir / "admin.sock"
    return Paths(state_dir=state_dir, socket=socket.absolute())

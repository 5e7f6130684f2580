"""Who this process is among the gateway processes that share one store: its node and its token.

A *node* is one state directory's daemon (with its worker processes): by default its id is made
once, at the first start, and kept in ``<state dir>/node-id`` (the host name and 8 random hex
digits), so two daemons on one host, or a host renamed, never share one; ``daemon.node_id`` names it
instead. A *token* names one process: ``<node>:<pid>:<random>``. Claims and job leases carry the
token, so a node at its start can drop what its own dead processes held (the state directory's lock
says none of them is alive) and a parent what one dead worker held, without touching other nodes'.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

from .errors import StartupError

NODE_FILE = "node-id"
# What a node id may be: no ':' (it ends the token's node part), printable, short.
NODE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def node_id(configured: str, state_dir: Path) -> str:
    """The configured id, else the state directory's (made and kept there at the first start)."""
    if configured:
        return configured
    path = state_dir / NODE_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    except OSError as exc:
        raise StartupError(f"cannot read {path}: {exc.strerror}") from None
    if found:
        if not NODE_ID.match(found):
            raise StartupError(f"{path} holds no usable node id (letters, digits, '.', '_', '-'; at most 64)")
        return found
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "node"
    made = f"{host}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{NODE_FILE}.{os.getpid()}")
    try:
        tmp.write_text(made + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StartupError(f"cannot write {path}: {exc.strerror}") from None
    return made


def token(node: str) -> str:
    """A new token for this process."""
    return f"{process_prefix(node, os.getpid())}{secrets.token_hex(4)}"


def node_prefix(node: str) -> str:
    """What every token of this node starts with."""
    return f"{node}:"


def process_prefix(node: str, pid: int) -> str:
    """What every token of one process of this node starts with."""
    return f"{node}:{pid}:"


def default_node() -> str:
    """The id of a process with no state directory of its own (tools, tests): its host name."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "node"

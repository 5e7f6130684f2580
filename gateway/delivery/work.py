"""One work item: the claimed recipients of one message that go to one destination together.

The dispatcher builds it from claimed rows, the signer fills ``data``, a lane sends it, and the
recorder writes its outcomes. What the remote answers is kept per recipient as it arrives
(``results``), so a time budget that runs out, a shutdown or our own failure halfway through still
records the recipients the remote already accepted as delivered (never sent again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..crlf import to_crlf
from ..feedback.arf import feedback_id
from ..unsubscribe.headers import with_fields
from .dkim import Signer
from .reply import Reply
from .routes import Route


@dataclass(eq=False)
class Work:
    dest: tuple
    message: dict[str, Any]                 # the envelope and size from the claim (no body)
    rcpts: list[dict[str, Any]]             # claimed recipient rows
    route: Route
    data: bytes | None = None               # what goes on the wire (signed), prepared off the loop
    error: BaseException | None = None      # preparing it failed (e.g. a DKIM key): the lane holds the message
    budgeted: int = 0                       # bytes taken from the memory budget for it (given back once recorded)
    results: dict[str, Reply] = field(default_factory=dict)   # rcpt -> the remote's answer, as it arrived
    recorded: set[int] = field(default_factory=set)           # recipient ids whose outcome is already written
    started: float = 0.0                    # when its attempt began (monotonic)
    writes: list[Any] = field(default_factory=list)           # its record tasks, in order
    finished: bool = False                  # its claims and budget are accounted for (exactly once)
    fields: bytes = b""                     # header fields for this copy only (List-Unsubscribe: one recipient)
    verp_key: tuple[int, bytes] | None = None   # the link key its VERP return paths are signed with (gateway/verp.py)

    @property
    def size(self) -> int:
        return int(self.message.get("size") or 0)

    @property
    def queue_id(self) -> str:
        return self.message["queue_id"]

    def rows_left(self) -> list[dict[str, Any]]:
        """Recipients whose outcome is not written yet."""
        return [r for r in self.rcpts if r["id"] not in self.recorded]


# --------------------------------------------------------------------------- the bytes to send

# Messages signed per call to the signing thread: one hand-off per chunk, and lanes start on the
# first chunk while the next is signed. Also the batch in which bodies are loaded.
SIGN_CHUNK = 32


def prepare(work: Work, body: bytes, signer: Signer) -> bytes:
    """The bytes to send: the copy's own fields (List-Unsubscribe, replacing the app's), Reply-To a
    relay connector wants, our Feedback-ID (unless the app set one: complaints find their tenant by
    it, gateway/feedback/arf.py), then DKIM (not for the SendGrid API), which signs them all."""
    route, data = work.route, body
    if work.fields:
        data = with_fields(to_crlf(data), work.fields)
    connector = route.connector
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    if connector is not None and connector.settings.get("reply_to") and b"\nreply-to:" not in head:
        data = f"Reply-To: {connector.settings['reply_to']}\r\n".encode() + data
    if not head.startswith(b"feedback-id:") and b"\nfeedback-id:" not in head:
        data = f"Feedback-ID: {feedback_id(work.message['tenant_id'], work.message['usecase_id'])}\r\n".encode() + data
    if route.kind != "sendgrid":
        data = signer.sign(data, route.keys)
    return data


def prepare_all(works: list[Work], bodies: dict[int, bytes], signer: Signer) -> None:
    """Fill ``data`` (or ``error``) of each work item; runs on the signing thread."""
    for work in works:
        if work.route.kind == "problem":
            continue
        body = bodies.get(work.message["id"])
        if body is None:
            work.error = LookupError("the message body is gone from the store")
            continue
        try:
            work.data = prepare(work, body, signer)
        except Exception as exc:  # noqa: BLE001 - handed to the lane, which holds the message
            work.error = exc

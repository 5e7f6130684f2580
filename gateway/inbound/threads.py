"""Thread resolution: which conversation an inbound message belongs to (pure).

    resolve(message_id, in_reply_to, references, tenant_id=, usecase_id=, records=) -> Thread

The candidates are the In-Reply-To ids, then the References newest first (the last one is the
message answered; clients that strip References still send In-Reply-To). ``records`` are what
``store.threads.known`` found for those ids in ``message_ids``, outbound and inbound, any tenant.
The first candidate with a record decides:

    a record of this tenant and use case      -> attached: its thread, parent = that id
    a record of this tenant, other use case   -> not attached: new thread, flag cross_usecase_parent
    records of other tenants only             -> not attached: new thread, flag cross_tenant_parent

A reply is never attached to a conversation it could read its way into by naming a Message-ID
(confused deputy): a parent of another use case or tenant starts a new conversation, and the search
stops there (a further, older candidate of our own would be a guess about what the sender meant).
A new thread is named by the message's own Message-ID, unless ``records`` hold that id for
another use case of the tenant (a sender reusing a thread root it saw): then by ``fresh``.
No candidate known -> a new thread started by the message itself (a reply to mail we never saw,
or whose record aged out). The ``refused`` detail names the other tenant for the operator's log;
it never goes into what the tenant sees (flag and event only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CROSS_USECASE = "cross_usecase_parent"
CROSS_TENANT = "cross_tenant_parent"
MAX_REFERENCES = 40   # newest References looked at: a chain longer than this is answered by its tail


@dataclass(frozen=True)
class Thread:
    thread_id: str
    parent: str = ""                  # the Message-ID answered ('' when none attached)
    flag: str = ""                    # CROSS_USECASE / CROSS_TENANT when a parent was refused
    refused: str = ""                 # the refused parent's Message-ID
    refused_detail: Mapping[str, Any] | None = None   # operator log only


def candidates(in_reply_to: Sequence[str], references: Sequence[str]) -> list[str]:
    """In-Reply-To first, then References newest first, each once."""
    ordered = list(in_reply_to) + list(reversed(list(references)[-MAX_REFERENCES:]))
    return list(dict.fromkeys(c for c in ordered if c))


def resolve(message_id: str, in_reply_to: Sequence[str], references: Sequence[str], *, tenant_id: int,
            usecase_id: int | None, records: Iterable[Mapping[str, Any]], fresh: str = "") -> Thread:
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_id.setdefault(r["message_id"], []).append(r)
    new_id = message_id
    if fresh and any(r["tenant_id"] == tenant_id and r["usecase_id"] != usecase_id for r in by_id.get(message_id, ())):
        # The message's own id is already another use case's (a thread root is its Message-ID,
        # which every recipient sees): a new thread under it would join theirs. Another tenant's
        # record changes nothing: every thread read is scoped to the tenant, and a different id
        # would tell the sender that the id is known here.
        new_id = fresh
    for candidate in candidates(in_reply_to, references):
        if candidate == message_id:
            continue   # a message naming itself (a resent copy) answers nothing
        found = by_id.get(candidate)
        if not found:
            continue
        ours = [r for r in found if r["tenant_id"] == tenant_id]
        if ours:
            same = [r for r in ours if r["usecase_id"] == usecase_id]
            if same:
                return Thread(thread_id=same[0]["thread_id"], parent=candidate)
            return Thread(thread_id=new_id, flag=CROSS_USECASE, refused=candidate,
                          refused_detail={"usecase_id": ours[0]["usecase_id"]})
        return Thread(thread_id=new_id, flag=CROSS_TENANT, refused=candidate,
                      refused_detail={"tenant_id": found[0]["tenant_id"]})
    return Thread(thread_id=new_id)

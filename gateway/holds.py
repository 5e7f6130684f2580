"""Why a queued recipient waits instead of being tried: the hold policy, as plain functions on facts.

The store reads the facts inside its transaction (is the message held by an operator, which pauses
exist) and asks these functions what follows; no SQL decides it. The rules:

    an operator hold outranks a pause     `queue release` lifts it, resuming a pause does not
    any covering pause holds              global, the recipient's tenant, or its use case
    otherwise                             the recipient may go ('' : no hold)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

OPERATOR = "operator"
PAUSED = "paused"


@dataclass(frozen=True)
class Pause:
    scope: str                 # global | tenant | usecase
    tenant_id: int | None
    usecase_id: int | None


def covering(pauses: Iterable[Pause], tenant_id: int, usecase_id: int) -> list[str]:
    """The scopes of the pauses that cover a recipient of this tenant and use case."""
    return [p.scope for p in pauses
            if p.scope == "global" or (p.scope == "tenant" and p.tenant_id == tenant_id)
            or (p.scope == "usecase" and p.usecase_id == usecase_id)]


def hold_reason(*, operator_held: bool, pauses: Iterable[str]) -> str:
    """'operator', 'paused' or '' (free to go), for a recipient that would otherwise be due."""
    if operator_held:
        return OPERATOR
    if any(True for _ in pauses):
        return PAUSED
    return ""

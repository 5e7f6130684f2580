"""What the API's endpoint classes get, and the list of them the daemon serves.

An endpoint calls the same service functions the CLI calls over the admin socket, by their admin
method names (``deps.methods["domain.show"](domain=..., tenant=call.caller.tenant)``): one rule, two
front ends. It reads the store directly only for what no service offers yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..store import Store

if TYPE_CHECKING:
    from ..submission.submit import Submitter


@dataclass
class Deps:
    store: Store
    methods: dict[str, Callable[..., Any]]      # admin method name -> the bound service coroutine
    config: Callable[[], Config]
    sending: Submitter | None = None            # submission's MAIL/RCPT/DATA rules and queue (POST /v1/messages)


class Endpoints:
    """Base of every endpoint class: what its routes call through."""

    def __init__(self, deps: Deps):
        self.deps = deps


def endpoints(deps: Deps) -> list[object]:
    """Every endpoint object; their ``@api_route`` methods are the API (routes.collect)."""
    from .addresses import AddressEndpoints
    from .connectors import ConnectorEndpoints
    from .domains import DomainEndpoints
    from .events import EventEndpoints
    from .inbox import InboxEndpoints, ThreadEndpoints
    from .messages import MessageEndpoints
    from .sending import SendEndpoints
    from .stats import StatsEndpoints
    from .suppressions import SuppressionEndpoints
    from .tenant import ApiKeyEndpoints, TenantEndpoints
    from .usecases import UsecaseEndpoints
    from .webhooks import ForwardEndpoints, WebhookEndpoints

    return [TenantEndpoints(deps), ApiKeyEndpoints(deps), DomainEndpoints(deps), UsecaseEndpoints(deps), AddressEndpoints(deps),
            ConnectorEndpoints(deps), SuppressionEndpoints(deps), WebhookEndpoints(deps), ForwardEndpoints(deps), SendEndpoints(deps),
            MessageEndpoints(deps), EventEndpoints(deps), StatsEndpoints(deps), InboxEndpoints(deps), ThreadEndpoints(deps)]

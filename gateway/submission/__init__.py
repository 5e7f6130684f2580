"""Authenticated submission: apps hand the gateway their mail here (see server.py for the flow).

``build`` is what the daemon calls; tests build the pieces directly with fakes for
``authenticate`` and ``context``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..budget import ByteBudget
from ..config import Config
from ..metrics import Metrics
from ..paths import Paths
from .handler import Authenticate, CheckRecipient, Context, Lineage, Submit, SubmissionHandler
from .server import SubmissionServer, client_tls_context
from .tls import TlsContext

if TYPE_CHECKING:
    from ..store.limits import Limits


def build(config: Config, *, paths: Paths, authenticate: Authenticate, context: Context, submit: Submit,
          monthly_count: Callable[[int], Awaitable[int]], metrics: Metrics,
          on_queued: Callable[[str], Any] | None = None, budget: ByteBudget | None = None,
          check_recipient: CheckRecipient | None = None, lineage: Lineage | None = None,
          limits: Limits | None = None) -> SubmissionServer:
    """The submission listeners. ``budget`` is the daemon's in-flight memory budget (shared with
    delivery); without one (tests) the listener gets its own of ``daemon.memory_budget``. ``limits``
    (the store's): rate limits and AUTH cool-downs shared with every process and node on the store."""
    sub = config.submission
    handler = SubmissionHandler(sub, hostname=config.daemon.hostname, authenticate=authenticate, context=context,
                                submit=submit, monthly_count=monthly_count, lifetime=config.queue.lifetime,
                                metrics=metrics, on_queued=on_queued, check_recipient=check_recipient,
                                lineage=lineage, limits=limits)
    tls = TlsContext(sub.tls_cert, sub.tls_key, tls_dir=paths.tls_dir, hostname=config.daemon.hostname)
    budget = budget if budget is not None else ByteBudget(config.daemon.memory_budget)
    return SubmissionServer(sub, handler=handler, tls=tls, hostname=config.daemon.hostname, budget=budget, metrics=metrics)


__all__ = ["build", "SubmissionServer", "SubmissionHandler", "TlsContext", "client_tls_context"]

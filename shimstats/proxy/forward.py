"""The proxy's ``containerd.task.v2.Task`` in asyncio: every call forwarded to the inner shim, Stats from the
agent. The serving process runs the threaded form (shimstats.proxy.relay); both share their rules
(shimstats.proxy.fallback, shimstats.proxy.options, shimstats.stats_answer).

Forwarding keeps the call as containerd made it: the payload bytes go through untouched, the metadata
(containerd's namespace among it) travels along, the time left before the caller's deadline becomes the
inner call's timeout (no deadline stays no deadline: Wait blocks until the task exits), and the inner
shim's status comes back unchanged (code, message, details). Two calls are looked at:

* Stats is answered from the guest agent through the adapter core (StatsHandler). When the agent cannot be
  reached (UNAVAILABLE) the fallback policy decides: ``inner`` forwards the call to the inner shim,
  ``error`` returns the agent's status; either way one warning per container until the agent answers for
  it again. Any other agent status (NOT_FOUND for an unknown id, DEADLINE_EXCEEDED...) is the answer.
* Create carries the runtime options again; options naming the proxy's own config file are swapped for
  what the inner shim should get (shimstats.proxy.options), everything else in the request is untouched.

The Stats machinery (adapter, agent client, translation core) is loaded on the first Stats, not when the
serving process starts: containerd's first calls (Create, Start) wait for the server to accept them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from shimstats.proxy.fallback import StatsFallback, stats_request_id
from shimstats.proxy.settings import TASK_V2_SERVICE, Fallback
from shimstats.ttrpc import CallContext, Client, Code, Handler, Server, TtrpcError
from shimstats.wire import TASK_METHODS

if TYPE_CHECKING:
    from shimstats.adapter import StatsHandler

__all__ = ["TASK_METHODS", "ProxyService"]

log = logging.getLogger("shimstats.proxy")

TASK_SERVICE = TASK_V2_SERVICE


def agent_stats(agent: str, metrics_format: str, *, timeout: float, namespace: str) -> StatsHandler:
    """A StatsHandler asking the guest agent at ``agent`` (an address or a kata:// spec); imports the
    adapter, discovery and the translation core."""
    from shimstats.adapter import StatsHandler
    from shimstats.discovery import agent_client
    from shimstats.translate import resolve_format

    client = agent_client(agent, default_timeout=timeout)
    return StatsHandler(client, resolve_format(metrics_format), default_namespace=namespace)


class ProxyService:
    """Task handlers for the proxy: ``register`` them on a Server."""

    def __init__(
        self,
        inner: Client,
        stats: StatsHandler | None = None,
        *,
        make_stats: Callable[[], StatsHandler] | None = None,
        fallback: Fallback = "inner",
        inner_service: str = TASK_SERVICE,
        own_config: str = "",
        inner_config_path: str = "",
    ) -> None:
        self.inner = inner
        if (stats is None) == (make_stats is None):
            raise ValueError("give either stats or make_stats")
        self._stats = stats
        self._make_stats = make_stats
        self.fallback = fallback
        self._fallback = StatsFallback(fallback)
        self.inner_service = inner_service
        self.own_config = own_config
        self.inner_config_path = inner_config_path

    @property
    def stats_handler(self) -> StatsHandler:
        """The Stats answerer: ``stats`` as given, or made by it on first use."""
        if self._stats is None:
            assert self._make_stats is not None
            self._stats = self._make_stats()
            log.debug("Stats machinery loaded", extra={"format": self._stats.output})
        return self._stats

    async def close(self) -> None:
        """Close the agent client, when Stats ever made one."""
        if self._stats is not None:
            await self._stats.agent.close()

    def handlers(self) -> dict[str, Handler]:
        """A handler for every Task method."""
        table: dict[str, Handler] = {name: self._forwarder(name) for name in TASK_METHODS}
        table["Stats"] = self.stats
        table["Create"] = self.create
        return table

    def register(self, server: Server) -> None:
        """Serve the Task service on ``server``."""
        server.register(TASK_SERVICE, self.handlers())

    def _forwarder(self, method: str) -> Handler:
        async def forward_call(payload: bytes, ctx: CallContext) -> bytes:
            return await self.forward(method, payload, ctx)

        return forward_call

    async def forward(self, method: str, payload: bytes, ctx: CallContext) -> bytes:
        """Send ``payload`` to the inner shim's ``method`` with the caller's metadata and remaining time."""
        timeout = None
        if ctx.deadline is not None:
            timeout = ctx.deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                raise TtrpcError(Code.DEADLINE_EXCEEDED, f"{TASK_SERVICE}/{method}: the deadline has passed")
        return await self.inner.call(
            self.inner_service, method, payload, timeout=timeout, metadata=ctx.metadata
        )

    async def create(self, payload: bytes, ctx: CallContext) -> bytes:
        """Create, with the proxy's own runtime options replaced by the inner shim's (see module doc)."""
        if self.own_config:
            from shimstats.proxy.options import (
                inner_create,  # protobuf descriptors: only when options are ours
            )

            payload = inner_create(payload, self.own_config, self.inner_config_path)
        return await self.forward("Create", payload, ctx)

    async def stats(self, payload: bytes, ctx: CallContext) -> bytes:
        """Stats from the guest agent; on UNAVAILABLE, the fallback policy (module doc)."""
        container_id = stats_request_id(payload)
        try:
            response = await self.stats_handler.stats(container_id, deadline=ctx.deadline)
        except TtrpcError as exc:
            if not self._fallback.forward_instead(container_id, exc):
                raise
            return await self.forward("Stats", payload, ctx)
        self._fallback.answered(container_id)
        return response.SerializeToString()

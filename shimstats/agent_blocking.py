"""The guest agent's StatsContainer over blocking sockets, for the proxy's threaded serving process.

The same rules as the asyncio AgentClient (``agent_client``; its module doc has the statuses): the agent's
status mapped for containerd (``agent_errors.map_agent_error``), failed dials backed off and logged once per
streak (``DialHealth``), a call whose idle connection died since (the agent restarted) sent once more on a
fresh one (StatsContainer only reads). Calls in parallel each get a connection (``ClientPool``). A
``kata://`` spec asks the sandbox's Kata shim where the agent is at every dial (``sandboxes``), as
KataAgentClient does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shimstats._proto.kata import agent_pb2
from shimstats.agent_errors import Backoff, DialHealth, decode_stats, map_agent_error
from shimstats.kata_spec import KataSpec, parse_kata_spec
from shimstats.sandboxes import (
    DiscoveryError,
    dial_address,
    find_sandbox,
    first_shim_socket,
    lookup_failed,
    read_agent_url_blocking,
)
from shimstats.ttrpc.address import Address, parse_address
from shimstats.ttrpc.pool import ClientPool
from shimstats.ttrpc.status import TtrpcError
from shimstats.ttrpc.sync_client import SyncClient
from shimstats.wire import AGENT_SERVICE

__all__ = ["BlockingAgentClient", "blocking_agent_client"]


class BlockingAgentClient:
    """StatsContainer against one agent; ``target`` says where to dial each time (default: ``address``)."""

    def __init__(
        self,
        address: Address,
        *,
        target: Callable[[], Address] | None = None,
        connect_timeout: float = 2.0,
        default_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.address = address
        self._target = target
        self.connect_timeout = connect_timeout
        self.default_timeout = default_timeout
        self._health = DialHealth(backoff if backoff is not None else Backoff())
        self._pool = ClientPool(self._dial, retry_lost=True)

    def _dial(self) -> SyncClient:
        self._health.check(time.monotonic())
        try:
            if self._target is not None:
                self.address = self._target()
            client = SyncClient(self.address, timeout=None, connect_timeout=self.connect_timeout)
        except OSError as exc:  # TransportError is a ConnectionError; its message names the address
            raise self._health.failed(exc, time.monotonic(), str(self.address)) from None
        self._health.succeeded(str(self.address))
        return client

    def stats_container(
        self, container_id: str, *, deadline: float | None = None
    ) -> agent_pb2.StatsContainerResponse:
        """The agent's stats for one container; ``deadline`` in ``time.monotonic()`` units, else the call is
        bounded by ``default_timeout``."""
        timeout = self.default_timeout if deadline is None else deadline - time.monotonic()
        request = agent_pb2.StatsContainerRequest(container_id=container_id).SerializeToString()
        try:
            raw = self._pool.call(AGENT_SERVICE, "StatsContainer", request, timeout=timeout)
        except TtrpcError as exc:
            raise map_agent_error(exc, container_id, str(self.address)) from None
        return decode_stats(raw, container_id, str(self.address))

    def close(self) -> None:
        self._pool.close()


def _kata_target(spec: KataSpec, timeout: float) -> Callable[[], Address]:
    def lookup() -> Address:
        try:
            sandbox = find_sandbox(spec.sandbox_id, spec.roots)
            url = read_agent_url_blocking(sandbox.socket, timeout)
            return dial_address(url, spec.port, socket=sandbox.socket)
        except DiscoveryError as exc:
            raise lookup_failed(spec.sandbox_id, exc) from None

    return lookup


def blocking_agent_client(
    spec: str, *, connect_timeout: float = 2.0, default_timeout: float = 10.0
) -> BlockingAgentClient:
    """A BlockingAgentClient for a proxy agent setting: a plain address, or a ``kata://`` spec."""
    kata = parse_kata_spec(spec)
    if kata is None:
        address = parse_address(spec)
        target = None
    else:
        address = Address("unix", path=first_shim_socket(kata))
        target = _kata_target(kata, connect_timeout)
    return BlockingAgentClient(
        address, target=target, connect_timeout=connect_timeout, default_timeout=default_timeout
    )

"""The host's connection to a guest agent (ours or kata-agent): StatsContainer with honest statuses.

One ttrpc connection is dialled on first use and shared by every concurrent call. When it drops (the agent
restarted, the VM paused), the next call dials again; failed dials back off exponentially, and a call that
arrives while backing off fails at once instead of piling up dials against a dead socket. A call whose
connection is found dead under it is retried once on a fresh connection: StatsContainer only reads, so
sending it twice is harmless, and an agent restart between two scrapes then costs no failed call.

Deadlines: the caller's deadline (event-loop time) bounds the whole call, dialling included, and what is
left of it travels to the agent as the request's timeout_nano. An expired call gives up its own stream only:
the connection, and every other call in flight on it, carries on (the ttrpc client closes it only when its
byte stream is stuck mid-frame, which no later answer could get through).

Statuses, as containerd needs them (docs/spec/ttrpc.md §5, docs/spec/metrics.md §4.2, §5.3):
* the agent's own code is kept (NOT_FOUND, INVALID_ARGUMENT, INTERNAL, ...), the message gains the container
  id and the agent's address;
* except kata-agent's unknown-container answer, INVALID_ARGUMENT ``invalid container id``, which becomes
  NOT_FOUND: containerd skips a NOT_FOUND task quietly and logs others. kata-agent 2.4 and later send it
  with quotes (``"invalid container id"``: its ttrpc_error! macro Debug-formats the text); 2.0 to 2.3 send it
  bare (they call ttrpc's get_rpc_status directly; kata-containers 2.3.0 src/agent/src/rpc.rs,
  stats_container);
* an agent that cannot be reached, or whose connection is lost, is UNAVAILABLE naming the address;
* an agent that does not answer before the deadline is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, Union

from google.protobuf.message import DecodeError, Message

from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats._proto.shimstats.agent.v1 import diagnostics_pb2, resources_pb2
from shimstats.agent_errors import (
    KATA_UNKNOWN_CONTAINER,
    Backoff,
    DialHealth,
    decode_stats,
    map_agent_error,
    service_unsupported,
)
from shimstats.ttrpc import Address, Client, Code, TtrpcError, parse_address, wait_until
from shimstats.wire import AGENT_SERVICE, DIAGNOSTICS_SERVICE, HEALTH_SERVICE, RESOURCES_SERVICE

__all__ = [
    "AGENT_SERVICE",
    "DIAGNOSTICS_SERVICE",
    "HEALTH_SERVICE",
    "KATA_UNKNOWN_CONTAINER",
    "RESOURCES_SERVICE",
    "AgentClient",
    "Backoff",
    "map_agent_error",
    "service_unsupported",
]

log = logging.getLogger("shimstats.agent")
AnswerT = TypeVar("AnswerT", bound=Message)
"""The protobuf message type a call answers with."""
StatsOutcome = Union[agent_pb2.StatsContainerResponse, Exception]
"""What ``AgentClient.start_stats`` hands its callback: the answer, or the error (a TtrpcError, or a bug)."""


class AgentClient:
    """StatsContainer and Health/Check against one agent address, over one shared, self-healing connection.

    Use it from one event loop (it may be created outside it); ``close`` it when done.
    """

    def __init__(
        self,
        address: Address | str,
        *,
        connect_timeout: float = 2.0,
        default_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.address = address if isinstance(address, Address) else parse_address(address)
        self.connect_timeout = connect_timeout
        self.default_timeout = default_timeout
        self.backoff = backoff if backoff is not None else Backoff()
        self.dials = 0
        """Successful dials so far: 1 while the first connection lives (for logs and tests)."""
        self._client: Client | None = None
        self._lock: asyncio.Lock | None = None  # made in the loop that uses it (Python 3.9 binds at creation)
        self._health = DialHealth(self.backoff)
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while a connection is open (it may still turn out to be lost at the next call)."""
        return self._client is not None and not self._client.closed

    async def stats_container(
        self, container_id: str, *, deadline: float | None = None
    ) -> agent_pb2.StatsContainerResponse:
        """The agent's stats for one container; TtrpcError with the status described in the module doc.

        ``deadline`` is in ``loop.time()`` units; without one the call is bounded by ``default_timeout``.
        """
        deadline, expired, request = self._stats_request(container_id, deadline)
        try:
            raw = await self._call(AGENT_SERVICE, "StatsContainer", request, deadline, expired)
        except TtrpcError as exc:
            raise map_agent_error(exc, container_id, str(self.address)) from None
        return decode_stats(raw, container_id, str(self.address))

    def start_stats(
        self, container_id: str, deadline: float | None, done: Callable[[StatsOutcome], None]
    ) -> Callable[[], None] | None:
        """stats_container for a caller that waits in no task: ``done`` gets the answer, or the error that
        stats_container would raise, once, from the callback that settled the call; the function returned
        cancels it. None when the call would have to wait before it is sent (no live connection, so a dial
        first; an agent not reading our requests): the caller then awaits stats_container instead."""
        client = self._client
        if client is None or client.closed or client.write_blocked:
            return None
        deadline, expired, request = self._stats_request(container_id, deadline)
        call = _StatsCall(self, client, container_id, deadline, expired, request, done)
        try:
            call.stop_waiting = client.start_until(
                AGENT_SERVICE, "StatsContainer", request, deadline, expired, call.answered
            ).cancel
        except TtrpcError as exc:
            raise map_agent_error(exc, container_id, str(self.address)) from None
        return call.cancel

    def _stats_request(self, container_id: str, deadline: float | None) -> tuple[float, str, bytes]:
        """The call's deadline (``default_timeout`` from now without one), its expiry message, the request."""
        expired = "StatsContainer did not finish before the caller's deadline"
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.default_timeout
            expired = f"StatsContainer did not finish within the default timeout of {self.default_timeout:g}s"
        request = agent_pb2.StatsContainerRequest(container_id=container_id).SerializeToString()
        return deadline, expired, request

    async def resources(self, container_id: str, *, deadline: float) -> resources_pb2.GetResponse:
        """shimstats.agent.v1.Resources/Get (our agent only: see ``service_unsupported``); TtrpcError as the
        agent answered, or UNAVAILABLE / DEADLINE_EXCEEDED when it did not."""
        return await self._ask(
            RESOURCES_SERVICE,
            "Get",
            resources_pb2.GetRequest(container_id=container_id),
            resources_pb2.GetResponse,
            deadline,
            late="Resources/Get did not finish before the caller's deadline",
            undecodable=f"the guest agent at {self.address} sent a GetResponse that does not decode",
        )

    async def check(self, timeout: float) -> bool:
        """grpc.Health/Check: True when the agent says SERVING; TtrpcError when it cannot be asked."""
        deadline = asyncio.get_running_loop().time() + timeout
        answer = await self._ask(
            HEALTH_SERVICE,
            "Check",
            health_pb2.CheckRequest(service=""),
            health_pb2.HealthCheckResponse,
            deadline,
            late=f"Health/Check: no answer from the guest agent at {self.address} within {timeout:g}s",
            undecodable=(
                f"Health/Check: the guest agent at {self.address} sent an answer that does not decode"
            ),
        )
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    async def _ask(
        self,
        service: str,
        method: str,
        request: Message,
        answer: type[AnswerT],
        deadline: float,
        *,
        late: str,
        undecodable: str,
    ) -> AnswerT:
        """One unary call bounded by ``deadline`` (``late`` is the DEADLINE_EXCEEDED message), its answer
        decoded as ``answer``; an answer that does not decode is INTERNAL, ``undecodable`` plus the reason."""
        raw = await self._call(service, method, request.SerializeToString(), deadline, late)
        try:
            return answer.FromString(raw)
        except DecodeError as exc:
            raise TtrpcError(Code.INTERNAL, f"{undecodable}: {exc}") from None

    async def _call(self, service: str, method: str, payload: bytes, deadline: float, expired: str) -> bytes:
        """One call on the shared connection, redialled once if it turns out to be dead; DEADLINE_EXCEEDED
        saying ``expired`` when ``deadline`` passes first. On a live connection the ttrpc client's own timer
        is the one deadline; a dial and the call after it are bounded together by one scope."""
        client = self._client
        if client is None or client.closed:
            return await wait_until(
                self._dial_and_call(service, method, payload, deadline, expired, 2), deadline, expired
            )
        try:
            return await client.call_until(service, method, payload, deadline, expired)
        except TtrpcError as exc:
            if not self._lost_under(client, exc):
                raise
        return await self._call_again(service, method, payload, deadline, expired)

    def _lost_under(self, client: Client, error: TtrpcError) -> bool:
        """True (and logged) when ``error`` is the connection dying under a call: it is made once more."""
        lost = error.code == Code.UNAVAILABLE and client.closed
        if lost:
            log.info(
                "connection to the guest agent lost; dialling again", extra={"address": str(self.address)}
            )
        return lost

    def _call_again(
        self, service: str, method: str, payload: bytes, deadline: float, expired: str
    ) -> Coroutine[Any, Any, bytes]:
        """The call once more, on a fresh connection, the dial and the call bounded by ``deadline``."""
        return wait_until(
            self._dial_and_call(service, method, payload, deadline, expired, 1), deadline, expired
        )

    async def _dial_and_call(
        self, service: str, method: str, payload: bytes, deadline: float, expired: str, attempts: int
    ) -> bytes:
        """The call on the live connection or a fresh one, dialled again (``attempts`` in all) if lost."""
        for attempt in range(attempts, 0, -1):
            client = await self._connection()
            try:
                return await client.call_until(service, method, payload, deadline, expired)
            except TtrpcError as exc:
                if attempt == 1 or not self._lost_under(client, exc):
                    raise
        raise AssertionError("unreachable")  # the loop either returns or raises

    async def _connection(self) -> Client:
        """The live connection, dialling (at most one dial at a time) when there is none."""
        client = self._client
        if client is not None and not client.closed:
            return client
        async with self._dial_lock():
            if self._closed:
                raise TtrpcError(
                    Code.UNAVAILABLE, f"the client of the guest agent at {self.address} is closed"
                )
            client = self._client
            if client is not None and not client.closed:
                return client
            self._client = None
            if client is not None:
                await client.close()
            return await self._dial()

    def _dial_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _target_address(self) -> Address:
        """Where the next dial goes: the fixed address; a subclass may look it up (OSError if it cannot)."""
        return self.address

    async def _dial(self) -> Client:
        loop = asyncio.get_running_loop()
        self._health.check(loop.time())
        try:
            self.address = await self._target_address()
            client = await Client.connect(self.address, timeout=self.connect_timeout)
        except OSError as exc:  # TransportError is a ConnectionError; its message names the address
            raise self._health.failed(exc, loop.time(), str(self.address)) from None
        self._health.succeeded(str(self.address))
        self.dials += 1
        self._client = client
        return client

    async def close(self) -> None:
        """Close the connection; later calls fail with UNAVAILABLE."""
        async with self._dial_lock():
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def read_errors(self, deadline: float) -> dict[str, int]:
        """Our agent's Diagnostics/ReadErrors: reads that left a figure out, per kernel file name.

        TtrpcError when the agent cannot say (kata-agent serves no such method): no counts, never zeros.
        """
        answer = await self._ask(
            DIAGNOSTICS_SERVICE,
            "ReadErrors",
            diagnostics_pb2.ReadErrorsRequest(),
            diagnostics_pb2.ReadErrorsResponse,
            deadline,
            late=f"Diagnostics/ReadErrors: no answer from the guest agent at {self.address} in time",
            undecodable=f"ReadErrorsResponse from {self.address} does not decode",
        )
        return {entry.file: entry.count for entry in answer.files}


class _StatsCall:
    """One StatsContainer answered through callbacks (``AgentClient.start_stats``). A connection lost under
    it is dialled again and the call made once more, as ``stats_container`` does; that retry waits in a
    task, since a dial does."""

    __slots__ = (
        "agent",
        "client",
        "container_id",
        "deadline",
        "done",
        "expired",
        "request",
        "retry",
        "stop_waiting",
    )

    def __init__(
        self,
        agent: AgentClient,
        client: Client,
        container_id: str,
        deadline: float,
        expired: str,
        request: bytes,
        done: Callable[[StatsOutcome], None],
    ) -> None:
        self.agent = agent
        self.client = client
        self.container_id = container_id
        self.deadline = deadline
        self.expired = expired
        self.request = request
        self.done = done
        self.stop_waiting: Callable[[], None] | None = None
        self.retry: asyncio.Future[bytes] | None = None

    def answered(self, result: bytes | TtrpcError) -> None:
        if not isinstance(result, TtrpcError):
            self.decode(result)
        elif self.agent._lost_under(self.client, result):
            again = self.agent._call_again(
                AGENT_SERVICE, "StatsContainer", self.request, self.deadline, self.expired
            )
            self.retry = asyncio.ensure_future(again)
            self.retry.add_done_callback(self.retried)
        else:
            self.done(map_agent_error(result, self.container_id, str(self.agent.address)))

    def retried(self, retry: asyncio.Future[bytes]) -> None:
        if retry.cancelled():
            return
        error = retry.exception()
        if error is None:
            self.decode(retry.result())
        elif isinstance(error, TtrpcError):
            self.done(map_agent_error(error, self.container_id, str(self.agent.address)))
        elif isinstance(error, Exception):
            self.done(error)

    def decode(self, raw: bytes) -> None:
        try:
            stats = decode_stats(raw, self.container_id, str(self.agent.address))
        except TtrpcError as exc:
            self.done(exc)
        else:
            self.done(stats)

    def cancel(self) -> None:
        if self.stop_waiting is not None:
            self.stop_waiting()
        if self.retry is not None:
            self.retry.cancel()

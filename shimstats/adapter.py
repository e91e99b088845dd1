"""The host adapter's ttrpc service: containerd.task.v2.Task answered from a guest agent.

Stats(id) asks the agent for StatsContainer(id), translates the answer (shimstats.translate) into the
configured cgroup Metrics type and wraps it in an Any with the bare type URL containerd expects. Connect
reports our pid and version. Every other Task method is UNIMPLEMENTED here: task lifecycle belongs to the
runtime shim, and the proxy shim forwards those calls to it while reusing StatsHandler for Stats.

containerd's namespace arrives in the ``containerd-namespace-ttrpc`` metadata; it is accepted and logged (the
agent knows containers by id only). An id containerd could never send (empty, with ``/`` or ``..``, ...) is
refused with INVALID_ARGUMENT before the agent is asked.

Deadlines: there are two hops, caller → adapter and adapter → agent, and a DEADLINE_EXCEEDED must say which
one ran out. The agent gets the caller's deadline less a small margin (ANSWER_MARGIN), so that when the agent
is the slow hop our answer, naming the agent, reaches the caller before its own timer fires and blames us.
A call without a deadline gets the adapter's own timeout (serve's --timeout). Both expiries are logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from google.protobuf.message import DecodeError

from shimstats import __version__
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.agent_client import AgentClient, StatsOutcome
from shimstats.stats_answer import stats_response, validate_id
from shimstats.translate import OutputFormat
from shimstats.ttrpc import CallContext, Code, Handler, Later, Server, TtrpcError
from shimstats.wire import NAMESPACE_KEY, TASK_METHODS, TASK_SERVICE

__all__ = [
    "ANSWER_MARGIN",
    "TASK_METHODS",
    "TASK_SERVICE",
    "VERSION",
    "StatsHandler",
    "TaskService",
    "validate_id",
]

VERSION = f"shimstats {__version__}"

ANSWER_MARGIN = 0.1
"""Seconds of the caller's deadline kept back to send our answer (at most a fifth of what the caller gave)."""

log = logging.getLogger("shimstats.adapter")


def _namespace(ctx: CallContext, default: str) -> str:
    values = ctx.metadata.get(NAMESPACE_KEY)
    return values[0] if values else default


class _StatsCall(NamedTuple):
    """One Stats call's particulars, for its answer and its log lines."""

    container_id: str
    namespace: str
    caller_deadline: float | None
    arrived: float
    agent_deadline: float | None
    started: float | None  # perf_counter at arrival, when debug logging is on


class StatsHandler:
    """Task/Stats from a guest agent, as a ttrpc handler that any Task server (the proxy shim too) can use.

    ``timeout_name`` names the adapter's own timeout (the agent client's default_timeout) in messages.
    """

    def __init__(
        self,
        agent: AgentClient,
        output: OutputFormat,
        *,
        default_namespace: str = "",
        timeout_name: str = "the adapter's own timeout",
    ) -> None:
        self.agent = agent
        self.output = output
        self.default_namespace = default_namespace
        self.timeout_name = timeout_name

    def start(self, payload: bytes, ctx: CallContext) -> Later | Awaitable[bytes]:
        """Task/Stats as a plain handler: while the agent's connection is up, no task waits for the agent;
        its answer is translated and sent from the callback that read it (one timer per call, the agent
        hop's, which ends before the caller's deadline). Otherwise (a dial first) the coroutine below."""
        call = self._begin(payload, ctx)
        later = Later(
            bounded=call.agent_deadline is None or ctx.deadline is None or call.agent_deadline < ctx.deadline
        )
        try:
            validate_id(call.container_id)
            cancel = self.agent.start_stats(
                call.container_id, call.agent_deadline, functools.partial(self._agent_answered, call, later)
            )
        except TtrpcError as exc:
            raise self._failed(call, exc) from None
        if cancel is None:
            return self._wait(call)
        later.on_cancel = functools.partial(self._cancelled, call, cancel)
        return later

    async def __call__(self, payload: bytes, ctx: CallContext) -> bytes:
        return await self._wait(self._begin(payload, ctx))

    def _begin(self, payload: bytes, ctx: CallContext) -> _StatsCall:
        try:
            request = shim_pb2.StatsRequest.FromString(payload)
        except DecodeError as exc:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"StatsRequest does not decode: {exc}") from None
        debug = log.isEnabledFor(logging.DEBUG)  # the per-call log line and its clock only when it is kept
        arrived = asyncio.get_running_loop().time()
        agent_deadline = None
        if ctx.deadline is not None:
            agent_deadline = ctx.deadline - min(ANSWER_MARGIN, (ctx.deadline - arrived) / 5)
        return _StatsCall(
            request.id,
            _namespace(ctx, self.default_namespace),
            ctx.deadline,
            arrived,
            agent_deadline,
            time.perf_counter() if debug else None,
        )

    async def _wait(self, call: _StatsCall) -> bytes:
        try:
            response = await self.stats(call.container_id, deadline=call.agent_deadline)
        except asyncio.CancelledError:
            self._cancelled(call)
            raise
        except TtrpcError as exc:
            raise self._failed(call, exc) from None
        return self._answer(call, response)

    def _agent_answered(self, call: _StatsCall, later: Later, outcome: StatsOutcome) -> None:
        if isinstance(outcome, Exception):
            later.settle(self._failed(call, outcome) if isinstance(outcome, TtrpcError) else outcome)
            return
        try:
            response = stats_response(call.container_id, outcome, self.output)
        except TtrpcError as exc:
            later.settle(self._failed(call, exc))
        except Exception as exc:  # a bug: the server logs it and answers UNKNOWN, as for a raising handler
            later.settle(exc)
        else:
            later.settle(self._answer(call, response))

    def _answer(self, call: _StatsCall, response: shim_pb2.StatsResponse) -> bytes:
        if call.started is not None:
            log.debug(
                "Stats answered in %.2f ms",
                (time.perf_counter() - call.started) * 1e3,
                extra={"container_id": call.container_id, "namespace": call.namespace, "format": self.output},
            )
        return response.SerializeToString()

    def _failed(self, call: _StatsCall, exc: TtrpcError) -> TtrpcError:
        """The status to answer with, logged: NOT_FOUND (routine: a task that just exited, which
        containerd skips quietly) at INFO, others at WARNING; the agent hop's expiry says so."""
        error = exc
        if exc.code == Code.DEADLINE_EXCEEDED:
            error = self._agent_hop_expired(
                exc, call.container_id, call.arrived, call.agent_deadline, call.caller_deadline
            )
        level = logging.INFO if error.code == Code.NOT_FOUND else logging.WARNING
        log.log(
            level,
            "Stats failed: %s",
            error.message,
            extra={"container_id": call.container_id, "namespace": call.namespace, "code": error.code.name},
        )
        return error

    def _cancelled(self, call: _StatsCall, cancel: Callable[[], None] | None = None) -> None:
        """Nobody waits for this answer any more (the connection went, or the caller's deadline passed)."""
        if cancel is not None:
            cancel()
        deadline = call.caller_deadline
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            log.warning(
                "Stats: the caller's %.3gs deadline passed before the answer was ready",
                deadline - call.arrived,
                extra={
                    "container_id": call.container_id,
                    "namespace": call.namespace,
                    "code": "DEADLINE_EXCEEDED",
                },
            )

    def _agent_hop_expired(
        self,
        error: TtrpcError,
        container_id: str,
        arrived: float,
        agent_deadline: float | None,
        caller_deadline: float | None,
    ) -> TtrpcError:
        """DEADLINE_EXCEEDED that says the agent hop ran out, and whose deadline it was."""
        if agent_deadline is None or caller_deadline is None:
            budget = (
                f"within {self.agent.default_timeout:g}s, {self.timeout_name} (the caller set no deadline)"
            )
        else:
            budget = (
                f"within {agent_deadline - arrived:.3g}s of the caller's {caller_deadline - arrived:.3g}s "
                f"deadline (the rest kept to send this answer)"
            )
        return TtrpcError(
            Code.DEADLINE_EXCEEDED,
            f"container {container_id!r}: the guest agent at {self.agent.address} did not answer {budget}; "
            "the hop from this adapter to the agent timed out",
            error.details,
        )

    async def stats(self, container_id: str, *, deadline: float | None = None) -> shim_pb2.StatsResponse:
        """The StatsResponse for one container; TtrpcError with the status containerd should see."""
        validate_id(container_id)
        agent_stats = await self.agent.stats_container(container_id, deadline=deadline)
        return stats_response(container_id, agent_stats, self.output)


class TaskService:
    """``containerd.task.v2.Task`` for ``shimstats serve``: Stats and Connect; the rest UNIMPLEMENTED."""

    def __init__(self, stats: StatsHandler, *, pid: int | None = None, version: str = VERSION) -> None:
        self.stats = stats
        self.pid = os.getpid() if pid is None else pid
        self.version = version

    def handlers(self) -> dict[str, Handler]:
        """A handler for every Task method, so each one answers with a status that says why."""
        table: dict[str, Handler] = {name: _unimplemented(name) for name in TASK_METHODS}
        table["Stats"] = self.stats.start
        table["Connect"] = self.connect
        return table

    def register(self, server: Server) -> None:
        """Serve the Task service on ``server``."""
        server.register(TASK_SERVICE, self.handlers())

    async def connect(self, payload: bytes, ctx: CallContext) -> bytes:
        """Task/Connect: our pid and version. task_pid stays 0: the task runs inside the VM."""
        return shim_pb2.ConnectResponse(shim_pid=self.pid, version=self.version).SerializeToString()


def _unimplemented(method: str) -> Handler:
    async def refuse(payload: bytes, ctx: CallContext) -> bytes:
        raise TtrpcError(
            Code.UNIMPLEMENTED,
            f"{TASK_SERVICE}/{method}: shimstats serve answers only Stats and Connect; task lifecycle "
            "calls belong to the runtime shim (the proxy shim forwards them)",
        )

    return refuse

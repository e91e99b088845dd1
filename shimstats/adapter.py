"""The host adapter's ttrpc service: containerd.task.v2.Task answered from a guest agent.

Stats(id) asks the agent for StatsContainer(id), translates the answer (shimstats.translate) into the
configured cgroup Metrics type and wraps it in an Any with the bare type URL containerd expects. Connect
reports our pid and version. Every other Task method is UNIMPLEMENTED here: task lifecycle belongs to the
runtime shim, and the proxy shim forwards those calls to it while reusing StatsHandler for Stats.

containerd's namespace arrives in the ``containerd-namespace-ttrpc`` metadata; it is accepted and logged (the
agent knows containers by id only). An id containerd could never send (empty, with ``/`` or ``..``, ...) is
refused with INVALID_ARGUMENT before the agent is asked.
"""

from __future__ import annotations

import logging
import os
import time

from google.protobuf.message import DecodeError

from shimstats import __version__, cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.agent_client import AgentClient
from shimstats.fake_containerd import NAMESPACE_KEY
from shimstats.identifiers import identifier_problem
from shimstats.translate import OutputFormat, translate
from shimstats.ttrpc import CallContext, Code, Handler, Server, TtrpcError

__all__ = [
    "TASK_METHODS",
    "TASK_SERVICE",
    "VERSION",
    "StatsHandler",
    "TaskService",
    "validate_id",
]

_TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]
TASK_SERVICE: str = _TASK.full_name
"""``containerd.task.v2.Task``: the service containerd dials on a shim that printed a plain address."""
TASK_METHODS: tuple[str, ...] = tuple(method.name for method in _TASK.methods)
VERSION = f"shimstats {__version__}"

log = logging.getLogger("shimstats.adapter")


def validate_id(container_id: str) -> None:
    """INVALID_ARGUMENT unless ``container_id`` is a containerd identifier (never empty, '/' or '..')."""
    problem = identifier_problem(container_id)
    if problem is not None:
        raise TtrpcError(Code.INVALID_ARGUMENT, problem)


def _namespace(ctx: CallContext, default: str) -> str:
    values = ctx.metadata.get(NAMESPACE_KEY)
    return values[0] if values else default


class StatsHandler:
    """Task/Stats from a guest agent, as a ttrpc handler that any Task server (the proxy shim too) can use."""

    def __init__(self, agent: AgentClient, output: OutputFormat, *, default_namespace: str = "") -> None:
        self.agent = agent
        self.output = output
        self.default_namespace = default_namespace

    async def __call__(self, payload: bytes, ctx: CallContext) -> bytes:
        try:
            request = shim_pb2.StatsRequest.FromString(payload)
        except DecodeError as exc:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"StatsRequest does not decode: {exc}") from None
        namespace = _namespace(ctx, self.default_namespace)
        started = time.perf_counter()
        try:
            response = await self.stats(request.id, deadline=ctx.deadline)
        except TtrpcError as exc:
            # NOT_FOUND is routine (a task that just exited); containerd skips it quietly, so do we.
            level = logging.INFO if exc.code == Code.NOT_FOUND else logging.WARNING
            log.log(
                level,
                "Stats failed: %s",
                exc.message,
                extra={"container_id": request.id, "namespace": namespace, "code": exc.code.name},
            )
            raise
        log.debug(
            "Stats answered in %.2f ms",
            (time.perf_counter() - started) * 1e3,
            extra={"container_id": request.id, "namespace": namespace, "format": self.output},
        )
        return response.SerializeToString()

    async def stats(self, container_id: str, *, deadline: float | None = None) -> shim_pb2.StatsResponse:
        """The StatsResponse for one container; TtrpcError with the status containerd should see."""
        validate_id(container_id)
        agent_stats = await self.agent.stats_container(container_id, deadline=deadline)
        try:
            metrics = translate(agent_stats, self.output)
        except ValueError as exc:
            raise TtrpcError(
                Code.INTERNAL, f"container {container_id!r}: cannot translate the agent's stats: {exc}"
            ) from None
        return shim_pb2.StatsResponse(stats=cri.encode_metrics(metrics))


class TaskService:
    """``containerd.task.v2.Task`` for ``shimstats serve``: Stats and Connect; the rest UNIMPLEMENTED."""

    def __init__(self, stats: StatsHandler, *, pid: int | None = None, version: str = VERSION) -> None:
        self.stats = stats
        self.pid = os.getpid() if pid is None else pid
        self.version = version

    def handlers(self) -> dict[str, Handler]:
        """A handler for every Task method, so each one answers with a status that says why."""
        table: dict[str, Handler] = {name: _unimplemented(name) for name in TASK_METHODS}
        table["Stats"] = self.stats
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

"""Task/Stats's answer from the guest agent's StatsContainer: the rules every Stats server shares (the
adapter's StatsHandler, the proxy's threaded serving process). No I/O and no event loop here."""

from __future__ import annotations

from shimstats import cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from shimstats.identifiers import identifier_problem
from shimstats.translate import OutputFormat, translate
from shimstats.ttrpc.status import Code, TtrpcError

__all__ = ["stats_response", "validate_id"]


def validate_id(container_id: str) -> None:
    """INVALID_ARGUMENT unless ``container_id`` is a containerd identifier (never empty, '/' or '..')."""
    problem = identifier_problem(container_id)
    if problem is not None:
        raise TtrpcError(Code.INVALID_ARGUMENT, problem)


def stats_response(
    container_id: str, agent_stats: agent_pb2.StatsContainerResponse, output: OutputFormat
) -> shim_pb2.StatsResponse:
    """The StatsResponse for the agent's answer, as ``output`` Metrics; INTERNAL when it cannot be
    translated."""
    try:
        metrics = translate(agent_stats, output)
    except ValueError as exc:
        raise TtrpcError(
            Code.INTERNAL, f"container {container_id!r}: cannot translate the agent's stats: {exc}"
        ) from None
    return shim_pb2.StatsResponse(stats=cri.encode_metrics(metrics))

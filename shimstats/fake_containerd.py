"""A fake containerd: calls a shim's Task/Stats exactly the way containerd does.

containerd's shim client sends the namespace in the ttrpc metadata key
``containerd-namespace-ttrpc`` and a deadline (timeout_nano); it gets back an Any and
hands it to CRI unchanged. We do the same, decode the Any by its exact type URL and
derive CRI's figures (shimstats.cri).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any as AnyType

from google.protobuf import message as pb_message

from shimstats import cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.ttrpc import Client

TASK_SERVICE = "containerd.task.v2.Task"
NAMESPACE_KEY = "containerd-namespace-ttrpc"
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class StatsResult:
    """One Stats answer: the raw Any's URL, the decoded Metrics and what CRI makes of it."""

    id: str
    type_url: str
    metrics: cri.Metrics
    memory: cri.CriMemory | None

    def to_json(self) -> dict[str, AnyType]:
        return {
            "id": self.id,
            "type_url": self.type_url,
            "metrics": message_to_dict(self.metrics),
            "cri": self.memory.to_dict() if self.memory else None,
        }


def message_to_dict(msg: pb_message.Message) -> dict[str, AnyType]:
    """Proto field names, integers as JSON numbers, unset/zero fields omitted (like ctr's JSON)."""
    out: dict[str, AnyType] = {}
    for field, value in msg.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = {k: _plain(v) for k, v in value.items()}
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            out[field.name] = [_plain(v) for v in value]
        else:
            out[field.name] = _plain(value)
    return out


def _plain(value: object) -> AnyType:
    return message_to_dict(value) if isinstance(value, pb_message.Message) else value


def stats_metadata(namespace: str) -> Mapping[str, str]:
    return {NAMESPACE_KEY: namespace}


async def call_stats(client: Client, container_id: str, *, namespace: str, timeout: float) -> StatsResult:
    """Task/Stats as containerd sends it. Raises TtrpcError (a status), MetricsDecodeError (bad answer)."""
    request = shim_pb2.StatsRequest(id=container_id)
    raw = await client.call(
        TASK_SERVICE,
        "Stats",
        request.SerializeToString(),
        timeout=timeout,
        metadata=stats_metadata(namespace),
    )
    try:
        response = shim_pb2.StatsResponse.FromString(raw)
    except pb_message.DecodeError as exc:
        raise cri.MetricsDecodeError(f"the shim's StatsResponse does not decode: {exc}") from exc
    metrics = cri.decode_metrics(response.stats)
    return StatsResult(
        id=container_id,
        type_url=response.stats.type_url,
        metrics=metrics,
        memory=cri.cri_memory(metrics),
    )

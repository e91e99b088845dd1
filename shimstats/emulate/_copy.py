"""Field copies both Kata shims make the same way (kata proto → v1 Metrics), written once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.kata import agent_pb2


def memory_entry(target: v1.MemoryEntry, data: agent_pb2.MemoryData) -> None:
    """A kata MemoryData as a v1 MemoryEntry, field by field (max_usage → max)."""
    target.SetInParent()
    target.usage = data.usage
    target.max = data.max_usage
    target.failcnt = data.failcnt
    target.limit = data.limit


def blkio_entries(
    target: RepeatedCompositeFieldContainer[v1.BlkIOEntry], source: Iterable[agent_pb2.BlkioStatsEntry]
) -> None:
    """kata entries copied as they are: the op keeps kata's lowercase and ``device`` stays empty."""
    for e in source:
        target.add(op=e.op, major=e.major, minor=e.minor, value=e.value)


def hugetlb_v1(
    target: RepeatedCompositeFieldContainer[v1.HugetlbStat], source: Mapping[str, agent_pb2.HugetlbStats]
) -> None:
    """One v1 HugetlbStat per page size (peak into ``max``). Both shims iterate a hash map, whose order
    is random; sorting by page size is one of the orders they can produce."""
    for size, h in sorted(source.items()):
        target.add(usage=h.usage, max=h.max_usage, failcnt=h.failcnt, pagesize=size)

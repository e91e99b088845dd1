"""What containerd's CRI plugin makes of a shim's Stats answer (pure functions).

containerd picks the formula by the *type* of the decoded Metrics (v1 or v2), never by
the host's cgroup mode, so a fake containerd client must do the same. Formulas, clamps and
the "unlimited" rule follow containerd's container_stats_list.go (docs/spec/formulas.md §1):

* working set = usage - inactive file, and 0 unless inactive < usage (strict);
* available = limit - working set with uint64 wrap-around, or 0 when the limit is above 2^62;
* rss / page faults come from total_rss / total_pg_fault / total_pg_maj_fault (v1) or
  anon / pgfault / pgmajfault (v2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Union

from google.protobuf import any_pb2

from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2

V1_TYPE_URL = "io.containerd.cgroups.v1.Metrics"
V2_TYPE_URL = "io.containerd.cgroups.v2.Metrics"
UNLIMITED_THRESHOLD = 1 << 62
_U64 = 1 << 64

Metrics = Union[v1.Metrics, v2.Metrics]


class MetricsDecodeError(ValueError):
    """The Any is not one of the two cgroup Metrics types, or does not decode."""


@dataclass(frozen=True)
class CriMemory:
    """CRI ContainerStats.memory as containerd fills it (all uint64)."""

    usage_bytes: int
    working_set_bytes: int
    available_bytes: int
    rss_bytes: int
    page_faults: int
    major_page_faults: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def decode_metrics(stats: any_pb2.Any) -> Metrics:
    """Decode a Stats Any by its exact type URL, as `ctr` (typeurl.Is) does.

    A prefixed URL ("type.googleapis.com/...") is refused: CRI would accept it but ctr fails.
    """
    message: Metrics
    if stats.type_url == V1_TYPE_URL:
        message = v1.Metrics()
    elif stats.type_url == V2_TYPE_URL:
        message = v2.Metrics()
    else:
        raise MetricsDecodeError(
            f"unknown metrics type URL {stats.type_url!r}: expected {V1_TYPE_URL!r} or {V2_TYPE_URL!r}"
        )
    try:
        message.ParseFromString(stats.value)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-ish subclasses
        raise MetricsDecodeError(f"{stats.type_url} does not decode: {exc}") from exc
    return message


def encode_metrics(metrics: Metrics) -> any_pb2.Any:
    """Wrap Metrics in an Any with the bare type URL containerd's typeurl produces."""
    url = V1_TYPE_URL if isinstance(metrics, v1.Metrics) else V2_TYPE_URL
    return any_pb2.Any(type_url=url, value=metrics.SerializeToString(deterministic=True))


def working_set(usage: int, inactive_file: int) -> int:
    """usage - inactive_file, or 0 unless inactive_file < usage (containerd and cAdvisor clamp)."""
    return usage - inactive_file if inactive_file < usage else 0


def is_unlimited(limit: int) -> bool:
    return limit > UNLIMITED_THRESHOLD


def available(limit: int, working_set_bytes: int) -> int:
    """limit - working set as Go's uint64 arithmetic computes it; 0 when unlimited."""
    if is_unlimited(limit):
        return 0
    return (limit - working_set_bytes) % _U64


def cri_memory(metrics: Metrics) -> CriMemory | None:
    """CRI's memory figures for decoded Metrics; None when the shim sent no memory block."""
    if not metrics.HasField("memory"):
        return None
    if isinstance(metrics, v1.Metrics):
        mem1 = metrics.memory
        usage = mem1.usage.usage if mem1.HasField("usage") else 0
        ws = working_set(usage, mem1.total_inactive_file) if mem1.HasField("usage") else 0
        return CriMemory(
            usage_bytes=usage,
            working_set_bytes=ws,
            available_bytes=available(mem1.usage.limit, ws),
            rss_bytes=mem1.total_rss,
            page_faults=mem1.total_pg_fault,
            major_page_faults=mem1.total_pg_maj_fault,
        )
    mem2 = metrics.memory
    ws = working_set(mem2.usage, mem2.inactive_file)
    return CriMemory(
        usage_bytes=mem2.usage,
        working_set_bytes=ws,
        available_bytes=available(mem2.usage_limit, ws),
        rss_bytes=mem2.anon,
        page_faults=mem2.pgfault,
        major_page_faults=mem2.pgmajfault,
    )


def cri_cpu_usage_nanos(metrics: Metrics) -> int | None:
    """CRI's usage_core_nano_seconds: v1 total (ns), v2 usage_usec * 1000."""
    if not metrics.HasField("cpu"):
        return None
    if isinstance(metrics, v1.Metrics):
        return metrics.cpu.usage.total
    return metrics.cpu.usage_usec * 1000

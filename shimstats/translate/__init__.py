"""The translation core: a guest agent's StatsContainerResponse → containerd's v1 or v2 Metrics.

Pure functions (only resolve_format looks at one file). The path is always agent reply → ContainerRecord
(translate.record, one meaning per field, whatever the guest's cgroup version; read by translate.agent) → v1
or v2 Metrics (translate.v1, translate.v2), so the working set containerd's CRI computes from our answer is
the guest's own usage - inactive_file in all four guest × output combinations.
"""

from __future__ import annotations

from shimstats import cri
from shimstats._proto.kata import agent_pb2
from shimstats.translate.agent import guest_version, record_from_agent
from shimstats.translate.host import OutputFormat, resolve_format
from shimstats.translate.record import ContainerRecord, GuestVersion
from shimstats.translate.v1 import to_v1
from shimstats.translate.v2 import to_v2

__all__ = [
    "ContainerRecord",
    "GuestVersion",
    "OutputFormat",
    "guest_version",
    "record_from_agent",
    "resolve_format",
    "to_metrics",
    "translate",
]


def to_metrics(record: ContainerRecord, output: str) -> cri.Metrics:
    """``record`` as v1 or v2 Metrics; ValueError for any other ``output``."""
    if output == "v1":
        return to_v1(record)
    if output == "v2":
        return to_v2(record)
    raise ValueError(f"output format {output!r}: expected 'v1' or 'v2'")


def translate(response: agent_pb2.StatsContainerResponse, output: str) -> cri.Metrics:
    """The Metrics containerd should get for one agent reply, in the ``output`` format ("v1" or "v2")."""
    if output != "v1" and output != "v2":  # checked before the work, so a typo fails fast
        raise ValueError(f"output format {output!r}: expected 'v1' or 'v2'")
    return to_metrics(record_from_agent(response), output)

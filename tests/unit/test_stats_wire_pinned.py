"""The Stats answers' bytes stay what they were: the guest agent's StatsContainerResponse per captured fixture
and the adapter's StatsResponse per agent answer, both formats (tests/stats_wire_pins.py lists the cases).

Speed work on the reader, the kata spelling and the translation must leave the wire alone: a host reads a
real kata-agent and ours alike, and containerd decodes what the runc shim would send. A mismatch shows the
decoded messages side by side, so the changed field is named.
"""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from google.protobuf.message import Message

from shimstats import cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from tests.stats_wire_pins import cases, load

PINNED = load()
NOW = cases()


def _readable(name: str, data: bytes) -> str:
    message: Message
    if name.startswith("agent/"):
        message = agent_pb2.StatsContainerResponse.FromString(data)
    else:
        message = cri.decode_metrics(shim_pb2.StatsResponse.FromString(data).stats)
    return text_format.MessageToString(message)


def test_the_same_cases_are_pinned_and_produced() -> None:
    assert sorted(NOW) == sorted(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_bytes_are_unchanged(name: str) -> None:
    now = NOW[name]
    if now != PINNED[name]:
        assert _readable(name, now) == _readable(name, PINNED[name])  # names the field that moved
    assert now == PINNED[name]  # same fields, other bytes: order or encoding changed

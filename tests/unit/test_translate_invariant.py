"""The invariant of the translation core, in all four guest × output combinations.

For a guest cgroup with usage U, hierarchical inactive file I (v1 total_inactive_file, v2 inactive_file),
anon/total_rss R, fault counters F and M, and swap-only S, the Metrics we send must make containerd's CRI
compute (shimstats.cri, after a round trip through the Any as containerd receives it):
  usage = U, working set = U - I (0 unless I < U), rss = R, page faults = F, major page faults = M,
  available = limit - working set (0 when unlimited),
and carry swap in the output's own meaning without counting anything twice: v1 ``swap`` = U + S
(memory + swap), v2 ``swap_usage`` = S (swap only).
Checked over generated guests of each version (our agent's and a real kata-agent's replies) and over every
real fixture (the guest agent's reply, and for v2 fixtures kata-agent's reply too).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.kata import agent_pb2
from shimstats.translate import translate
from tests.translate_builders import (
    NO_DEADLINE,
    Case,
    Guest,
    agent_response,
    expected_working_set,
    fixture_cases,
    kata_agent_v2,
    v1_guests,
    v2_guests,
)

OUTPUTS = ("v1", "v2")


def _as_containerd_sees_it(response: agent_pb2.StatsContainerResponse, output: str) -> cri.Metrics:
    return cri.decode_metrics(cri.encode_metrics(translate(response, output)))


def check_invariant(guest: Guest, response: agent_pb2.StatsContainerResponse, output: str) -> None:
    metrics = _as_containerd_sees_it(response, output)
    assert isinstance(metrics, v1.Metrics) == (output == "v1")
    got = cri.cri_memory(metrics)
    assert got is not None
    ws = expected_working_set(guest.usage, guest.inactive_file)
    limited = guest.limit <= 1 << 62
    assert got == cri.CriMemory(
        usage_bytes=guest.usage,
        working_set_bytes=ws,
        available_bytes=(guest.limit - ws) % 2**64 if limited else 0,
        rss_bytes=guest.rss,
        page_faults=guest.pgfault,
        major_page_faults=guest.pgmajfault,
    )
    if guest.swap is None:
        return
    if isinstance(metrics, v1.Metrics):
        assert metrics.memory.swap.usage == guest.usage + guest.swap
    else:
        assert metrics.memory.swap_usage == guest.swap
        assert metrics.memory.swap_usage + metrics.memory.usage == guest.usage + guest.swap


@pytest.mark.parametrize("output", OUTPUTS)
@NO_DEADLINE
@given(guest=v1_guests())
def test_v1_guest(guest: Guest, output: str) -> None:
    check_invariant(guest, agent_response(guest), output)


@pytest.mark.parametrize("output", OUTPUTS)
@NO_DEADLINE
@given(guest=v2_guests(), kata=st.booleans())
def test_v2_guest(guest: Guest, kata: bool, output: str) -> None:
    response = agent_response(guest)
    check_invariant(guest, kata_agent_v2(response) if kata else response, output)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("case", list(fixture_cases()), ids=lambda c: c.name)
def test_real_fixture(case: Case, output: str) -> None:
    check_invariant(case.guest, case.response, output)


def test_every_fixture_version_is_covered() -> None:
    """The fixture tests above are only meaningful if real guests of both versions are among them."""
    versions = {c.guest.version for c in fixture_cases()}
    assert versions == {"v1", "v2"}

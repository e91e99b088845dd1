"""Captured kernels end to end: guest agent on a fixture tree → adapter → fake containerd, v1 and v2 output.

Expected values come from the fixture's own files by these rules (the kernel's meaning of each file):

* guest v1 (the fixture's memory/, cpuacct/, pids/ hierarchies at its container path):
  usage = memory.usage_in_bytes, limit = memory.limit_in_bytes; from memory.stat: inactive =
  total_inactive_file, rss = total_rss, cache = total_cache, faults = total_pgfault / total_pgmajfault;
  cpu = cpuacct.usage (ns).
* guest v2: usage = memory.current (the root has none: anon + file, runc's rule), limit = memory.max ("max"
  and the root: 2^64-1); from memory.stat: inactive = inactive_file, rss = anon, cache = file, faults =
  pgfault / pgmajfault; cpu = cpu.stat usage_usec × 1000.
* pids = pids.current when the fixture has it.

CRI's figures then follow by containerd's formulas (shimstats.cri): working set = usage - inactive (0 when
the cache exceeds usage), available = limit - working set (0 when unlimited, i.e. above 2^62). v2 output
carries cpu in µs, so it is compared with the ns value divided by 1000 (truncated; under 1 µs is lost).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats.translate import OutputFormat
from tests.integration.harness import (
    AgentProcess,
    Fixture,
    fake_stats,
    fixtures,
    running_adapter,
    short_tmp,
)

U64_MAX = 2**64 - 1
OUTPUTS: tuple[OutputFormat, ...] = ("v1", "v2")
KINDS = (
    "v1 container",
    "v1 root",
    "v2 container, mostly inactive file",
    "v2 container, mostly active file",
    "v2 root",
)


@dataclass(frozen=True)
class Expected:
    """What the fixture's files say, by the rules in the module docstring."""

    usage: int
    limit: int
    inactive_file: int
    active_file: int
    rss: int
    cache: int
    pgfault: int
    pgmajfault: int
    cpu_ns: int
    pids: int | None


def _limit(text: str) -> int:
    text = text.strip()
    return U64_MAX if text == "max" else int(text)


def expected(fx: Fixture) -> Expected:
    stat = fx.keyed("memory", "memory.stat")
    pids_text = _optional(fx, "pids", "pids.current")
    pids = int(pids_text) if pids_text is not None else None
    if fx.guest_version == 1:
        return Expected(
            usage=int(fx.file("memory", "memory.usage_in_bytes")),
            limit=int(fx.file("memory", "memory.limit_in_bytes")),
            inactive_file=stat["total_inactive_file"],
            active_file=stat["total_active_file"],
            rss=stat["total_rss"],
            cache=stat["total_cache"],
            pgfault=stat["total_pgfault"],
            pgmajfault=stat["total_pgmajfault"],
            cpu_ns=int(fx.file("cpuacct", "cpuacct.usage")),
            pids=pids,
        )
    if fx.is_root:
        usage, limit = stat["anon"] + stat["file"], U64_MAX
    else:
        usage, limit = int(fx.file("memory", "memory.current")), _limit(fx.file("memory", "memory.max"))
    return Expected(
        usage=usage,
        limit=limit,
        inactive_file=stat["inactive_file"],
        active_file=stat["active_file"],
        rss=stat["anon"],
        cache=stat["file"],
        pgfault=stat["pgfault"],
        pgmajfault=stat["pgmajfault"],
        cpu_ns=fx.keyed("cpu", "cpu.stat")["usage_usec"] * 1000,
        pids=pids,
    )


def _optional(fx: Fixture, controller: str, name: str) -> str | None:
    try:
        return fx.file(controller, name)
    except FileNotFoundError:
        return None


def kind(fx: Fixture) -> str:
    if fx.is_root:
        return f"v{fx.guest_version} root"
    if fx.guest_version == 1:
        return "v1 container"
    e = expected(fx)
    if e.inactive_file > e.active_file:
        return "v2 container, mostly inactive file"
    if e.active_file > e.inactive_file:
        return "v2 container, mostly active file"
    return "v2 container, no file cache"


@pytest.fixture(scope="module", params=fixtures(), ids=lambda fx: fx.name)
def agent_on_fixture(request: pytest.FixtureRequest) -> Iterator[tuple[Fixture, AgentProcess]]:
    fx: Fixture = request.param
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        yield fx, agent


def test_every_kind_of_fixture_is_captured() -> None:
    """The issue names five kinds of guest cgroup; each needs at least one real capture."""
    have = {kind(fx) for fx in fixtures()}
    missing = [k for k in KINDS if k not in have]
    assert not missing, (
        f"no fixture under tests/fixtures/cgroupfs for: {', '.join(missing)} (have {sorted(have)})"
    )


@pytest.mark.parametrize("output", OUTPUTS)
async def test_fixture_through_the_adapter(
    agent_on_fixture: tuple[Fixture, AgentProcess], output: OutputFormat
) -> None:
    fx, agent = agent_on_fixture
    want = expected(fx)
    with short_tmp() as directory:
        async with running_adapter(agent.address, output, directory) as (address, _):
            result = await fake_stats(address, fx.request_id)

    assert result.type_url == (cri.V1_TYPE_URL if output == "v1" else cri.V2_TYPE_URL)
    working_set = cri.working_set(want.usage, want.inactive_file)
    assert result.memory == cri.CriMemory(
        usage_bytes=want.usage,
        working_set_bytes=working_set,
        available_bytes=cri.available(want.limit, working_set),
        rss_bytes=want.rss,
        page_faults=want.pgfault,
        major_page_faults=want.pgmajfault,
    )
    metrics = result.metrics
    if isinstance(metrics, v1.Metrics):
        mem1 = metrics.memory
        limit = mem1.usage.limit
        assert (mem1.usage.usage, mem1.total_inactive_file, mem1.total_active_file) == (
            want.usage,
            want.inactive_file,
            want.active_file,
        )
        assert (mem1.total_rss, mem1.total_cache) == (want.rss, want.cache)
        assert metrics.cpu.usage.total == want.cpu_ns
        pids = metrics.pids.current if metrics.HasField("pids") else None
    else:
        assert isinstance(metrics, v2.Metrics)
        mem2 = metrics.memory
        limit = mem2.usage_limit
        assert (mem2.usage, mem2.inactive_file, mem2.active_file) == (
            want.usage,
            want.inactive_file,
            want.active_file,
        )
        assert (mem2.anon, mem2.file) == (want.rss, want.cache)
        assert metrics.cpu.usage_usec == want.cpu_ns // 1000
        pids = metrics.pids.current if metrics.HasField("pids") else None
    # "unlimited" has two spellings (v1: 2^63 rounded down to a page, v2: 2^64-1); a real limit is exact
    assert cri.is_unlimited(limit) == cri.is_unlimited(want.limit)
    if not cri.is_unlimited(want.limit):
        assert limit == want.limit
    assert pids == want.pids

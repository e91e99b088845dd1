"""cAdvisor's spec figures from Resources/Get answers (shimstats.cadvisor_spec), and the exporter's stock
kata-agent mode: an agent without the Resources service is asked once, and the spec series stay absent.

Settings are written as the kernel shows them (v1 ``cpu.cfs_quota_us`` -1 without a quota, v2 ``cpu.max``
``max 100000``, v1 unlimited memory 9223372036854771712); the expected values follow cAdvisor's
``container/common/helpers.go`` and ``metrics/prometheus.go`` as the module docstring states them.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from shimstats._proto.kata import agent_pb2
from shimstats._proto.shimstats.agent.v1 import resources_pb2
from shimstats.cadvisor_spec import CadvisorSpec, cadvisor_spec, shares_from_weight
from shimstats.exporter import AgentPool, AgentTarget, ContainerTarget, container_families
from shimstats.ttrpc import CallContext, Server
from tests.unit.test_translate_builders import example_v2, full_response

V1_UNLIMITED = 9223372036854771712


def answer(
    version: int, settings: dict[str, str], oom_kills: int | None = None, processes: int | None = None
) -> resources_pb2.GetResponse:
    response = resources_pb2.GetResponse(
        cgroup_path="/kubepods/pod1/c1", page_size=4096, oom_kills=oom_kills, processes=processes
    )
    for name, raw in settings.items():
        setting = response.settings.add(file=name, cgroup_version=version, raw=raw)
        for token in raw.split(" "):
            if token == "max":
                setting.values.add(max=True)
            else:
                setting.values.add(number=int(token))
    return response


def test_v1_spec_as_cadvisor_reads_it() -> None:
    limited = answer(
        1,
        {
            "cpu.shares": "512",
            "cpu.cfs_quota_us": "50000",
            "cpu.cfs_period_us": "100000",
            "memory.soft_limit_in_bytes": "134217728",
            "memory.memsw.limit_in_bytes": "536870912",
        },
        oom_kills=2,
        processes=3,
    )
    assert cadvisor_spec(limited) == CadvisorSpec(
        "/kubepods/pod1/c1", 512, 100000, 50000, 134217728, 536870912, oom_kills=2, processes=3
    )
    unlimited = answer(
        1,
        {
            "cpu.shares": "2",
            "cpu.cfs_quota_us": "-1",  # no quota: cAdvisor's unsigned parse gives 0, and 0 omits the series
            "cpu.cfs_period_us": "100000",
            "memory.soft_limit_in_bytes": str(V1_UNLIMITED),
            "memory.memsw.limit_in_bytes": str(V1_UNLIMITED),
        },
    )
    assert cadvisor_spec(unlimited) == CadvisorSpec("/kubepods/pod1/c1", 2, 100000, None, 0, 0)


def test_v2_spec_as_cadvisor_reads_it() -> None:
    limited = answer(
        2,
        {"cpu.weight": "20", "cpu.max": "25000 100000", "memory.min": "0", "memory.swap.max": "0"},
        oom_kills=0,
    )
    assert cadvisor_spec(limited) == CadvisorSpec(
        "/kubepods/pod1/c1", shares_from_weight(20), 100000, 25000, 0, 0, oom_kills=0
    )
    unlimited = answer(2, {"cpu.weight": "100", "cpu.max": "max 100000", "memory.swap.max": "max"})
    assert cadvisor_spec(unlimited) == CadvisorSpec("/kubepods/pod1/c1", 2597, 100000, None, None, 0)


def test_shares_from_weight_ends_and_kubelet_values() -> None:
    # cAdvisor's integer rule: 1 → 2 and 10000 → 262144; the kubelet's 1024 shares became weight 39
    assert [shares_from_weight(w) for w in (1, 39, 100, 10000)] == [2, 998, 2597, 262144]


def test_an_agent_without_resources_is_asked_once_and_has_no_spec_series(tmp_path: Path) -> None:
    """A ttrpc server with grpc.AgentService alone stands for kata-agent (ttrpc answers an unknown service
    with an error status, shimstats.agent_client.service_unsupported)."""
    calls: list[str] = []
    reply = full_response(example_v2()).SerializeToString()

    async def stats(payload: bytes, ctx: CallContext) -> bytes:
        calls.append(agent_pb2.StatsContainerRequest.FromString(payload).container_id)
        return reply

    server = Server()
    server.register("grpc.AgentService", {"StatsContainer": stats})
    loop = asyncio.new_event_loop()
    address = f"unix://{tmp_path}/kata.sock"
    loop.run_until_complete(server.start(address))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        target = AgentTarget(address, (ContainerTarget("c1", created=1700000000.0),), sandbox="sb1")
        with AgentPool(timeout=5.0, kata_host="v1") as pool:
            first = pool.read([target])
            second = pool.read([target])
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert calls == ["c1", "c1"]
    for result in (first, second):
        (reading,) = result[0].readings
        assert reading.record is not None
        assert reading.spec is None
        assert reading.labels[0] == "c1"  # no cgroup path known: id is the container id
    names = {m.name for m in container_families(list(second[0].readings))}
    assert "container_start_time_seconds" in names  # from the CRI, not the agent
    assert not {
        n for n in names if n.startswith("container_spec_") and n != "container_spec_memory_limit_bytes"
    }
    assert "container_oom_events" not in names
    assert "container_processes" not in names

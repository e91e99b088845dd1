"""Discovery against stand-ins of Kata's parts (tests/kata_standins.py): the shim's management socket in
both runtimes' behaviour, each agent URL form, each failure; then discovery → hybrid-vsock dial → Stats end to
end, to our agent (port 2048) and to a stock kata-agent stand-in (Kata's own port, §4).

QEMU's vhost-vsock needs a VM: the vsock form is read from the shim here and mapped, never dialled (the
mapping is unit-tested in tests/unit/test_discovery.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shimstats.adapter import StatsHandler, TaskService
from shimstats.agent_client import Backoff
from shimstats.discovery import (
    KATA_AGENT,
    DiscoveryError,
    KataAgentClient,
    KataSpec,
    agent_client,
    find_sandbox,
    kata_spec,
    list_sandboxes,
    read_agent_url,
    resolve_agent,
)
from shimstats.ttrpc import Address, Code, Server, TtrpcError
from tests.integration.harness import Fixture, fake_stats
from tests.kata_standins import (
    KATA_PORT,
    OUR_PORT,
    HybridVsockMuxer,
    KataShimStandIn,
    container_fixtures,
    guest,
)

SANDBOX = "5f2c0a9d1b7e4c3a"


URLS = {
    "qemu": "vsock://2867405393:1024",
    "clh": "hvsock:///run/vc/vm/{sandbox}/clh.sock:1024",
    "firecracker": "hvsock:///run/vc/firecracker/{sandbox}/root/kata.hvsock:1024",
}


@pytest.mark.parametrize("flavor", ["go", "rs"])
@pytest.mark.parametrize("form", sorted(URLS))
async def test_each_runtime_reports_each_url_form(sock_dir: Path, flavor: str, form: str) -> None:
    url = URLS[form].format(sandbox=SANDBOX)
    with KataShimStandIn(sock_dir, SANDBOX, url, flavor=flavor) as shim:  # type: ignore[arg-type]
        sandbox = find_sandbox(SANDBOX, [str(sock_dir)])
        assert sandbox.socket == str(shim.socket)
        assert await read_agent_url(sandbox.socket) == url
        ours = await resolve_agent(sandbox)
        kata = await resolve_agent(sandbox, KATA_AGENT)
    assert shim.requests == [("GET", "/agent-url")] * 3
    assert ours.agent_url == url
    assert str(kata.address) == url
    assert str(ours.address) == url.replace(":1024", ":2048")


async def test_list_sandboxes_sees_shims_come_and_go(sock_dir: Path) -> None:
    go_root, rs_root = sock_dir / "sbs", sock_dir / "kata"
    with KataShimStandIn(go_root, "aaa", "vsock://3:1024"), KataShimStandIn(rs_root, "bbb", flavor="rs"):
        assert [s.id for s in list_sandboxes([str(go_root), str(rs_root)])] == ["aaa", "bbb"]
    assert list_sandboxes([str(go_root), str(rs_root)]) == []


@pytest.mark.parametrize(
    ("setup", "complaint"),
    [
        ("go-500", "answered HTTP 500: sandbox has no agent yet: not ready"),
        ("rs-empty", "reports no agent URL (empty answer)"),
        ("garbage", "not an HTTP answer to GET /agent-url"),
        ("hangup", "closed the connection without answering"),
        ("remote", "scheme remote (a remote hypervisor"),
        ("not-a-url", "is not a URL"),
        ("stale", "the shim is gone"),
        ("slow", "no answer to GET /agent-url within 0.3s"),
    ],
)
async def test_failures_are_errors_naming_the_socket(sock_dir: Path, setup: str, complaint: str) -> None:
    shim = KataShimStandIn(sock_dir, SANDBOX, "hvsock:///run/vc/vm/x/clh.sock:1024", flavor="go")
    if setup == "go-500":
        shim.error = "sandbox has no agent yet: not ready"
    elif setup == "rs-empty":
        shim.flavor, shim.error = "rs", "no agent"
    elif setup == "garbage":
        shim.raw = b"\x00\x01 not http at all\r\n\r\n"
    elif setup == "hangup":
        shim.raw = b""
    elif setup == "remote":
        shim.agent_url = "remote:///run/peerpod/x/agent.sock:1024"
    elif setup == "not-a-url":
        shim.agent_url = ":1024"
    elif setup == "slow":
        shim.hang = True
    shim.start()
    if setup == "stale":
        shim.stop(remove_socket=False)  # a killed shim leaves its socket file behind
    try:
        sandbox = find_sandbox(SANDBOX, [str(sock_dir)])
        with pytest.raises(DiscoveryError) as caught:
            await resolve_agent(sandbox, timeout=0.3)
    finally:
        shim.stop()
    assert complaint in str(caught.value)
    assert str(shim.socket) in str(caught.value)
    assert caught.value.socket == str(shim.socket)


async def test_a_gone_shim_names_both_places_looked(sock_dir: Path) -> None:
    with pytest.raises(DiscoveryError) as caught:
        find_sandbox(SANDBOX, [str(sock_dir / "sbs"), str(sock_dir / "kata")])
    assert f"{sock_dir}/sbs/{SANDBOX}/shim-monitor.sock" in str(caught.value)
    assert f"{sock_dir}/kata/{SANDBOX}/shim-monitor.sock" in str(caught.value)


# -- end to end: shim → hybrid vsock → agent → Stats ---------------------------------------------------------


def working_set(fx: Fixture) -> int:
    usage_file = "memory.current" if fx.guest_version == 2 else "memory.usage_in_bytes"
    usage = int(fx.file("memory", usage_file))
    stat = fx.keyed("memory", "memory.stat")
    inactive = stat["inactive_file"] if fx.guest_version == 2 else stat["total_inactive_file"]
    return max(usage - inactive, 0)


@pytest.mark.parametrize("fx", container_fixtures(), ids=lambda fx: fx.name)
@pytest.mark.parametrize("flavor", ["go", "rs"])
@pytest.mark.parametrize("port", [OUR_PORT, KATA_AGENT])
@pytest.mark.parametrize("output", ["v1", "v2"])
async def test_discovery_dial_stats_end_to_end(
    sock_dir: Path, fx: Fixture, flavor: str, port: int | str, output: str
) -> None:
    """What the proxy does with ``agent = "kata"``: the adapter's agent is found through the shim."""
    root = sock_dir / "sbs"
    mux_path = sock_dir / "clh.sock"
    async with guest(fx, sock_dir) as agents, HybridVsockMuxer(mux_path, agents) as mux:
        with KataShimStandIn(root, SANDBOX, f"hvsock://{mux_path}:{KATA_PORT}", flavor=flavor):  # type: ignore[arg-type]
            spec = kata_spec(SANDBOX, port, [str(sock_dir / "missing"), str(root)])  # type: ignore[arg-type]
            agent = agent_client(spec)
            assert isinstance(agent, KataAgentClient)
            server = Server()
            TaskService(StatsHandler(agent, output)).register(server)  # type: ignore[arg-type]
            address = f"unix://{sock_dir}/adapter.sock"
            await server.start(address)
            try:
                result = await fake_stats(address, fx.request_id)
                again = await fake_stats(address, fx.request_id)
            finally:
                await server.close()
                await agent.close()
    expected_port = OUR_PORT if port == OUR_PORT else KATA_PORT
    assert mux.requests == [f"CONNECT {expected_port}\n".encode()]  # one dial, kept for the second call
    assert agent.address == Address("hvsock", path=str(mux_path), port=expected_port)
    assert agent.target is not None
    assert agent.target.agent_url == f"hvsock://{mux_path}:{KATA_PORT}"
    for answer in (result, again):
        assert answer.memory is not None
        assert answer.memory.working_set_bytes == working_set(fx)


async def test_no_shim_yet_is_unavailable_then_found(sock_dir: Path) -> None:
    """The proxy starts before Kata serves /agent-url: the first Stats fails UNAVAILABLE naming the sandbox,
    a later one (after the backoff) finds the agent."""
    fx = container_fixtures()[-1]
    root = sock_dir / "sbs"
    mux_path = sock_dir / "clh.sock"
    async with guest(fx, sock_dir) as agents, HybridVsockMuxer(mux_path, agents):
        agent = KataAgentClient(KataSpec(SANDBOX, OUR_PORT, (str(root),)), backoff=Backoff(initial=0.0))
        try:
            with pytest.raises(TtrpcError) as caught:
                await agent.stats_container(fx.request_id)
            assert caught.value.code == Code.UNAVAILABLE
            assert f"sandbox {SANDBOX}" in caught.value.message
            assert str(root / SANDBOX / "shim-monitor.sock") in caught.value.message
            with KataShimStandIn(root, SANDBOX, f"hvsock://{mux_path}:{KATA_PORT}"):
                answer = await agent.stats_container(fx.request_id)
        finally:
            await agent.close()
    assert answer.cgroup_stats.memory_stats.usage.usage > 0

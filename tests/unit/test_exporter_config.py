"""What `shimstats exporter` exports: --agent with --container, or a TOML --config, refused with a message
naming the file and the entry at fault; and HOST:PORT for --listen-http."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from shimstats.commands.exporter import ConfigError, host_port, load_config, parse_config, targets
from shimstats.exporter import AgentTarget, ContainerTarget

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "contrib" / "exporter-config.example.toml"


def test_the_shipped_example_config_loads() -> None:
    agents = load_config(str(EXAMPLE))
    assert agents, "the example lists no agent"
    for agent in agents:
        assert agent.containers
        assert len({c.id for c in agent.containers}) == len(agent.containers)
    labelled = [c for a in agents for c in a.containers if c.pod and c.namespace and c.container]
    assert labelled, "the example should show the Kubernetes labels"


def test_a_config_becomes_agents_with_labelled_containers(tmp_path: Path) -> None:
    path = tmp_path / "exporter.toml"
    path.write_text(
        "[[agents]]\n"
        'address = "vsock://3:2048"\n'
        "[[agents.containers]]\n"
        'id = "a1"\n'
        'container = "web"\n'
        'pod = "web-0"\n'
        'namespace = "shop"\n'
        'image = "nginx:1.25"\n'
        "[[agents.containers]]\n"
        'id = "a2"\n'
        "[[agents]]\n"
        'address = "unix:///run/shimstats/agent.sock"\n'
        'containers = [{ id = "b1", pod = "db-0" }]\n'
    )
    assert load_config(str(path)) == (
        AgentTarget(
            "vsock://3:2048",
            (ContainerTarget("a1", "web", "web-0", "shop", "nginx:1.25"), ContainerTarget("a2")),
            pod="web-0",  # the sandbox's pod and namespace: what its containers say, when they agree
            namespace="shop",
        ),
        AgentTarget("unix:///run/shimstats/agent.sock", (ContainerTarget("b1", pod="db-0"),), pod="db-0"),
    )


OK_AGENT = {"address": "vsock://3:2048", "containers": [{"id": "a1"}]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "no \\[\\[agents\\]\\]"),
        ({"agents": [OK_AGENT], "timeout": 3}, "unknown key\\(s\\) timeout"),
        ({"agents": [{"containers": [{"id": "a"}]}]}, "agents #1: address must be a string"),
        ({"agents": [{"address": "tcp://x:1", "containers": [{"id": "a"}]}]}, "agents #1: .*tcp"),
        ({"agents": [{"address": "vsock://3:2048"}]}, "agents #1 \\(vsock://3:2048\\): no"),
        ({"agents": [OK_AGENT, OK_AGENT]}, "agents #2: address vsock://3:2048 is listed twice"),
        (
            {"agents": [{**OK_AGENT, "containers": [{"id": "a"}, {"id": "a"}]}]},
            "container 'a' is listed twice",
        ),
        ({"agents": [{**OK_AGENT, "containers": [{"pod": "p"}]}]}, "container #1: id is missing or empty"),
        ({"agents": [{**OK_AGENT, "containers": [{"id": 7}]}]}, "container #1: id must be a string"),
        ({"agents": [{**OK_AGENT, "containers": [{"id": "a", "labels": "x"}]}]}, "unknown key\\(s\\) labels"),
    ],
)
def test_a_bad_config_is_refused_naming_the_entry(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(data, "/etc/shimstats/exporter.toml")
    assert str(caught.value).startswith("/etc/shimstats/exporter.toml")


def test_unreadable_or_invalid_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read config {tmp_path}/none.toml"):
        load_config(str(tmp_path / "none.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[[agents]\n")
    with pytest.raises(ConfigError, match=f"config {broken} is not valid TOML"):
        load_config(str(broken))


def test_agent_flag_needs_containers_and_config_takes_none() -> None:
    assert targets("vsock://3:2048", ["a", "b"], None) == (
        AgentTarget("vsock://3:2048", (ContainerTarget("a"), ContainerTarget("b"))),
    )
    with pytest.raises(ConfigError, match="--agent needs at least one --container"):
        targets("vsock://3:2048", [], None)
    with pytest.raises(ConfigError, match="listed twice"):
        targets("vsock://3:2048", ["a", "a"], None)
    with pytest.raises(ConfigError, match="--container goes with --agent"):
        targets(None, ["a"], str(EXAMPLE))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9110", ("127.0.0.1", 9110)), ("[::1]:0", ("::1", 0)), ("0.0.0.0:65535", ("0.0.0.0", 65535))],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert host_port(text) == expected


@pytest.mark.parametrize("text", ["9110", ":9110", "host:", "host:http", "host:65536", "host:-1"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not HOST:PORT"):
        host_port(text)

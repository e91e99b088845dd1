"""One bad file costs one figure (issue 15 §1), over a real unix socket on copies of real-kernel captures.

Each case damages one file of a fixture copy the way the issue found it (a node root capture without
memory.max_usage_in_bytes, an empty memory.events, a v2 memory.stat without ``file``, a line the parser
does not expect, a negative number) and checks: the answer equals the undamaged copy's answer except for
that one figure; Diagnostics/ReadErrors counts the file once per call; the agent logs it once, not once per
call; and the exporter publishes the count as ``shimstats_agent_read_errors_total{file=...}``. Only what the
working set needs still fails the call.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from guest_agent.service import DIAGNOSTICS_SERVICE
from shimstats._proto.kata import agent_pb2
from shimstats._proto.shimstats.agent.v1 import diagnostics_pb2
from shimstats.exporter import AgentPool, AgentTarget, ContainerCollector, ContainerTarget, StaticTargets
from shimstats.ttrpc import Client, Code, TtrpcError
from tests.integration.harness import AgentProcess, Fixture, fixtures, short_tmp
from tests.integration.test_guest_socket import serving as serving_tree

BY_NAME = {f.name: f for f in fixtures()}
V1_ROOT = BY_NAME["v1-6.18.44-fc-v669-root"]
V1_CONTAINER = BY_NAME["v1-6.18.44-fc-v669-container-pagecache"]
V2_CONTAINER = BY_NAME["v2-6.1.0-56-amd64-container-inactive-file"]


def copy(fx: Fixture, tmp: Path) -> Fixture:
    target = tmp / fx.name
    shutil.copytree(fx.path, target, symlinks=True)
    return Fixture(target, fx.meta)


def cgroup_dir(fx: Fixture, controller: str) -> Path:
    base = fx.path / "cgroup"
    if fx.guest_version == 1:
        base = base / controller
    return base / str(fx.meta["container_path"]).lstrip("/")


def serving(fx: Fixture, directory: Path) -> contextlib.AbstractAsyncContextManager[Client]:
    """Our agent service on ``directory/a.sock`` for the fixture (test_guest_socket's), and a client."""
    explicit = {} if fx.is_root else {fx.request_id: str(fx.meta["container_path"])}
    roots = (fx.request_id,) if fx.is_root else ()
    return serving_tree(directory / "a.sock", fx.path / "cgroup", fx.path / "meminfo", explicit, roots)


async def stats(client: Client, fx: Fixture) -> dict[str, object]:
    payload = agent_pb2.StatsContainerRequest(container_id=fx.request_id).SerializeToString()
    answer = await client.call("grpc.AgentService", "StatsContainer", payload, timeout=5)
    return MessageToDict(
        agent_pb2.StatsContainerResponse.FromString(answer), preserving_proto_field_name=True
    )


async def read_errors(client: Client) -> dict[str, int]:
    raw = await client.call(DIAGNOSTICS_SERVICE, "ReadErrors", b"", timeout=5)
    return {e.file: e.count for e in diagnostics_pb2.ReadErrorsResponse.FromString(raw).files}


def drop(d: dict[str, object], *path: str) -> dict[str, object]:
    """``d`` with the field at ``path`` removed (MessageToDict leaves zeros out, so 0 == absent)."""
    out = dict(d)
    if len(path) == 1:
        out.pop(path[0], None)
    else:
        inner = out.get(path[0])
        assert isinstance(inner, dict)
        out[path[0]] = drop(inner, *path[1:])
    return out


def rewrite(path: Path, edit: Callable[[list[str]], list[str]]) -> None:
    lines = edit(path.read_text().splitlines())
    path.write_text("".join(line + "\n" for line in lines))


CASES = [
    # (id, fixture, controller, damage(dir), file counted, figure path in the answer that goes)
    (
        "v1-root-without-max-usage",
        V1_ROOT,
        "memory",
        lambda d: (d / "memory.max_usage_in_bytes").unlink(),
        "memory.max_usage_in_bytes",
        ("cgroup_stats", "memory_stats", "usage", "max_usage"),
    ),
    (
        "v2-empty-memory-events",
        V2_CONTAINER,
        "memory",
        lambda d: (d / "memory.events").write_text(""),
        "memory.events",
        ("cgroup_stats", "memory_stats", "usage", "failcnt"),
    ),
    (
        "v2-memory-stat-without-file",
        V2_CONTAINER,
        "memory",
        lambda d: rewrite(d / "memory.stat", lambda ls: [x for x in ls if not x.startswith("file ")]),
        "memory.stat",
        ("cgroup_stats", "memory_stats", "cache"),
    ),
    (
        "v1-negative-failcnt",
        V1_CONTAINER,
        "memory",
        lambda d: (d / "memory.failcnt").write_text("-1\n"),
        "memory.failcnt",
        ("cgroup_stats", "memory_stats", "usage", "failcnt"),
    ),
    (
        "v1-cpuacct-stat-garbled",
        V1_CONTAINER,
        "cpuacct",
        lambda d: (d / "cpuacct.stat").write_text("user ten\nsystem 3\n"),
        "cpuacct.stat",
        ("cgroup_stats", "cpu_stats", "cpu_usage", "usage_in_usermode"),
    ),
]


@pytest.mark.parametrize(
    ("fx", "controller", "damage", "file", "figure"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_a_bad_optional_file_costs_its_figure_is_counted_and_logged_once(
    fx, controller, damage, file, figure, caplog
):
    with short_tmp() as tmp:
        good, bad = copy(fx, tmp / "good"), copy(fx, tmp / "bad")
        damage(cgroup_dir(bad, controller))
        (tmp / "s1").mkdir()
        (tmp / "s2").mkdir()
        async with serving(good, tmp / "s1") as client:
            expected = await stats(client, good)
            assert await read_errors(client) == {}
        with caplog.at_level(logging.WARNING, logger="guest_agent"):
            async with serving(bad, tmp / "s2") as client:
                first = await stats(client, bad)
                second = await stats(client, bad)
                counts = await read_errors(client)
    figure_path = figure
    if figure == ("cgroup_stats", "memory_stats", "cache"):
        expected = drop(expected, "cgroup_stats", "memory_stats", "stats", "file")  # the key is gone too
    assert drop(first, *figure_path) == drop(expected, *figure_path)
    assert first == second
    assert counts == {file: 2}  # one per call
    logged = [r for r in caplog.records if file in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]  # once per container and file


async def test_a_line_the_parser_does_not_expect_costs_that_line_only(caplog):
    with short_tmp() as tmp:
        fx = copy(V1_CONTAINER, tmp)
        rewrite(cgroup_dir(fx, "memory") / "memory.stat", lambda ls: [*ls[:3], "bogus line here", *ls[3:]])
        async with serving(fx, tmp) as client:
            answer = await stats(client, fx)
            counts = await read_errors(client)
    keys = answer["cgroup_stats"]["memory_stats"]["stats"]  # type: ignore[index]
    assert "total_inactive_file" in keys
    assert "bogus" not in keys
    assert counts == {"memory.stat": 1}
    assert any("line 4: expected 'key value'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("fx", "key"), [(V1_CONTAINER, "total_inactive_file"), (V2_CONTAINER, "inactive_file")], ids=["v1", "v2"]
)
async def test_the_working_set_key_stays_required(fx, key):
    with short_tmp() as tmp:
        copied = copy(fx, tmp)
        rewrite(
            cgroup_dir(copied, "memory") / "memory.stat", lambda ls: [x for x in ls if x.split()[0] != key]
        )
        async with serving(copied, tmp) as client:
            with pytest.raises(TtrpcError) as info:
                await stats(client, copied)
    assert info.value.code == Code.INTERNAL
    assert f"memory.stat: key {key!r} missing" in info.value.message


@pytest.mark.parametrize("name", ["memory.usage_in_bytes", "memory.current"])
async def test_the_usage_file_stays_required(name):
    fx = V1_CONTAINER if name == "memory.usage_in_bytes" else V2_CONTAINER
    with short_tmp() as tmp:
        copied = copy(fx, tmp)
        (cgroup_dir(copied, "memory") / name).unlink()
        async with serving(copied, tmp) as client:
            with pytest.raises(TtrpcError) as info:
                await stats(client, copied)
    assert info.value.code == Code.INTERNAL
    assert f"{name}: missing" in info.value.message


def test_the_exporter_publishes_the_agents_counts():
    # A real agent process on a damaged copy; the exporter's own pool and collector read it.
    with short_tmp() as tmp:
        fx = copy(V1_ROOT, tmp / "fx")
        (cgroup_dir(fx, "memory") / "memory.max_usage_in_bytes").unlink()
        (tmp / "agent").mkdir()
        with AgentProcess(tmp / "agent", fx.agent_args()) as agent:
            target = AgentTarget(agent.address, (ContainerTarget(fx.request_id),))
            with AgentPool(timeout=5.0, kata_host="v1") as pool:
                collector = ContainerCollector(pool, StaticTargets([target]))
                list(collector.collect())
                families = {m.name: m for m in collector.collect()}
    # prometheus_client strips _total from a counter family's name; the sample keeps it
    samples = [s for s in families["shimstats_agent_read_errors"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in samples] == [
        ({"sandbox": agent.address, "file": "memory.max_usage_in_bytes"}, 2.0)
    ]

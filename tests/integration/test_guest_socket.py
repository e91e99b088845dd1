"""The guest agent over a real unix socket: a ttrpc client built from our protos calls StatsContainer.

Against captured fixtures (tests/fixtures/cgroupfs, real kernels only) the answer must equal, field by field,
the response built here straight from the fixture's files by the rules in ``truth`` (written independently
of guest_agent's parsers: plain split() and int()). Also: statuses for bad ids, vanished cgroups and garbled
files, the health service, and UNIMPLEMENTED for the rest of kata-agent's API.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shimstats._proto.kata import health_pb2
from shimstats.ttrpc import Code, TtrpcError
from tests.integration.guest_agent_helpers import (
    as_dict,
    fixture_dirs,
    int_file,
    keyed_file,
    serving,
    stats,
    truth,
)

# ---------------------------------------------------------------------------------------------------------
# Fixtures, field by field.


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
async def test_answer_equals_the_fixture_field_by_field(fixture, sock_dir):
    meta = json.loads((fixture / "meta.json").read_text())
    async with serving(sock_dir / "a.sock", fixture / "cgroup", fixture / "meminfo") as client:
        answer = await stats(client, meta["container_id"])
    expected = truth(fixture / "cgroup", meta["container_path"], fixture / "meminfo")
    assert as_dict(answer) == as_dict(expected)
    # The host tells v1 from v2 by the keys of the raw memory.stat map alone.
    keys = set(answer.cgroup_stats.memory_stats.stats)
    assert ("total_inactive_file" in keys) == (meta["mode"] in ("v1", "hybrid"))
    assert ("anon" in keys) == (meta["mode"] == "v2")


def test_fixtures_cover_the_layouts_we_claim():
    # The parametrized test above is only as good as the fixtures it runs on: a container and a root fixture
    # for each of v1 (or hybrid, v1 memory) and v2 must be there.
    metas = [json.loads((f / "meta.json").read_text()) for f in fixture_dirs()]
    for modes in ({"v1", "hybrid"}, {"v2"}):
        ours = [m for m in metas if m["mode"] in modes]
        assert any(m["container_path"] == "/" for m in ours), f"no root fixture for {modes}"
        assert any(m["container_path"] != "/" for m in ours), f"no container fixture for {modes}"


def test_v1_root_usage_follows_the_kernels_root_rule():
    # The v1 kernel reports the root's usage as file + anon (mem_cgroup_usage), so the agent needs no special
    # case: its answer is usage_in_bytes, which must agree with total_cache + total_rss up to the few pages
    # that move between the capture's sequential reads and v1's per-cpu counter batching (≤ 1 MiB here).
    roots = [f for f in fixture_dirs() if json.loads((f / "meta.json").read_text())["container_path"] == "/"]
    v1_roots = [f for f in roots if (f / "cgroup" / "memory" / "memory.usage_in_bytes").exists()]
    if not v1_roots:
        pytest.skip("no v1 root fixture")
    for fixture in v1_roots:
        memory = fixture / "cgroup" / "memory"
        stat = keyed_file(memory / "memory.stat")
        assert (
            abs(int_file(memory / "memory.usage_in_bytes") - (stat["total_cache"] + stat["total_rss"]))
            <= 1 << 20
        )


def copy_fixture(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A private copy of a container fixture (never modify the originals) and its meta.json."""
    containers = [
        f for f in fixture_dirs() if json.loads((f / "meta.json").read_text())["container_path"] != "/"
    ]
    if not containers:
        pytest.skip("no container fixture captured")
    source = containers[0]
    target = tmp_path / source.name
    shutil.copytree(source, target, symlinks=True)
    return target, json.loads((source / "meta.json").read_text())


def container_dirs(cgroup: Path, rel: str) -> list[Path]:
    """Every hierarchy's directory of the container (one per v1 controller, one for v2)."""
    if (cgroup / "cgroup.controllers").exists():
        return [cgroup / rel]
    return [d / rel for d in cgroup.iterdir() if d.is_dir() and not d.is_symlink() and (d / rel).is_dir()]


# ---------------------------------------------------------------------------------------------------------
# Statuses.


async def test_bad_unknown_and_vanished_ids_get_their_statuses_on_one_connection(tmp_path, sock_dir):
    fixture, meta = copy_fixture(tmp_path)
    cid, rel = meta["container_id"], meta["container_path"].strip("/")
    async with serving(sock_dir / "a.sock", fixture / "cgroup", fixture / "meminfo") as client:
        for bad in ("../memory", "a/b", "x" * 200):
            with pytest.raises(TtrpcError) as info:
                await stats(client, bad)
            assert info.value.code == Code.INVALID_ARGUMENT
        with pytest.raises(TtrpcError) as info:
            await stats(client, "no-such-container")
        assert info.value.code == Code.NOT_FOUND
        assert "no-such-container" in info.value.message
        before = await stats(client, cid)  # found (and cached) while it exists
        assert before.cgroup_stats.memory_stats.usage.usage > 0
        for d in container_dirs(fixture / "cgroup", rel):
            shutil.rmtree(d)
        with pytest.raises(TtrpcError) as info:
            await stats(client, cid)
        assert info.value.code == Code.NOT_FOUND
        assert cid in info.value.message
        # The connection survives every error: the root still answers.
        assert (await stats(client, "")).cgroup_stats.memory_stats.usage.usage > 0


async def test_explicit_mapping_to_a_vanished_cgroup_is_not_found(tmp_path, sock_dir):
    fixture, meta = copy_fixture(tmp_path)
    explicit = {"web": meta["container_path"], "gone": "/never/existed"}
    async with serving(sock_dir / "a.sock", fixture / "cgroup", fixture / "meminfo", explicit) as client:
        answer = await stats(client, "web")
        expected = truth(fixture / "cgroup", meta["container_path"], fixture / "meminfo")
        assert as_dict(answer) == as_dict(expected)
        with pytest.raises(TtrpcError) as info:
            await stats(client, "gone")
        assert info.value.code == Code.NOT_FOUND
        assert "'gone'" in info.value.message


async def test_a_garbled_working_set_key_is_internal_and_names_file_and_line(tmp_path, sock_dir):
    # Only what the working set needs is required: here the inactive file line of memory.stat.
    fixture, meta = copy_fixture(tmp_path)
    cgroup = fixture / "cgroup"
    rel = meta["container_path"].strip("/")
    v2 = (cgroup / "cgroup.controllers").exists()
    stat_file = (cgroup / rel if v2 else cgroup / "memory" / rel) / "memory.stat"
    lines = stat_file.read_text().splitlines()
    key = "inactive_file" if v2 else "total_inactive_file"
    number = next(i for i, line in enumerate(lines) if line.split()[0] == key)
    lines[number] = f"{key} twelve"
    stat_file.write_text("\n".join(lines) + "\n")
    async with serving(sock_dir / "a.sock", cgroup, fixture / "meminfo") as client:
        with pytest.raises(TtrpcError) as info:
            await stats(client, meta["container_id"])
        assert info.value.code == Code.INTERNAL
        assert f"{stat_file}:{number + 1}: expected an integer, got 'twelve'" in info.value.message
        assert meta["container_id"] in info.value.message


async def test_health_version_and_unimplemented_methods(tmp_path, sock_dir):
    fixture, _ = copy_fixture(tmp_path)
    async with serving(sock_dir / "a.sock", fixture / "cgroup", fixture / "meminfo") as client:
        check = health_pb2.CheckRequest(service="").SerializeToString()
        health = health_pb2.HealthCheckResponse.FromString(await client.call("grpc.Health", "Check", check))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        version = health_pb2.VersionCheckResponse.FromString(
            await client.call("grpc.Health", "Version", check)
        )
        assert version.agent_version.startswith("shimstats-agent ")
        for service, method in (
            ("grpc.AgentService", "CreateContainer"),
            ("grpc.AgentService", "ListRoutes"),
        ):
            with pytest.raises(TtrpcError) as info:
                await client.call(service, method, b"")
            assert info.value.code == Code.UNIMPLEMENTED
        with pytest.raises(TtrpcError) as info:
            await client.call("grpc.AgentService", "StatsContainer", b"\xff\xff")  # not a protobuf message
        assert info.value.code == Code.INVALID_ARGUMENT

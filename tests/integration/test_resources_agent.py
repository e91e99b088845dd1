"""shimstats.agent.v1.Resources/Get over a real unix socket, served beside StatsContainer by AgentService.

Against every captured fixture (real kernels only) the answer must equal the one built here from the
fixture's files by the issue's list of files and plain split()/int(): v1 files live in ``<controller>/PATH``
(cpu.* in cpu/, memory.* in memory/, pids.max in pids/, cpuset.cpus in cpuset/), v2 files in ``PATH``; a
file not there is listed as absent; populated is v2 cgroup.events "populated 1", v1 a non-empty
cgroup.procs in memory/, always true for the root. Then the statuses, as StatsContainer gives them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shimstats._proto.shimstats.agent.v1 import resources_pb2
from shimstats.ttrpc import Client, Code, TtrpcError
from tests.integration.test_guest_socket import fixture_dirs, serving, sock_dir

__all__ = ["sock_dir"]  # the fixture is used here by name

SERVICE = "shimstats.agent.v1.Resources"
FILES = {
    1: [
        ("cpu", "cpu.shares"),
        ("cpu", "cpu.cfs_quota_us"),
        ("cpu", "cpu.cfs_period_us"),
        ("memory", "memory.limit_in_bytes"),
        ("memory", "memory.memsw.limit_in_bytes"),
        ("memory", "memory.soft_limit_in_bytes"),
        ("pids", "pids.max"),
        ("cpuset", "cpuset.cpus"),
    ],
    2: [
        ("", "cpu.weight"),
        ("", "cpu.max"),
        ("", "memory.max"),
        ("", "memory.high"),
        ("", "memory.low"),
        ("", "memory.min"),
        ("", "memory.swap.max"),
        ("", "memory.oom.group"),
        ("", "pids.max"),
        ("", "cpuset.cpus.effective"),
    ],
}


def _cpus(text: str) -> list[int]:
    out: set[int] = set()
    for part in text.split(",") if text else []:
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return sorted(out)


def truth(cgroup: Path, path: str) -> resources_pb2.GetResponse:
    version = 2 if (cgroup / "cgroup.controllers").exists() else 1
    rel = path.strip("/")
    answer = resources_pb2.GetResponse(cgroup_path=path, page_size=4096)
    if path == "/":
        answer.populated = True
    elif version == 2:
        answer.populated = "populated 1" in (cgroup / rel / "cgroup.events").read_text().splitlines()
    else:
        answer.populated = bool((cgroup / "memory" / rel / "cgroup.procs").read_text().strip())
    # the two counts beside the settings: oom_kill from memory.events (v2) or memory.oom_control (v1), and
    # the processes listed in cgroup.procs of the hierarchy containers are found in (memory's on v1)
    memory = cgroup / rel if version == 2 else cgroup / "memory" / rel
    events = memory / ("memory.events" if version == 2 else "memory.oom_control")
    if events.is_file():
        counts = dict(line.split() for line in events.read_text().splitlines())
        if "oom_kill" in counts:
            answer.oom_kills = int(counts["oom_kill"])
    procs = memory / "cgroup.procs"
    if procs.is_file():
        answer.processes = len(procs.read_text().split())
    for controller, name in FILES[version]:
        file = cgroup / controller / rel / name
        if not file.is_file():
            answer.absent.append(name)
            continue
        raw = file.read_text().rstrip("\n")
        setting = answer.settings.add(file=name, cgroup_version=version, raw=raw)
        if name.startswith("cpuset."):
            setting.cpus.extend(_cpus(raw))
            continue
        for token in raw.split(" "):
            if token == "max":
                setting.values.add(max=True)
            else:
                setting.values.add(number=int(token))
    return answer


async def get(client: Client, container_id: str) -> resources_pb2.GetResponse:
    payload = resources_pb2.GetRequest(container_id=container_id).SerializeToString()
    return resources_pb2.GetResponse.FromString(await client.call(SERVICE, "Get", payload, timeout=5))


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
async def test_answer_equals_the_fixture(fixture, sock_dir):
    meta = json.loads((fixture / "meta.json").read_text())
    async with serving(sock_dir / "a.sock", fixture / "cgroup", fixture / "meminfo") as client:
        answer = await get(client, meta["container_id"])
    assert answer == truth(fixture / "cgroup", meta["container_path"])


def test_the_resized_fixtures_are_among_them():
    """Guards the test above: it must see real-kernel trees with limits set and cpuset enabled."""
    names = [p.name for p in fixture_dirs()]
    assert any(n.startswith("v2-") and n.endswith("-container-resized-linear") for n in names)
    assert any(n.startswith("v2-") and n.endswith("-container-resized-quadratic") for n in names)


def _copy(tmp_path: Path, suffix: str = "container-resized-quadratic") -> tuple[Path, Path, str]:
    (source,) = (p for p in fixture_dirs() if p.name.startswith("v2-") and p.name.endswith(suffix))
    shutil.copytree(source, tmp_path / "fx", symlinks=True)
    meta = json.loads((source / "meta.json").read_text())
    return tmp_path / "fx" / "cgroup", tmp_path / "fx" / "meminfo", meta["container_path"]


async def test_statuses(tmp_path, sock_dir):
    cgroup, meminfo, path = _copy(tmp_path)
    container_id = path.strip("/")
    async with serving(sock_dir / "a.sock", cgroup, meminfo) as client:
        for bad in ("../etc", "a/b", "x" * 200):
            with pytest.raises(TtrpcError) as err:
                await get(client, bad)
            assert err.value.code == Code.INVALID_ARGUMENT
        with pytest.raises(TtrpcError) as err:
            await get(client, "nobody-home")
        assert (err.value.code, err.value.message) == (
            Code.NOT_FOUND,
            "container 'nobody-home': no cgroup found",
        )
        with pytest.raises(TtrpcError) as err:
            await client.call(SERVICE, "Get", b"\xff", timeout=5)
        assert err.value.code == Code.INVALID_ARGUMENT
        assert "GetRequest does not decode" in err.value.message

        root = await get(client, "")
        assert (root.cgroup_path, root.populated) == ("/", True)

        assert (await get(client, container_id)).populated
        cpu_max = cgroup / container_id / "cpu.max"
        cpu_max.write_text("lots 100000\n")
        with pytest.raises(TtrpcError) as err:
            await get(client, container_id)
        assert err.value.code == Code.INTERNAL
        assert f"{cpu_max}:1: expected an integer or 'max', got 'lots'" in err.value.message

        shutil.rmtree(cgroup / container_id)
        with pytest.raises(TtrpcError) as err:
            await get(client, container_id)
        assert err.value.code == Code.NOT_FOUND
        assert f"container {container_id!r}" in err.value.message


async def test_stats_and_resources_share_one_server(tmp_path, sock_dir):
    cgroup, meminfo, path = _copy(tmp_path)
    async with serving(sock_dir / "a.sock", cgroup, meminfo) as client:
        stats = await client.call("grpc.AgentService", "StatsContainer", b"", timeout=5)
        settings = await get(client, path.strip("/"))
        with pytest.raises(TtrpcError) as err:
            await client.call(SERVICE, "Set", b"", timeout=5)
    assert stats  # the root's stats: never empty
    assert [s.file for s in settings.settings][:2] == ["cpu.weight", "cpu.max"]
    assert err.value.code == Code.UNIMPLEMENTED

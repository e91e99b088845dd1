"""The guest agent over a real unix socket: a ttrpc client built from our protos calls StatsContainer.

Against captured fixtures (tests/fixtures/cgroupfs, real kernels only) the answer must equal, field by field,
the response built here straight from the fixture's files by the rules in ``truth`` (written independently
of guest_agent's parsers: plain split() and int()). Also: statuses for bad ids, vanished cgroups and garbled
files, the health service, and UNIMPLEMENTED for the rest of kata-agent's API.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from guest_agent.layout import detect_layout
from guest_agent.lookup import ContainerLocator
from guest_agent.reader import CgroupReader
from guest_agent.service import AgentService
from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats.ttrpc import Client, Code, Server, TtrpcError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroupfs"
U64 = 2**64 - 1
NS = 1_000_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
KERNEL_PARTS = (
    "kernel_stack",
    "pagetables",
    "sec_pagetables",
    "percpu",
    "slab_reclaimable",
    "slab_unreclaimable",
    "vmalloc",
)
BLKIO_POLICIES = (
    # (kata list, kernel file) per I/O policy in runc's order (opencontainers/cgroups fs/blkio.go GetStats);
    # file names as block/bfq-cgroup.c, cfq-iosched.c and blk-throttle.c print them, typed from there.
    (
        ("io_serviced_recursive", "blkio.bfq.io_serviced_recursive"),
        ("io_service_bytes_recursive", "blkio.bfq.io_service_bytes_recursive"),
        ("sectors_recursive", "blkio.bfq.sectors_recursive"),
        ("io_service_time_recursive", "blkio.bfq.io_service_time_recursive"),
        ("io_wait_time_recursive", "blkio.bfq.io_wait_time_recursive"),
        ("io_merged_recursive", "blkio.bfq.io_merged_recursive"),
        ("io_queued_recursive", "blkio.bfq.io_queued_recursive"),
        ("io_time_recursive", "blkio.bfq.time_recursive"),
    ),
    (
        ("io_serviced_recursive", "blkio.bfq.io_serviced_recursive"),
        ("io_service_bytes_recursive", "blkio.bfq.io_service_bytes_recursive"),
    ),
    (
        ("io_serviced_recursive", "blkio.io_serviced_recursive"),
        ("io_service_bytes_recursive", "blkio.io_service_bytes_recursive"),
        ("sectors_recursive", "blkio.sectors_recursive"),
        ("io_service_time_recursive", "blkio.io_service_time_recursive"),
        ("io_wait_time_recursive", "blkio.io_wait_time_recursive"),
        ("io_merged_recursive", "blkio.io_merged_recursive"),
        ("io_queued_recursive", "blkio.io_queued_recursive"),
        ("io_time_recursive", "blkio.time_recursive"),
    ),
    (
        ("io_serviced_recursive", "blkio.throttle.io_serviced_recursive"),
        ("io_service_bytes_recursive", "blkio.throttle.io_service_bytes_recursive"),
    ),
    (
        ("io_serviced_recursive", "blkio.throttle.io_serviced"),
        ("io_service_bytes_recursive", "blkio.throttle.io_service_bytes"),
    ),
)


def fixture_dirs() -> list[Path]:
    return sorted(p for p in FIXTURES.iterdir() if (p / "meta.json").is_file()) if FIXTURES.is_dir() else []


# ---------------------------------------------------------------------------------------------------------
# Ground truth: the response a kata-compatible agent must give, from the files by the stated rules.


def _int(path: Path) -> int:
    text = path.read_text().strip()
    return U64 if text == "max" else max(int(text), 0)


def _kv(path: Path) -> dict[str, int]:
    return {k: max(int(v), 0) for k, v in (line.split() for line in path.read_text().splitlines())}


def _opt_int(path: Path) -> int | None:
    return _int(path) if path.exists() else None


def _memory_data(target: agent_pb2.MemoryData, usage: int, max_usage: int, failcnt: int, limit: int) -> None:
    target.SetInParent()
    target.usage, target.max_usage, target.failcnt, target.limit = usage, max_usage, failcnt, limit


def _v1_counter(target: agent_pb2.MemoryData, d: Path, prefix: str) -> None:
    if (d / f"{prefix}usage_in_bytes").exists():
        _memory_data(
            target,
            _int(d / f"{prefix}usage_in_bytes"),
            _int(d / f"{prefix}max_usage_in_bytes"),
            _int(d / f"{prefix}failcnt"),
            _int(d / f"{prefix}limit_in_bytes"),
        )


def _blkio_lines(path: Path) -> list[tuple[int, int, str, int]]:
    """v1 blkio: 'maj:min Op value' or 'maj:min value'; the file's last 'Total n' line is dropped."""
    out = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields[0] == "Total":
            continue
        major, minor = (int(x) for x in fields[0].split(":"))
        out.append((major, minor, fields[1].lower() if len(fields) == 3 else "", int(fields[-1])))
    return out


def truth(cgroup: Path, path: str, meminfo: Path) -> agent_pb2.StatsContainerResponse:
    """What the agent must answer for ``path`` of the tree ``cgroup`` (rules in guest_agent.reader/kata)."""
    rel = path.strip("/")
    v2 = (cgroup / "cgroup.controllers").exists()
    response = agent_pb2.StatsContainerResponse()
    cs = response.cgroup_stats
    cs.SetInParent()
    mem_dir = cgroup / rel if v2 else cgroup / "memory" / rel
    stat = _kv(mem_dir / "memory.stat")
    ms = cs.memory_stats
    ms.SetInParent()
    ms.stats.update(stat)
    if v2:
        ms.cache, ms.use_hierarchy = stat["file"], True
        kernel = stat["kernel"] if "kernel" in stat else sum(stat.get(k, 0) for k in KERNEL_PARTS)
        _memory_data(ms.kernel_usage, kernel, 0, 0, U64)
        if rel == "":  # root: anon + file; swap from meminfo, swap only
            _memory_data(ms.usage, stat["anon"] + stat["file"], 0, 0, U64)
            info = {line.split(":")[0]: int(line.split()[1]) for line in meminfo.read_text().splitlines()}
            _memory_data(ms.swap_usage, (info["SwapTotal"] - info["SwapFree"]) * 1024, 0, 0, U64)
        else:
            events = _kv(mem_dir / "memory.events")
            peak = _opt_int(mem_dir / "memory.peak") or 0
            current, limit = _int(mem_dir / "memory.current"), _int(mem_dir / "memory.max")
            _memory_data(ms.usage, current, peak, events["max"], limit)
            if (mem_dir / "memory.swap.current").exists():
                swap_events = mem_dir / "memory.swap.events"
                _memory_data(
                    ms.swap_usage,
                    _int(mem_dir / "memory.swap.current"),
                    _opt_int(mem_dir / "memory.swap.peak") or 0,
                    _kv(swap_events).get("fail", 0) if swap_events.exists() else 0,
                    _int(mem_dir / "memory.swap.max"),
                )
    else:
        ms.cache, ms.use_hierarchy = stat["cache"], _int(mem_dir / "memory.use_hierarchy") == 1
        _v1_counter(ms.usage, mem_dir, "memory.")
        _v1_counter(ms.swap_usage, mem_dir, "memory.memsw.")
        _v1_counter(ms.kernel_usage, mem_dir, "memory.kmem.")

    cpu = cs.cpu_stats
    if v2:
        cpu_stat = _kv(cgroup / rel / "cpu.stat")
        cpu.cpu_usage.SetInParent()
        cpu.cpu_usage.total_usage = cpu_stat["usage_usec"] * 1000
        cpu.cpu_usage.usage_in_usermode = cpu_stat["user_usec"] * 1000
        cpu.cpu_usage.usage_in_kernelmode = cpu_stat["system_usec"] * 1000
        if "nr_periods" in cpu_stat:
            t = cpu.throttling_data
            t.SetInParent()
            t.periods, t.throttled_periods = cpu_stat["nr_periods"], cpu_stat["nr_throttled"]
            t.throttled_time = cpu_stat["throttled_usec"] * 1000
    else:
        acct = cgroup / "cpuacct" / rel
        ticks = _kv(acct / "cpuacct.stat")
        cpu.cpu_usage.SetInParent()
        cpu.cpu_usage.total_usage = _int(acct / "cpuacct.usage")
        cpu.cpu_usage.usage_in_usermode = ticks["user"] * NS // CLK_TCK
        cpu.cpu_usage.usage_in_kernelmode = ticks["system"] * NS // CLK_TCK
        cpu.cpu_usage.percpu_usage.extend(int(x) for x in (acct / "cpuacct.usage_percpu").read_text().split())
        cpu_stat = _kv(cgroup / "cpu" / rel / "cpu.stat")
        t = cpu.throttling_data
        t.SetInParent()
        t.periods, t.throttled_periods = cpu_stat["nr_periods"], cpu_stat["nr_throttled"]
        t.throttled_time = cpu_stat["throttled_time"]

    pids_dir = cgroup / rel if v2 else cgroup / "pids" / rel
    if (pids_dir / "pids.current").exists():
        cs.pids_stats.SetInParent()
        cs.pids_stats.current = _int(pids_dir / "pids.current")
        limit = _opt_int(pids_dir / "pids.max") or U64  # the root has no pids.max: no limit
        cs.pids_stats.limit = 0 if limit == U64 else limit

    if v2:
        io_stat = cgroup / rel / "io.stat"
        if io_stat.exists():
            cs.blkio_stats.SetInParent()
            keys = [("rbytes", "read"), ("wbytes", "write"), ("rios", "rios"), ("wios", "wios")]
            keys += [("dbytes", "dbytes"), ("dios", "dios")]
            for line in io_stat.read_text().splitlines():
                device, *pairs = line.split()
                major, minor = (int(x) for x in device.split(":"))
                values = dict(pair.split("=", 1) for pair in pairs)
                for key, op in keys:
                    if key in values:
                        cs.blkio_stats.io_service_bytes_recursive.add(
                            major=major, minor=minor, op=op, value=int(values[key])
                        )
    elif (cgroup / "blkio").is_dir():
        blkio = cgroup / "blkio" / rel
        files: dict[str, list[tuple[int, int, str, int]]] = {}
        for policy in BLKIO_POLICIES:  # the first whose first file lists a device
            first = blkio / policy[0][1]
            if first.exists() and _blkio_lines(first):
                files = {n: _blkio_lines(blkio / f) for n, f in policy if (blkio / f).exists()}
                break
        if files:
            cs.blkio_stats.SetInParent()
        for n, lines in files.items():
            for major, minor, op, value in lines:
                getattr(cs.blkio_stats, n).add(major=major, minor=minor, op=op, value=value)

    for huge_dir, v2_files in ((cgroup / "hugetlb" / rel, False), (cgroup / rel, True)):
        if not v2 and v2_files:
            huge_dir = cgroup / "unified" / rel
        suffix = ".current" if v2_files else ".usage_in_bytes"
        sizes = (
            {p.name.split(".")[1] for p in huge_dir.glob(f"hugetlb.*{suffix}")} if huge_dir.is_dir() else ()
        )
        for size in sorted(sizes):
            # The reservation files (mm/hugetlb_cgroup.c, 5.7+) where present, as runc reads them.
            rsvd = (huge_dir / f"hugetlb.{size}.rsvd{suffix}").exists()
            prefix = huge_dir / (f"hugetlb.{size}.rsvd" if rsvd else f"hugetlb.{size}")
            entry = cs.hugetlb_stats[size]
            entry.usage = _int(Path(f"{prefix}{suffix}"))
            if v2_files:  # v2 has no rsvd events file: the limit hits of the plain counter
                entry.failcnt = _kv(huge_dir / f"hugetlb.{size}.events")["max"]
            else:
                entry.max_usage = _int(Path(f"{prefix}.max_usage_in_bytes"))
                entry.failcnt = _int(Path(f"{prefix}.failcnt"))
    return response


# ---------------------------------------------------------------------------------------------------------
# A served agent and a client.


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ga-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(
    sock: Path,
    cgroup: Path,
    meminfo: Path,
    explicit: Mapping[str, str] | None = None,
    root_ids: tuple[str, ...] = (),
) -> AsyncIterator[Client]:
    """An agent for the tree ``cgroup`` on ``sock``, and a connected client."""
    layout = detect_layout(str(cgroup))
    reader = CgroupReader(layout, meminfo=str(meminfo))
    server = Server()
    AgentService(reader, ContainerLocator(layout, explicit, root_ids)).register(server)
    address = f"unix://{sock}"
    await server.start(address)
    client = await Client.connect(address)
    try:
        yield client
    finally:
        await client.close()
        await server.close()
        reader.close()


async def stats(client: Client, container_id: str) -> agent_pb2.StatsContainerResponse:
    payload = agent_pb2.StatsContainerRequest(container_id=container_id).SerializeToString()
    answer = await client.call("grpc.AgentService", "StatsContainer", payload, timeout=5)
    return agent_pb2.StatsContainerResponse.FromString(answer)


def as_dict(message: agent_pb2.StatsContainerResponse) -> dict[str, object]:
    return MessageToDict(message, preserving_proto_field_name=True)


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
        stat = _kv(memory / "memory.stat")
        assert (
            abs(_int(memory / "memory.usage_in_bytes") - (stat["total_cache"] + stat["total_rss"])) <= 1 << 20
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

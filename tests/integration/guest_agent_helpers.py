"""Helpers for the guest agent's socket tests: the agent served from a cgroupfs tree, and the answer it must
give built straight from the tree's files by the rules in ``truth`` (written independently of guest_agent's
parsers: plain split() and int()). The tests are tests/integration/test_guest_socket.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from guest_agent.layout import detect_layout
from guest_agent.lookup import ContainerLocator
from guest_agent.names import KERNEL_PARTS
from guest_agent.reader import CgroupReader
from guest_agent.service import AgentService
from shimstats._proto.kata import agent_pb2
from shimstats.ttrpc import Client, Server

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroupfs"
U64 = 2**64 - 1
NS = 1_000_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
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


def int_file(path: Path) -> int:
    text = path.read_text().strip()
    return U64 if text == "max" else max(int(text), 0)


def keyed_file(path: Path) -> dict[str, int]:
    return {k: max(int(v), 0) for k, v in (line.split() for line in path.read_text().splitlines())}


def _optional_int_file(path: Path) -> int | None:
    return int_file(path) if path.exists() else None


def _memory_data(target: agent_pb2.MemoryData, usage: int, max_usage: int, failcnt: int, limit: int) -> None:
    target.SetInParent()
    target.usage, target.max_usage, target.failcnt, target.limit = usage, max_usage, failcnt, limit


def _v1_counter(target: agent_pb2.MemoryData, d: Path, prefix: str) -> None:
    if (d / f"{prefix}usage_in_bytes").exists():
        _memory_data(
            target,
            int_file(d / f"{prefix}usage_in_bytes"),
            int_file(d / f"{prefix}max_usage_in_bytes"),
            int_file(d / f"{prefix}failcnt"),
            int_file(d / f"{prefix}limit_in_bytes"),
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
    stat = keyed_file(mem_dir / "memory.stat")
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
            events = keyed_file(mem_dir / "memory.events")
            peak = _optional_int_file(mem_dir / "memory.peak") or 0
            current, limit = int_file(mem_dir / "memory.current"), int_file(mem_dir / "memory.max")
            _memory_data(ms.usage, current, peak, events["max"], limit)
            if (mem_dir / "memory.swap.current").exists():
                swap_events = mem_dir / "memory.swap.events"
                _memory_data(
                    ms.swap_usage,
                    int_file(mem_dir / "memory.swap.current"),
                    _optional_int_file(mem_dir / "memory.swap.peak") or 0,
                    keyed_file(swap_events).get("fail", 0) if swap_events.exists() else 0,
                    int_file(mem_dir / "memory.swap.max"),
                )
    else:
        ms.cache, ms.use_hierarchy = stat["cache"], int_file(mem_dir / "memory.use_hierarchy") == 1
        _v1_counter(ms.usage, mem_dir, "memory.")
        _v1_counter(ms.swap_usage, mem_dir, "memory.memsw.")
        _v1_counter(ms.kernel_usage, mem_dir, "memory.kmem.")

    cpu = cs.cpu_stats
    if v2:
        cpu_stat = keyed_file(cgroup / rel / "cpu.stat")
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
        ticks = keyed_file(acct / "cpuacct.stat")
        cpu.cpu_usage.SetInParent()
        cpu.cpu_usage.total_usage = int_file(acct / "cpuacct.usage")
        cpu.cpu_usage.usage_in_usermode = ticks["user"] * NS // CLK_TCK
        cpu.cpu_usage.usage_in_kernelmode = ticks["system"] * NS // CLK_TCK
        cpu.cpu_usage.percpu_usage.extend(int(x) for x in (acct / "cpuacct.usage_percpu").read_text().split())
        cpu_stat = keyed_file(cgroup / "cpu" / rel / "cpu.stat")
        t = cpu.throttling_data
        t.SetInParent()
        t.periods, t.throttled_periods = cpu_stat["nr_periods"], cpu_stat["nr_throttled"]
        t.throttled_time = cpu_stat["throttled_time"]

    pids_dir = cgroup / rel if v2 else cgroup / "pids" / rel
    if (pids_dir / "pids.current").exists():
        cs.pids_stats.SetInParent()
        cs.pids_stats.current = int_file(pids_dir / "pids.current")
        limit = _optional_int_file(pids_dir / "pids.max") or U64  # the root has no pids.max: no limit
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
            entry.usage = int_file(Path(f"{prefix}{suffix}"))
            if v2_files:  # v2 has no rsvd events file: the limit hits of the plain counter
                entry.failcnt = keyed_file(huge_dir / f"hugetlb.{size}.events")["max"]
            else:
                entry.max_usage = int_file(Path(f"{prefix}.max_usage_in_bytes"))
                entry.failcnt = int_file(Path(f"{prefix}.failcnt"))
    return response


# ---------------------------------------------------------------------------------------------------------
# A served agent and a client.


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


@contextlib.contextmanager
def serving_in_thread(address: str, register: Callable[[Server], None]) -> Iterator[None]:
    """A ttrpc server on ``address`` in a thread of its own, stopped and joined on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []
    holder: list[Server] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = Server()
            register(server)
            loop.run_until_complete(server.start(address))
            holder.append(server)
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        if failure:
            raise failure[0]
        yield
    finally:
        if holder:
            asyncio.run_coroutine_threadsafe(holder[0].close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def agent(address: str, cgroup: Path) -> Iterator[None]:
    """Our guest agent for the tree ``cgroup``."""
    layout = detect_layout(str(cgroup))
    reader = CgroupReader(layout)
    try:
        with serving_in_thread(address, AgentService(reader, ContainerLocator(layout)).register):
            yield
    finally:
        reader.close()

"""Read a kata StatsContainerResponse (our guest agent's or a real kata-agent's) into a ContainerRecord.

**Which cgroup version the guest runs** is decided from the raw memory.stat map only, because both agents send
it verbatim and its key names differ by version: ``anon``/``file`` exist only on v2, ``cache``/``rss`` and the
``total_*`` keys only on v1 (V2_MARKERS, V1_MARKERS). A map with neither kind of key (empty: no memory
controller data, or a kernel we do not know) or with both is **unknown**: the record then has usage and limit
but no breakdown (every memory.stat figure None, so the working set is the whole usage: nothing is subtracted,
as containerd does when the key is missing) and no swap or kernel counter, because what kata's ``swap_usage``
means (memory+swap on v1, swap only on v2) cannot be decided. Block I/O is still read by its op names.

**A real kata-agent on a v2 guest** (docs/spec/metrics.md §5.3, docs/spec/mapping.md §3.1) leaves fields empty
that our agent fills. It is recognised by ``use_hierarchy`` false, which our agent never sends on v2 (v2 is
always hierarchical). What the stats map lets us rebuild is rebuilt for every v2 reply, so both agents give
the same record:

* cache (kata sends 0) = memory.stat ``file``;
* kernel usage (kata sends 0) = memory.stat ``kernel``, or on kernels before 5.19, which lack that key, the
  sum of its itemised parts (KERNEL_PARTS), a lower bound;
* kernel_tcp = memory.stat ``sock``.

What cannot be rebuilt is kept as None (sent as 0) and documented here:

* the memory failcnt (kata sends 0; the count lives in memory.events, which kata does not read);
* a swap limit of 0: kata sends 0 both for "max" (its parser fails on the word) and for a real 0, so the two
  are indistinguishable (a non-zero swap limit is kept);
* the throttled time (kata reads ``throttled_time``, a v1 key; v2 writes ``throttled_usec``).

Other rules: a memory peak of 0 means "not reported" (memory.peak needs kernel 5.19); a pids limit of 0 is the
kata spelling of "max" (no limit). v1 block I/O ops come lowercase from both agents and are restored to the
kernel's spelling (Read, Write, Sync, Async, Discard, Total). A v2 device arrives as up to six entries in
``io_service_bytes_recursive`` (ops read, write, rios, wios, dbytes, dios) and becomes one DeviceIO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from guest_agent.names import BLKIO_FIELDS, KERNEL_PARTS  # the agent's own lists: one source
from shimstats._proto.kata import agent_pb2
from shimstats.cri import is_unlimited
from shimstats.translate.record import (
    UNLIMITED,
    BlkioLine,
    ContainerRecord,
    Counter,
    CpuRecord,
    DeviceIO,
    GuestVersion,
    HugetlbRecord,
    IoRecord,
    MemoryRecord,
    MemoryStat,
    NetworkRecord,
    PidsRecord,
    Throttling,
)

V1_KEYS: Mapping[str, str] = {
    "anon": "rss",
    "file": "cache",
    "anon_thp": "rss_huge",
    "shmem": "shmem",
    "file_mapped": "mapped_file",
    "file_dirty": "dirty",
    "file_writeback": "writeback",
    "swapcached": "swapcached",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
    "pgfault": "pgfault",
    "pgmajfault": "pgmajfault",
    "pgpgin": "pgpgin",
    "pgpgout": "pgpgout",
    "workingset_refault_anon": "workingset_refault_anon",
    "workingset_refault_file": "workingset_refault_file",
}
"""MemoryStat field → v1 memory.stat key (local; the hierarchical key is ``total_`` + it), in MemoryStat's
field order: MemoryStat's first fields are these (tests/unit/test_translate.py checks it)."""
V1_LOCAL_KEYS: tuple[str, ...] = tuple(V1_KEYS.values())
V1_TOTAL_KEYS: tuple[str, ...] = tuple("total_" + key for key in V1_LOCAL_KEYS)

V2_KEYS: tuple[str, ...] = MemoryStat._fields
"""v2 memory.stat keys: every MemoryStat field, under its own name."""

V2_IO_OPS: Mapping[str, str] = {
    "read": "read_bytes",
    "write": "write_bytes",
    "dbytes": "discard_bytes",
    "rios": "read_ios",
    "wios": "write_ios",
    "dios": "discard_ios",
}
"""kata op of a v2 io.stat entry → DeviceIO field."""

V1_DIRECTIONS: Mapping[str, str] = {"Read": "read", "Write": "write", "Discard": "discard"}
"""v1 blkio op → DeviceIO direction: bytes in io_service_bytes_recursive, ios in io_serviced_recursive."""

KERNEL_OPS: Mapping[str, str] = {
    op.lower(): op for op in ("Read", "Write", "Sync", "Async", "Discard", "Total")
}
"""kata's lowercase v1 blkio op → the kernel's spelling; other ops ("" in io_time, sectors) pass unchanged."""


_V2_ONLY_OPS = frozenset(("rios", "wios", "dbytes", "dios"))
_NETWORK_FIELDS = tuple(f.name for f in agent_pb2.NetworkStats.DESCRIPTOR.fields)

V2_MARKERS = ("anon", "file", "kernel_stack", "sock", "file_mapped", "file_dirty", "file_writeback")
"""memory.stat keys only v2 kernels write, every one since 4.5 (mm/memcontrol.c memory_stats). More than
anon and file: our agent leaves out a malformed line (a negative anon, a missing file line: issue 15), and
a v2 map that lost both must still be read as v2, not as "unknown" with the whole usage as working set."""
V1_MARKERS = ("cache", "rss", "total_cache", "total_rss", "total_inactive_file")
"""memory.stat keys only v1 kernels write (every v1 kernel writes all of them; any one is enough)."""


def guest_version(response: agent_pb2.StatsContainerResponse) -> GuestVersion:
    """v1, v2 or unknown, from the memory.stat key names (rules in the module docstring)."""
    stats = response.cgroup_stats.memory_stats.stats
    v2 = any(map(stats.__contains__, V2_MARKERS))  # a C loop: no generator frame per key
    v1 = any(map(stats.__contains__, V1_MARKERS))
    if v1 == v2:
        return "unknown"
    return "v2" if v2 else "v1"


def record_from_agent(response: agent_pb2.StatsContainerResponse) -> ContainerRecord:
    """The ContainerRecord for one reply; a controller the reply lacks stays None."""
    guest = guest_version(response)
    cg = response.cgroup_stats
    gaps = guest == "v2" and cg.HasField("memory_stats") and not cg.memory_stats.use_hierarchy
    hugetlb = cg.hugetlb_stats
    network = response.network_stats
    # Positional, in ContainerRecord's field order: keywords cost a named tuple some 2k instructions a call.
    return ContainerRecord(
        guest,
        gaps,
        _memory(cg.memory_stats, guest, gaps) if cg.HasField("memory_stats") else None,
        _cpu(cg.cpu_stats, gaps) if cg.HasField("cpu_stats") else None,
        _pids(cg.pids_stats) if cg.HasField("pids_stats") else None,
        _io(cg.blkio_stats, guest) if cg.HasField("blkio_stats") else None,
        tuple(
            HugetlbRecord(size, h.usage, h.max_usage or None, h.failcnt)
            for size, h in sorted(hugetlb.items())
        )
        if hugetlb
        else (),
        tuple(_network(n) for n in network) if network else (),
    )


def _pids(ps: agent_pb2.PidsStats) -> PidsRecord:
    return PidsRecord(ps.current, ps.limit or None)


def _counter(data: agent_pb2.MemoryData) -> Counter:
    return Counter(data.usage, data.limit, data.max_usage or None, data.failcnt)


def _memory(ms: agent_pb2.MemoryStats, guest: GuestVersion, gaps: bool) -> MemoryRecord:
    usage = _counter(ms.usage)
    if guest == "v1":
        return _memory_v1(ms, usage)
    if guest == "v2":
        return _memory_v2(ms, usage, gaps)
    empty = MemoryStat()
    return MemoryRecord(usage, None, None, None, None, empty, empty, None, None)


def _memory_v1(ms: agent_pb2.MemoryStats, usage: Counter) -> MemoryRecord:
    stats = ms.stats
    memsw = _counter(ms.swap_usage) if ms.HasField("swap_usage") else None
    return MemoryRecord(  # positional, in MemoryRecord's field order
        usage,
        _swap_from_memsw(memsw, usage) if memsw is not None else None,  # swap
        memsw,
        _counter(ms.kernel_usage) if ms.HasField("kernel_usage") else None,  # kernel
        None,  # kernel_tcp
        MemoryStat(*map(stats.get, V1_TOTAL_KEYS)),  # hierarchy
        MemoryStat(*map(stats.get, V1_LOCAL_KEYS)),  # local
        stats.get("hierarchical_memory_limit"),
        stats.get("hierarchical_memsw_limit"),
    )


def _memory_v2(ms: agent_pb2.MemoryStats, usage: Counter, gaps: bool) -> MemoryRecord:
    stats = ms.stats
    breakdown = MemoryStat._make(map(stats.get, V2_KEYS))
    if gaps:
        usage = Counter(usage.usage, usage.limit, usage.max_usage, failcnt=None)
    swap = None
    if ms.HasField("swap_usage"):
        swap = _counter(ms.swap_usage)
        if gaps and swap.limit == 0:
            swap = Counter(swap.usage, None, swap.max_usage, swap.failcnt)
    return MemoryRecord(
        usage=usage,
        swap=swap,
        memsw=_memsw_from_swap(swap, usage) if swap is not None else None,
        kernel=_derived(_kernel_bytes(breakdown)),
        kernel_tcp=_derived(breakdown.sock),
        hierarchy=breakdown,
        local=breakdown,
        hierarchical_limit=None,
        hierarchical_memsw_limit=None,
    )


def _kernel_bytes(stat: MemoryStat) -> int | None:
    if stat.kernel is not None:
        return stat.kernel
    parts = [getattr(stat, key) for key in KERNEL_PARTS if getattr(stat, key) is not None]
    return sum(parts) if parts else None


def _derived(usage: int | None) -> Counter | None:
    """A counter v2 only reports as a memory.stat figure: no limit of its own, no peak, no failcnt."""
    return None if usage is None else Counter(usage=usage, limit=UNLIMITED)


def _swap_from_memsw(memsw: Counter, memory: Counter) -> Counter:
    """Swap only = memsw - memory; the limit likewise, unless memsw is unlimited."""
    limit = None
    if memsw.limit is not None and memory.limit is not None:
        limit = UNLIMITED if is_unlimited(memsw.limit) else max(memsw.limit - memory.limit, 0)
    return Counter(max(memsw.usage - memory.usage, 0), limit)


def _memsw_from_swap(swap: Counter, memory: Counter) -> Counter:
    """Memory + swap; the limit is the sum, unlimited when either part is."""
    limit = None
    if swap.limit is not None and memory.limit is not None:
        either_unlimited = is_unlimited(swap.limit) or is_unlimited(memory.limit)
        limit = UNLIMITED if either_unlimited else swap.limit + memory.limit
    return Counter(usage=memory.usage + swap.usage, limit=limit)


def _cpu(cs: agent_pb2.CpuStats, gaps: bool) -> CpuRecord:
    u = cs.cpu_usage
    throttling = None
    if cs.HasField("throttling_data"):
        t = cs.throttling_data
        throttling = Throttling(t.periods, t.throttled_periods, None if gaps else t.throttled_time)
    return CpuRecord(
        u.total_usage, u.usage_in_usermode, u.usage_in_kernelmode, tuple(u.percpu_usage), throttling
    )


def _io(blkio: agent_pb2.BlkioStats, guest: GuestVersion) -> IoRecord:
    entries = blkio.io_service_bytes_recursive
    if guest == "v2" or any(e.op in _V2_ONLY_OPS for e in entries):
        return IoRecord(_devices((e.major, e.minor, V2_IO_OPS.get(e.op), e.value) for e in entries), {})
    files = {
        name: tuple(BlkioLine(e.major, e.minor, KERNEL_OPS.get(e.op, e.op), e.value) for e in lines)
        for name in BLKIO_FIELDS
        if (lines := getattr(blkio, name))
    }
    return IoRecord(_devices(_v1_directions(files)), files)


def _v1_directions(files: Mapping[str, tuple[BlkioLine, ...]]) -> Iterable[tuple[int, int, str | None, int]]:
    for name, unit in (("io_service_bytes_recursive", "_bytes"), ("io_serviced_recursive", "_ios")):
        for line in files.get(name, ()):
            direction = V1_DIRECTIONS.get(line.op)
            yield line.major, line.minor, direction + unit if direction else None, line.value


def _devices(values: Iterable[tuple[int, int, str | None, int]]) -> tuple[DeviceIO, ...]:
    """One DeviceIO per (major, minor), in order of first appearance; entries without a field are skipped."""
    found: dict[tuple[int, int], dict[str, int]] = {}
    for major, minor, field_name, value in values:
        fields = found.setdefault((major, minor), {})
        if field_name is not None:
            fields[field_name] = value
    return tuple(DeviceIO(major, minor, **fields) for (major, minor), fields in found.items())


def _network(n: agent_pb2.NetworkStats) -> NetworkRecord:
    return NetworkRecord(**{name: getattr(n, name) for name in _NETWORK_FIELDS})

"""ContainerRecord → ``io.containerd.cgroups.v1.Metrics``, filled the way containerd's runc shim fills it.

What containerd's readers need, and how each is met:

* CRI reads ``usage``, ``total_inactive_file``, ``total_rss``, ``total_pg_fault`` and ``total_pg_maj_fault``;
  ``ctr`` shows ``total_cache``. Every memory.stat field is set under its proto name, which is not always the
  kernel's (pgfault → pg_fault, pgpgin → pg_pg_in, hierarchical_memsw_limit → hierarchical_swap_limit):
  the unprefixed fields from the record's ``local`` figures, ``total_*`` from ``hierarchy``. For a v2 guest
  the two are the same numbers, because v2 reports only hierarchical values (total_rss = rss = anon,
  total_cache = cache = file, total_inactive_file = inactive_file, total_pg_fault = pg_fault = pgfault...).
* MemoryEntry ``usage`` is always set (ctr dereferences it without a check), ``swap`` holds memory + swap
  (v1's memsw meaning; for a v2 guest: memory + swap, limits added), ``kernel`` the kernel memory and
  ``kernel_tcp`` the socket buffers when the guest reports them (v2 ``sock``).
* CPU in ns with per-cpu and throttling; pids with "no limit" as 0 (containerd's v1 reading of "max").
* blkio: a v1 guest's files as its kernel wrote them (ops Read/Write/Sync/Async/Discard/Total, major/minor);
  for a v2 guest io_service_bytes_recursive and io_serviced_recursive are built from io.stat with Read, Write,
  Discard and Total = Read + Write + Discard (the kernel's v1 rule); Sync/Async cannot be known and are left
  out. ``device`` stays empty: containerd names it from the host's /proc/partitions, which says nothing about
  a guest's disks.
* hugetlb per page size, network when the agent sends it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from operator import attrgetter

from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats.translate.record import (
    BlkioLine,
    ContainerRecord,
    Counter,
    CpuRecord,
    DeviceIO,
    IoRecord,
    MemoryRecord,
)

STAT_FIELDS: Mapping[str, str] = {
    "file": "cache",
    "anon": "rss",
    "anon_thp": "rss_huge",
    "file_mapped": "mapped_file",
    "file_dirty": "dirty",
    "file_writeback": "writeback",
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
}
"""MemoryStat field → v1 proto field (local); the hierarchical proto field is ``total_`` + it."""

_STAT_VALUES = attrgetter(*STAT_FIELDS)
"""A MemoryStat's figures in STAT_FIELDS' order, in one call."""
_LOCAL_FIELDS = tuple(STAT_FIELDS.values())
_TOTAL_FIELDS = tuple("total_" + field for field in _LOCAL_FIELDS)

_DERIVED_OPS = (("Read", "read"), ("Write", "write"), ("Discard", "discard"))


def to_v1(record: ContainerRecord) -> v1.Metrics:
    """The v1 Metrics for ``record``; a controller the record lacks stays unset."""
    metrics = v1.Metrics()
    if record.memory is not None:
        _memory(metrics.memory, record.memory)
    if record.cpu is not None:
        _cpu(metrics.cpu, record.cpu)
    if record.pids is not None:
        pids = metrics.pids
        pids.current = record.pids.current
        pids.limit = record.pids.limit or 0
    if record.io is not None:
        _blkio(metrics.blkio, record.io)
    for h in record.hugetlb:
        metrics.hugetlb.add(usage=h.usage, max=h.max_usage or 0, failcnt=h.failcnt, pagesize=h.pagesize)
    for n in record.network:
        metrics.network.add(**n._asdict())  # a NetworkRecord's fields are the proto's, by name
    return metrics


def _entry(target: v1.MemoryEntry, counter: Counter) -> None:
    target.SetInParent()
    target.usage = counter.usage
    target.limit = counter.limit or 0
    target.max = counter.max_usage or 0
    target.failcnt = counter.failcnt or 0


def _memory(target: v1.MemoryStat, memory: MemoryRecord) -> None:
    target.SetInParent()
    # None and 0 are left unset: a proto3 field set to 0 is not on the wire, and each set costs a look-up of
    # the field by name in the message.
    for field, value in zip(_LOCAL_FIELDS, _STAT_VALUES(memory.local)):
        if value:
            setattr(target, field, value)
    for field, value in zip(_TOTAL_FIELDS, _STAT_VALUES(memory.hierarchy)):
        if value:
            setattr(target, field, value)
    target.hierarchical_memory_limit = memory.hierarchical_limit or 0
    target.hierarchical_swap_limit = memory.hierarchical_memsw_limit or 0
    _entry(target.usage, memory.usage)
    if memory.memsw is not None:
        _entry(target.swap, memory.memsw)
    if memory.kernel is not None:
        _entry(target.kernel, memory.kernel)
    if memory.kernel_tcp is not None:
        _entry(target.kernel_tcp, memory.kernel_tcp)


def _cpu(target: v1.CPUStat, cpu: CpuRecord) -> None:
    usage = target.usage  # each attribute access of a sub-message makes a new wrapper: one, kept
    usage.SetInParent()
    usage.total = cpu.total_ns
    usage.user = cpu.user_ns
    usage.kernel = cpu.kernel_ns
    usage.per_cpu.extend(cpu.percpu_ns)
    if cpu.throttling is not None:
        t = cpu.throttling
        throttling = target.throttling
        throttling.SetInParent()
        throttling.periods = t.periods
        throttling.throttled_periods = t.throttled_periods
        throttling.throttled_time = t.throttled_ns or 0


def _blkio(target: v1.BlkIOStat, io: IoRecord) -> None:
    target.SetInParent()
    files = io.v1_files or {
        "io_service_bytes_recursive": tuple(_derived_lines(io.devices, "_bytes")),
        "io_serviced_recursive": tuple(_derived_lines(io.devices, "_ios")),
    }
    for name, lines in files.items():
        entries = getattr(target, name)
        for line in lines:
            entries.add(op=line.op, major=line.major, minor=line.minor, value=line.value)


def _derived_lines(devices: tuple[DeviceIO, ...], unit: str) -> Iterable[BlkioLine]:
    """v1 lines for v2 devices: Read, Write, Discard (when reported) and their Total."""
    for d in devices:
        total = 0
        for op, direction in _DERIVED_OPS:
            value = getattr(d, direction + unit)
            if value is not None:
                total += value
                yield BlkioLine(d.major, d.minor, op, value)
        yield BlkioLine(d.major, d.minor, "Total", total)

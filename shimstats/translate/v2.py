"""ContainerRecord → ``io.containerd.cgroups.v2.Metrics``, filled the way containerd's runc shim fills it.

* memory: every memory.stat field under its own name from the record's hierarchical figures (for a v1 guest:
  anon = total_rss, file = total_cache, inactive_file = total_inactive_file, file_mapped = total_mapped_file,
  pgfault = total_pgfault ...); usage, usage_limit, max_usage = the peak; swap_usage, swap_limit and
  swap_max_usage are **swap only** (for a v1 guest: memsw - memory). Unlimited is 2**64-1, as containerd
  reads "max". Kernel-only figures a v1 guest does not report (slab, sock, kernel_stack ...) stay 0.
* memory_events.max = the memory failcnt (v1 failcnt and v2 memory.events max both count how often usage hit
  the limit), set only when the guest knows it; the other events are not in the kata protocol.
* cpu in µs: usage, user and system (not swapped), throttling; v2 has no per-cpu figures.
* pids: "no limit" is 2**64-1, containerd's v2 reading of "max".
* io: one IOEntry per device (rbytes, wbytes, rios, wios), never merged.
* hugetlb: current and failcnt per page size; ``max`` is the v2 *limit* (hugetlb.<size>.max), which the kata
  protocol does not carry, so it stays 0.
* network when the agent sends it.
"""

from __future__ import annotations

from operator import attrgetter

from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats.cri import is_unlimited
from shimstats.translate.record import UNLIMITED, ContainerRecord, CpuRecord, MemoryRecord

STAT_FIELDS: tuple[str, ...] = (
    "anon",
    "file",
    "kernel_stack",
    "slab",
    "sock",
    "shmem",
    "file_mapped",
    "file_dirty",
    "file_writeback",
    "anon_thp",
    "inactive_anon",
    "active_anon",
    "inactive_file",
    "active_file",
    "unevictable",
    "slab_reclaimable",
    "slab_unreclaimable",
    "pgfault",
    "pgmajfault",
    "workingset_refault",
    "workingset_activate",
    "workingset_nodereclaim",
    "pgrefill",
    "pgscan",
    "pgsteal",
    "pgactivate",
    "pgdeactivate",
    "pglazyfree",
    "pglazyfreed",
    "thp_fault_alloc",
    "thp_collapse_alloc",
    "workingset_refault_anon",
    "workingset_refault_file",
    "workingset_activate_anon",
    "workingset_activate_file",
)
"""The MemoryStat fields that are also v2 proto fields of the same name."""
_STAT_VALUES = attrgetter(*STAT_FIELDS)
"""A MemoryStat's figures in STAT_FIELDS' order, in one call."""

_NS_PER_US = 1000


def limit_v2(limit: int | None) -> int:
    """A limit as containerd's v2 reader spells it: unlimited → 2**64-1, unknown → 0."""
    if limit is None:
        return 0
    return UNLIMITED if is_unlimited(limit) else limit


def to_v2(record: ContainerRecord) -> v2.Metrics:
    """The v2 Metrics for ``record``; a controller the record lacks stays unset."""
    metrics = v2.Metrics()
    if record.memory is not None:
        _memory(metrics, record.memory)
    if record.cpu is not None:
        _cpu(metrics.cpu, record.cpu)
    if record.pids is not None:
        pids = metrics.pids
        pids.current = record.pids.current
        pids.limit = UNLIMITED if record.pids.limit is None else record.pids.limit
    if record.io is not None:
        metrics.io.SetInParent()
        for d in record.io.devices:
            metrics.io.usage.add(
                major=d.major,
                minor=d.minor,
                rbytes=d.read_bytes or 0,
                wbytes=d.write_bytes or 0,
                rios=d.read_ios or 0,
                wios=d.write_ios or 0,
            )
    for h in record.hugetlb:
        metrics.hugetlb.add(current=h.usage, pagesize=h.pagesize, failcnt=h.failcnt)
    for n in record.network:
        metrics.network.add(**n._asdict())  # a NetworkRecord's fields are the proto's, by name
    return metrics


def _memory(metrics: v2.Metrics, memory: MemoryRecord) -> None:
    target = metrics.memory
    target.SetInParent()
    for name, value in zip(STAT_FIELDS, _STAT_VALUES(memory.hierarchy)):
        if value:  # None and 0 stay unset: a proto3 0 is not on the wire, and each set costs a field look-up
            setattr(target, name, value)
    target.usage = memory.usage.usage
    target.usage_limit = limit_v2(memory.usage.limit)
    target.max_usage = memory.usage.max_usage or 0
    if memory.swap is not None:
        target.swap_usage = memory.swap.usage
        target.swap_limit = limit_v2(memory.swap.limit)
        target.swap_max_usage = memory.swap.max_usage or 0
    if memory.usage.failcnt is not None:
        metrics.memory_events.SetInParent()
        metrics.memory_events.max = memory.usage.failcnt


def _cpu(target: v2.CPUStat, cpu: CpuRecord) -> None:
    target.SetInParent()
    target.usage_usec = cpu.total_ns // _NS_PER_US
    target.user_usec = cpu.user_ns // _NS_PER_US
    target.system_usec = cpu.kernel_ns // _NS_PER_US
    if cpu.throttling is not None:
        t = cpu.throttling
        target.nr_periods = t.periods
        target.nr_throttled = t.throttled_periods
        target.throttled_usec = (t.throttled_ns or 0) // _NS_PER_US

"""Spell a CgroupRecord as kata-agent's StatsContainerResponse (wire-compatible with the real agent).

A host talks to this agent and to a real kata-agent alike: it tells a v1 guest from a v2 guest by the keys of
``memory_stats.stats``, the raw memory.stat map (v1 has ``cache`` and ``total_*`` keys, v2 has ``anon`` and
``file``), exactly as with kata-agent. On v1 every field means what kata-agent sends; on v2 we also fill what
kata-agent leaves empty (cache, kernel usage, failcnt, max_usage, use_hierarchy, throttled_time, unlimited
swap); guest_agent.reader says where each value comes from.

Swap semantics, the one place they are stated (the host adapter relies on this table). Both rows match what
kata-agent sends, so a host can treat both agents the same:

=================  ==============================  =============  ================  ==========================
guest              swap_usage.usage                max_usage      failcnt           limit
=================  ==============================  =============  ================  ==========================
cgroup v1          memory.memsw.usage_in_bytes:    memsw peak     memsw.failcnt     memsw.limit_in_bytes
                   **memory + swap**
cgroup v2          memory.swap.current:            swap.peak      swap.events       swap.max; max → 2**64-1
                   **swap only**                   (6.5+; else 0) ``fail``          (kata-agent sends 0)
cgroup v2 root     meminfo SwapTotal − SwapFree:   0              0                 2**64-1
                   **swap only**
no swap account.   swap_usage is not set
=================  ==============================  =============  ================  ==========================

Other spellings, all as kata-agent does them: a pids limit of "max" is sent as 0; v1 blkio ops are lowercase
(``read``, ``write``, ``sync``, ``async``, ``discard``, ``total``); a v2 io.stat device becomes six entries in
``io_service_bytes_recursive`` with ops ``read``/``write`` (bytes), ``rios``/``wios``, ``dbytes``/``dios``;
``percpu_usage`` is empty on v2; ``network_stats`` is never filled.
"""

from __future__ import annotations

from guest_agent.parse import U64_MAX
from guest_agent.record import CgroupBlkio, CgroupCounter, CgroupIo, CgroupRecord
from shimstats._proto.kata import agent_pb2

IO_STAT_OPS = (
    ("rbytes", "read"),
    ("wbytes", "write"),
    ("rios", "rios"),
    ("wios", "wios"),
    ("dbytes", "dbytes"),
    ("dios", "dios"),
)
"""io.stat key → kata op, in the order kata-agent emits them."""


def _memory_data(target: agent_pb2.MemoryData, counter: CgroupCounter) -> None:
    target.SetInParent()  # present even when every value is 0
    target.usage = counter.usage
    target.max_usage = counter.max_usage
    target.failcnt = counter.failcnt
    target.limit = counter.limit


def _blkio(target: agent_pb2.BlkioStats, blkio: CgroupBlkio | CgroupIo) -> None:
    if isinstance(blkio, CgroupIo):
        bytes_entries = target.io_service_bytes_recursive
        for device in blkio.devices:
            for key, op in IO_STAT_OPS:
                if key in device.stats:
                    bytes_entries.add(major=device.major, minor=device.minor, op=op, value=device.stats[key])
        return
    for name, lines in blkio.files.items():
        entries = getattr(target, name)
        for line in lines:
            entries.add(major=line.major, minor=line.minor, op=line.op.lower(), value=line.value)


def to_response(record: CgroupRecord) -> agent_pb2.StatsContainerResponse:
    """The StatsContainerResponse for ``record``; a controller the record lacks stays unset."""
    response = agent_pb2.StatsContainerResponse()
    stats = response.cgroup_stats
    stats.SetInParent()
    if record.memory is not None:
        mem = record.memory
        ms = stats.memory_stats
        ms.SetInParent()
        ms.cache = mem.cache
        ms.use_hierarchy = mem.use_hierarchy
        _memory_data(ms.usage, mem.usage)
        if mem.swap is not None:
            _memory_data(ms.swap_usage, mem.swap)
        if mem.kernel is not None:
            _memory_data(ms.kernel_usage, mem.kernel)
        stats_map = ms.stats
        for key, value in mem.stat.items():  # the upb map's update() is a Python mixin: slower
            stats_map[key] = value
    if record.cpu is not None:
        cs = stats.cpu_stats
        cs.SetInParent()
        if record.cpu.usage is not None:
            usage = record.cpu.usage
            cu = cs.cpu_usage  # each attribute access of a sub-message makes a new wrapper: one, kept
            cu.SetInParent()
            cu.total_usage = usage.total
            cu.usage_in_kernelmode = usage.kernel
            cu.usage_in_usermode = usage.user
            cu.percpu_usage.extend(usage.percpu)
        if record.cpu.throttling is not None:
            t = record.cpu.throttling
            td = cs.throttling_data
            td.SetInParent()
            td.periods = t.periods
            td.throttled_periods = t.throttled_periods
            td.throttled_time = t.throttled_time
    if record.pids is not None:
        ps = stats.pids_stats
        ps.SetInParent()
        ps.current = record.pids.current
        ps.limit = 0 if record.pids.limit == U64_MAX else record.pids.limit
    if record.blkio is not None:
        stats.blkio_stats.SetInParent()
        _blkio(stats.blkio_stats, record.blkio)
    for size, huge in record.hugetlb.items():
        entry = stats.hugetlb_stats[size]
        entry.usage = huge.usage
        entry.max_usage = huge.max_usage
        entry.failcnt = huge.failcnt
    return response

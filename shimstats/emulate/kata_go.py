"""The Kata Go shim's Stats answer (containerd-shim-kata-v2), emulated from the agent's reply.

Mirrors kata-containers ``src/runtime/pkg/containerd-shim-v2/metrics.go`` (``marshalMetrics``,
``statsToMetricsV1``/``V2``) at 7c6ba40, including the JSON hop through ``virtcontainers`` types in
``kata_agent.go`` ``statsContainer`` and ``container.go`` (docs/spec/mapping.md §3.2).
The hop always yields a CgroupStats, so every block is present (zeros for what the agent did not send).

Defects reproduced, all visible in the Metrics:

* G1 the format follows the **host's** cgroup mode (``host_cgroup_version``), not the guest's: memory.stat
  keys of the other version do not match, so e.g. a v2 guest on a v1 host has no total_inactive_file and
  CRI's working set is the whole usage.
* G2 v2: user_usec is the kernel time and system_usec the user time.
* G3 v2: one IOEntry for all devices, from io_service_bytes_recursive only (ops read/write/rios/wios), the
  last entry's major/minor and the last value per op; an empty list still gives one all-zero entry.
* G4 v2: no network, memory_events, max_usage, swap_max_usage or hugetlb failcnt; hugetlb ``max`` (the v2
  limit) gets the peak. v1: no memory_oom_control or cgroup_stats.
* G5 v1: cache, rss and mapped_file come from ``total_*`` when use_hierarchy is set, else the local keys;
  pg_fault/pg_maj_fault from the local keys; total_inactive_file; nothing else from memory.stat, so
  total_rss, total_cache, total_pg_fault and total_pg_maj_fault (what CRI and ctr read) stay 0.
* G6 v2: the ~30 memory.stat keys named like the proto fields, of which only the pre-5.9 workingset names;
  then the never-existing keys ``usage``, ``usage_limit``, ``swap_usage``, ``swap_limit`` would override.
* G7 v1: io_queued_recursive is lost in the JSON hop (the Go struct tag says ``io_queue_recursive``).
* G8 v1: network always empty (the agent's network_stats are never copied); kernel_tcp all zeros (no agent
  source).
"""

from __future__ import annotations

from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats._proto.kata import agent_pb2
from shimstats.emulate._copy import blkio_entries, hugetlb_v1, memory_entry

V2_STAT_KEYS = tuple(f.name for f in v2.MemoryStat.DESCRIPTOR.fields if f.number <= 31)
"""The v2 MemoryStat fields 1-31 (anon ... thp_collapse_alloc): the Go shim copies each from the key of the
same name, the pre-5.9 workingset_refault/workingset_activate included."""

V2_STAT_OVERRIDES = ("usage", "usage_limit", "swap_usage", "swap_limit")
"""Keys the Go shim then looks up in memory.stat although no kernel writes them (G6)."""

V1_BLKIO_KEPT = (
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "sectors_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
)
"""The BlkioStats lists that survive the JSON hop: all but io_queued_recursive (G7)."""

_V2_IO_OPS = {"read": "rbytes", "write": "wbytes", "rios": "rios", "wios": "wios"}


def metrics(response: agent_pb2.StatsContainerResponse, host_cgroup_version: str) -> cri.Metrics:
    """What the Go shim returns on a host in cgroup ``host_cgroup_version`` ("v1" or "v2") mode."""
    if host_cgroup_version == "v1":
        return _v1(response.cgroup_stats)
    if host_cgroup_version == "v2":
        return _v2(response.cgroup_stats)
    raise ValueError(f"host cgroup version {host_cgroup_version!r}: expected 'v1' or 'v2'")


def _v1(cg: agent_pb2.CgroupStats) -> v1.Metrics:
    m = v1.Metrics()
    hugetlb_v1(m.hugetlb, cg.hugetlb_stats)
    m.pids.current = cg.pids_stats.current
    m.pids.limit = cg.pids_stats.limit
    m.pids.SetInParent()

    u = cg.cpu_stats.cpu_usage
    m.cpu.usage.SetInParent()
    m.cpu.usage.total = u.total_usage
    m.cpu.usage.kernel = u.usage_in_kernelmode
    m.cpu.usage.user = u.usage_in_usermode
    m.cpu.usage.per_cpu.extend(u.percpu_usage)
    t = cg.cpu_stats.throttling_data
    m.cpu.throttling.SetInParent()
    m.cpu.throttling.periods = t.periods
    m.cpu.throttling.throttled_periods = t.throttled_periods
    m.cpu.throttling.throttled_time = t.throttled_time

    ms, mem = cg.memory_stats, m.memory
    memory_entry(mem.usage, ms.usage)
    memory_entry(mem.swap, ms.swap_usage)
    memory_entry(mem.kernel, ms.kernel_usage)
    mem.kernel_tcp.SetInParent()  # G8: the agent has no kernel TCP figures
    stats = ms.stats
    prefix = "total_" if ms.use_hierarchy else ""
    mem.cache = stats.get(prefix + "cache", 0)
    mem.rss = stats.get(prefix + "rss", 0)
    mem.mapped_file = stats.get(prefix + "mapped_file", 0)
    mem.pg_fault = stats.get("pgfault", 0)
    mem.pg_maj_fault = stats.get("pgmajfault", 0)
    mem.total_inactive_file = stats.get("total_inactive_file", 0)

    m.blkio.SetInParent()
    for name in V1_BLKIO_KEPT:
        blkio_entries(getattr(m.blkio, name), getattr(cg.blkio_stats, name))
    return m


def _v2(cg: agent_pb2.CgroupStats) -> v2.Metrics:
    m = v2.Metrics()
    for size, h in sorted(cg.hugetlb_stats.items()):
        m.hugetlb.add(current=h.usage, max=h.max_usage, pagesize=size)
    m.pids.current = cg.pids_stats.current
    m.pids.limit = cg.pids_stats.limit
    m.pids.SetInParent()

    u, t = cg.cpu_stats.cpu_usage, cg.cpu_stats.throttling_data
    m.cpu.SetInParent()
    m.cpu.usage_usec = u.total_usage // 1000
    m.cpu.user_usec = u.usage_in_kernelmode // 1000  # G2
    m.cpu.system_usec = u.usage_in_usermode // 1000  # G2
    m.cpu.nr_periods = t.periods
    m.cpu.nr_throttled = t.throttled_periods
    m.cpu.throttled_usec = t.throttled_time // 1000

    ms, mem = cg.memory_stats, m.memory
    mem.SetInParent()
    mem.usage = ms.usage.usage
    mem.usage_limit = ms.usage.limit
    mem.swap_usage = ms.swap_usage.usage
    mem.swap_limit = ms.swap_usage.limit
    for key in V2_STAT_KEYS + V2_STAT_OVERRIDES:
        if key in ms.stats:
            setattr(mem, key, ms.stats[key])

    merged = m.io.usage.add()  # G3
    for e in cg.blkio_stats.io_service_bytes_recursive:
        field = _V2_IO_OPS.get(e.op)
        if field is not None:
            setattr(merged, field, e.value)
        merged.major = e.major
        merged.minor = e.minor
    return m

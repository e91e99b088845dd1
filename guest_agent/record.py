"""The agent's internal record of one cgroup's stats, between reading cgroupfs and filling the kata response.

Values keep the kernel's meaning in the units the kata protocol carries (ns for cpu, bytes for memory,
``U64_MAX`` for "no limit"); the reader decides them once per cgroup version, guest_agent.kata only spells
them the kata way. What ``swap`` means per version is stated in guest_agent.kata (the one place). A
controller the cgroup does not have is None, never zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from guest_agent.parse import BlkioLine, IoStatLine


@dataclass(frozen=True)
class CgroupCounter:
    """One kernel page counter: kata's MemoryData (usage, peak, times the limit was hit, limit)."""

    usage: int
    max_usage: int
    failcnt: int
    limit: int


@dataclass(frozen=True)
class CgroupMemory:
    """Memory controller stats; ``stat`` is memory.stat verbatim (all keys, as the kernel wrote them)."""

    version: Literal[1, 2]
    usage: CgroupCounter
    swap: CgroupCounter | None
    kernel: CgroupCounter | None
    cache: int
    use_hierarchy: bool
    stat: Mapping[str, int]
    kernel_tcp: CgroupCounter | None = None
    """v1 memory.kmem.tcp.*: kata's protocol has no field for it, so read only with ``extras``."""
    events: Mapping[str, int] = field(default_factory=dict)
    """v2 memory.events (hierarchical; empty on v1 and on the v2 root)."""
    oom_control: Mapping[str, int] = field(default_factory=dict)
    """v1 memory.oom_control: kata's protocol has no field for it, so read only with ``extras``."""


@dataclass(frozen=True)
class CgroupCpuUsage:
    """CPU time in ns; ``percpu`` is empty on v2 (the kernel has no per-cpu file there)."""

    total: int
    user: int
    kernel: int
    percpu: tuple[int, ...] = ()


@dataclass(frozen=True)
class CgroupThrottling:
    """CFS bandwidth throttling: periods, throttled periods and throttled time in ns."""

    periods: int
    throttled_periods: int
    throttled_time: int


@dataclass(frozen=True)
class CgroupCpu:
    """CPU stats; either half is None when its controller or keys are absent."""

    usage: CgroupCpuUsage | None
    throttling: CgroupThrottling | None


@dataclass(frozen=True)
class CgroupPids:
    """pids.current and pids.max (``U64_MAX`` when the kernel says max)."""

    current: int
    limit: int


@dataclass(frozen=True)
class CgroupBlkio:
    """v1 block I/O: the lines of each ``blkio.<name>`` file, keyed by name (``io_serviced_recursive``...)."""

    files: Mapping[str, tuple[BlkioLine, ...]]


@dataclass(frozen=True)
class CgroupIo:
    """v2 block I/O: io.stat, one entry per device, in file order."""

    devices: tuple[IoStatLine, ...]


@dataclass(frozen=True)
class CgroupHugetlb:
    """One huge page size: usage, peak (0 on v2, which keeps none) and times the limit was hit."""

    usage: int
    max_usage: int
    failcnt: int


@dataclass(frozen=True)
class CgroupRecord:
    """Everything read for one cgroup; ``path`` is the cgroup path (``/`` = the whole guest)."""

    path: str
    memory: CgroupMemory | None = None
    cpu: CgroupCpu | None = None
    pids: CgroupPids | None = None
    blkio: CgroupBlkio | CgroupIo | None = None
    hugetlb: Mapping[str, CgroupHugetlb] = field(default_factory=dict)

"""The agent's internal record of one cgroup's stats, between reading cgroupfs and filling the kata response.

Values keep the kernel's meaning in the units the kata protocol carries (ns for cpu, bytes for memory,
``U64_MAX`` for "no limit"); the reader decides them once per cgroup version, guest_agent.kata only spells
them the kata way. What ``swap`` means per version is stated in guest_agent.kata (the one place). A
controller the cgroup does not have is None, never zeros.

Every record is a named tuple: immutable, and several times cheaper to build than a frozen dataclass, which
sets each field through object.__setattr__ (a Stats builds about ten records).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, NamedTuple

from guest_agent.parse import BlkioLine, IoStatLine

_NO_COUNTS: Mapping[str, int] = MappingProxyType({})


class CgroupCounter(NamedTuple):
    """One kernel page counter: kata's MemoryData (usage, peak, times the limit was hit, limit)."""

    usage: int
    max_usage: int
    failcnt: int
    limit: int


class CgroupMemory(NamedTuple):
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
    events: Mapping[str, int] = _NO_COUNTS
    """v2 memory.events (hierarchical; empty on v1 and on the v2 root)."""
    oom_control: Mapping[str, int] = _NO_COUNTS
    """v1 memory.oom_control: kata's protocol has no field for it, so read only with ``extras``."""


class CgroupCpuUsage(NamedTuple):
    """CPU time in ns; ``percpu`` is empty on v2 (the kernel has no per-cpu file there)."""

    total: int
    user: int
    kernel: int
    percpu: tuple[int, ...] = ()


class CgroupThrottling(NamedTuple):
    """CFS bandwidth throttling: periods, throttled periods and throttled time in ns."""

    periods: int
    throttled_periods: int
    throttled_time: int


class CgroupCpu(NamedTuple):
    """CPU stats; either half is None when its controller or keys are absent."""

    usage: CgroupCpuUsage | None
    throttling: CgroupThrottling | None


class CgroupPids(NamedTuple):
    """pids.current and pids.max (``U64_MAX`` when the kernel says max)."""

    current: int
    limit: int


class CgroupBlkio(NamedTuple):
    """v1 block I/O: the lines of each ``blkio.<name>`` file, keyed by name (``io_serviced_recursive``...)."""

    files: Mapping[str, tuple[BlkioLine, ...]]


class CgroupIo(NamedTuple):
    """v2 block I/O: io.stat, one entry per device, in file order."""

    devices: tuple[IoStatLine, ...]


class CgroupHugetlb(NamedTuple):
    """One huge page size: usage, peak (0 on v2, which keeps none) and times the limit was hit."""

    usage: int
    max_usage: int
    failcnt: int


_NO_SIZES: Mapping[str, CgroupHugetlb] = MappingProxyType({})


class CgroupRecord(NamedTuple):
    """Everything read for one cgroup; ``path`` is the cgroup path (``/`` = the whole guest)."""

    path: str
    memory: CgroupMemory | None = None
    cpu: CgroupCpu | None = None
    pids: CgroupPids | None = None
    blkio: CgroupBlkio | CgroupIo | None = None
    hugetlb: Mapping[str, CgroupHugetlb] = _NO_SIZES

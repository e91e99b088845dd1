"""The version-neutral record between a guest agent's reply and containerd's v1 or v2 Metrics.

Why a record: the guest's cgroup version and the output format are independent choices, so both converters
(``shimstats.translate.v1`` and ``.v2``) read one description with one meaning per field instead of four
ad-hoc key mappings. ``explain`` and the exporter read it too. The rules, once for every field:

* **None means "the guest did not report it"** (a key its kernel does not write, a file it lacks, or a value
  a real kata-agent leaves empty on v2 guests). Converters send 0 for None: the value containerd itself reads
  for a file or key that is missing.
* **memory.stat figures use the v2 vocabulary** (``anon``, ``file``, ``file_mapped`` ...; see MemoryStat).
  ``hierarchy`` counts the cgroup and its descendants (v1 ``total_*`` keys, every v2 key); ``local`` counts
  the cgroup alone (v1 unprefixed keys). cgroup v2 keeps no local figures, so on a v2 guest ``local`` *is*
  ``hierarchy``: for a container cgroup without children the two agree anyway.
* **Limits** are bytes; a value above 2**62 means unlimited (the threshold containerd and the kubelet apply).
  v1 kernels write 9223372036854771712 for "no limit", v2 writes "max" (2**64-1); the record keeps what the
  guest sent and the converters spell unlimited the way their format does.
* **Swap** is kept in both meanings, each derived once from what the guest sent, never added twice:
  ``swap`` = swap only (v2 memory.swap.current), ``memsw`` = memory + swap (v1 memory.memsw.*).
* **CPU** times are nanoseconds, as the kata protocol carries them.

Every record is a named tuple, immutable as a frozen dataclass would be but built several times faster: a
frozen dataclass sets each field through object.__setattr__ (some 9 µs for a 50-field MemoryStat here,
about 1 µs as a tuple), and the adapter builds a dozen records a Stats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

from guest_agent.parse import U64_MAX
from shimstats.cri import working_set

GuestVersion = Literal["v1", "v2", "unknown"]

UNLIMITED = U64_MAX
"""How the record spells a limit it derives as unlimited (v2's "max"); any value above 2**62 also means it
(cri.is_unlimited)."""


class Counter(NamedTuple):
    """One kernel page counter: current usage, its limit, its peak and how often the limit was hit.

    ``limit`` None: not reported or not decidable (a kata-agent's v2 swap limit of 0). ``max_usage`` None: no
    peak reported (a peak of 0 is never real for a cgroup that held a page, so 0 reads as None).
    ``failcnt`` None: the guest cannot count it (a kata-agent on a v2 guest always sends 0).
    """

    usage: int
    limit: int | None
    max_usage: int | None = None
    failcnt: int | None = None


class MemoryStat(NamedTuple):
    """memory.stat in the v2 vocabulary; bytes unless named as a count. v1 keys map as the comments say.

    The figures a v1 kernel also writes come first, in translate.agent.V1_KEYS' order, so that a v1 record is
    built positionally from its keys' look-ups (the rest default to None) without a dict of keyword
    arguments."""

    anon: int | None = None  # v1 rss
    file: int | None = None  # v1 cache
    anon_thp: int | None = None  # v1 rss_huge
    shmem: int | None = None
    file_mapped: int | None = None  # v1 mapped_file
    file_dirty: int | None = None  # v1 dirty
    file_writeback: int | None = None  # v1 writeback
    swapcached: int | None = None
    inactive_anon: int | None = None
    active_anon: int | None = None
    inactive_file: int | None = None
    active_file: int | None = None
    unevictable: int | None = None
    pgfault: int | None = None
    pgmajfault: int | None = None
    pgpgin: int | None = None  # v1 only: v2 kernels suppress it
    pgpgout: int | None = None  # v1 only
    workingset_refault_anon: int | None = None
    workingset_refault_file: int | None = None
    # Kernel memory (v2 only; v1 reports kernel memory as the kmem counter, MemoryRecord.kernel).
    kernel: int | None = None
    kernel_stack: int | None = None
    pagetables: int | None = None
    sec_pagetables: int | None = None
    percpu: int | None = None
    sock: int | None = None
    vmalloc: int | None = None
    slab: int | None = None
    slab_reclaimable: int | None = None
    slab_unreclaimable: int | None = None
    # Event counts (those a v1 kernel also writes are above).
    pgrefill: int | None = None
    pgscan: int | None = None
    pgsteal: int | None = None
    pgactivate: int | None = None
    pgdeactivate: int | None = None
    pglazyfree: int | None = None
    pglazyfreed: int | None = None
    thp_fault_alloc: int | None = None
    thp_collapse_alloc: int | None = None
    workingset_refault: int | None = None  # kernels before 5.9 only
    workingset_activate: int | None = None  # kernels before 5.9 only
    workingset_activate_anon: int | None = None
    workingset_activate_file: int | None = None
    workingset_restore_anon: int | None = None
    workingset_restore_file: int | None = None
    workingset_nodereclaim: int | None = None


class MemoryRecord(NamedTuple):
    """The memory controller: counters, both swap meanings and the memory.stat breakdown."""

    usage: Counter
    """Memory itself (v1 memory.usage_in_bytes, v2 memory.current; the v2 root: anon + file)."""
    swap: Counter | None
    """Swap only. v2 guest: as sent; v1 guest: memsw - memory (peak and failcnt do not convert: None)."""
    memsw: Counter | None
    """Memory + swap. v1 guest: as sent; v2 guest: memory + swap (limits add; peak, failcnt: None)."""
    kernel: Counter | None
    """Kernel memory. v1: memory.kmem.*; v2: memory.stat ``kernel``, or the sum of its parts before 5.19."""
    kernel_tcp: Counter | None
    """Socket buffers. v1: memory.kmem.tcp.* (no kata field carries it: None); v2: memory.stat ``sock``."""
    hierarchy: MemoryStat
    local: MemoryStat
    hierarchical_limit: int | None
    """v1 ``hierarchical_memory_limit``; None on v2 (the guest reports no ancestor limits)."""
    hierarchical_memsw_limit: int | None
    """v1 ``hierarchical_memsw_limit``; None on v2."""

    @property
    def working_set(self) -> int:
        """usage - inactive_file, 0 unless inactive_file < usage: what CRI and cAdvisor compute."""
        return working_set(self.usage.usage, self.hierarchy.inactive_file or 0)


class Throttling(NamedTuple):
    """CFS bandwidth throttling; ``throttled_ns`` None when the agent cannot read it (kata-agent on v2)."""

    periods: int
    throttled_periods: int
    throttled_ns: int | None


class CpuRecord(NamedTuple):
    """CPU time in ns; ``percpu_ns`` is empty on v2 guests (the kernel keeps no per-cpu file there)."""

    total_ns: int
    user_ns: int
    kernel_ns: int
    percpu_ns: tuple[int, ...]
    throttling: Throttling | None


class PidsRecord(NamedTuple):
    """pids.current and pids.max; ``limit`` None = no limit (the kata protocol sends "max" as 0)."""

    current: int
    limit: int | None


class DeviceIO(NamedTuple):
    """Block I/O of one device, by direction: bytes and operations (v2 io.stat; v1 Read/Write/Discard)."""

    major: int
    minor: int
    read_bytes: int | None = None
    write_bytes: int | None = None
    discard_bytes: int | None = None
    read_ios: int | None = None
    write_ios: int | None = None
    discard_ios: int | None = None


class BlkioLine(NamedTuple):
    """One line of a v1 blkio file, op spelled as the kernel does (``Read``, ``Write``, ``Total``...)."""

    major: int
    minor: int
    op: str
    value: int


class IoRecord(NamedTuple):
    """Block I/O: one DeviceIO per device, in the order the guest listed them, and on v1 guests the
    v1 blkio files themselves (keyed by kata BlkioStats field name), kept whole for v1 output."""

    devices: tuple[DeviceIO, ...]
    v1_files: Mapping[str, tuple[BlkioLine, ...]]


class HugetlbRecord(NamedTuple):
    """One huge page size; ``max_usage`` None when the guest keeps no peak (v2)."""

    pagesize: str
    usage: int
    max_usage: int | None
    failcnt: int


class NetworkRecord(NamedTuple):
    """One interface's counters, as the agent sends them (kata-agent never does)."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


class ContainerRecord(NamedTuple):
    """Everything one StatsContainer reply says about a container; a controller not sent is None."""

    guest: GuestVersion
    kata_v2_gaps: bool
    """The reply is a real kata-agent's from a v2 guest (use_hierarchy false there, true from ours): its
    failcnt, a swap limit of 0 and throttled time carry no information, so they are None here."""
    memory: MemoryRecord | None
    cpu: CpuRecord | None
    pids: PidsRecord | None
    io: IoRecord | None
    hugetlb: tuple[HugetlbRecord, ...]
    network: tuple[NetworkRecord, ...]

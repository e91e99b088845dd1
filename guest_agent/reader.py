"""Read one cgroup's stat files under a Layout into a CgroupRecord.

Which files, and what each value means (the rules the issue asks for, decided here once per version):

memory v1: memory.{usage_in_bytes,max_usage_in_bytes,failcnt,limit_in_bytes} → usage; memory.memsw.* → swap
  (memory+swap, as the kernel counts it); memory.kmem.* → kernel; memory.kmem.tcp.* → kernel_tcp; cache =
  memory.stat ``cache``; use_hierarchy = memory.use_hierarchy. The v1 root needs no special case: the kernel
  itself reports the root's usage as file + anon (+ swap for memsw).
memory v2: usage = memory.current, limit = memory.max (``max`` → 2**64-1), max_usage = memory.peak (kernel
  5.19+, else 0), failcnt = memory.events ``max``; swap = memory.swap.{current,peak,max} (swap only; ``max`` →
  2**64-1; failcnt = memory.swap.events ``fail``); kernel usage = memory.stat ``kernel``, or on kernels that
  lack that key (before 5.19) the sum of the itemised kernel parts KERNEL_PARTS, a lower bound since the
  kernel also charges other accounted allocations; cache = memory.stat ``file``; use_hierarchy = true (v2 is
  always hierarchical).
memory v2 root (no memory.current): usage = memory.stat ``anon + file`` (runc's fix for kubernetes#118916,
  the same rule the v1 kernel uses for its root), never MemTotal − MemFree; limit = 2**64-1; swap = meminfo
  SwapTotal − SwapFree (swap only, matching v2's meaning) when meminfo is readable.
cpu v1: cpuacct.usage, cpuacct.usage_percpu (ns); cpuacct.stat user/system (USER_HZ ticks → ns with
  SC_CLK_TCK); throttling from cpu.stat nr_periods, nr_throttled, throttled_time (ns).
cpu v2: cpu.stat usage_usec, user_usec, system_usec and throttled_usec (µs → ns), nr_periods, nr_throttled.
pids: pids.current, pids.max (``max`` → 2**64-1; the root has no pids.max: no limit).
blkio v1: every ``blkio.<name>`` of BLKIO_FILES (all present or all absent: one policy, CFQ, provides
  them); when io_serviced_recursive has no entry (no CFQ, as on every kernel since 5.0),
  io_service_bytes_recursive and io_serviced_recursive come from the blkio.throttle.* files instead, as
  kata-agent does.
io v2: io.stat. hugetlb: per page size, v1 usage_in_bytes/max_usage_in_bytes/failcnt, v2 current and
  events ``max`` (v2 keeps no peak), read only when the cgroup's cgroup.controllers lists hugetlb (never on
  the v2 root, which has no hugetlb files).

Missing files: a controller whose anchor file is absent is None; an optional file (memsw, kmem, peak, swap)
that is absent stays absent; a file the kernel always writes next to the anchor being absent is an error
(IncompleteCgroup), unless the cgroup directory itself is gone, which is CgroupGone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from guest_agent.files import FileCache
from guest_agent.layout import Hierarchy, Layout
from guest_agent.parse import (
    U64_MAX,
    BlkioLine,
    CgroupFormatError,
    hugetlb_size_bytes,
    parse_blkio,
    parse_flat_keyed,
    parse_hugetlb_name,
    parse_int_list,
    parse_meminfo,
    parse_nested_keyed,
    parse_single,
)
from guest_agent.record import (
    BlkioRecord,
    CgroupRecord,
    Counter,
    CpuRecord,
    CpuUsage,
    HugetlbRecord,
    IoRecord,
    MemoryRecord,
    PidsRecord,
    Throttling,
)

KERNEL_PARTS = (
    "kernel_stack",
    "pagetables",
    "sec_pagetables",
    "percpu",
    "slab_reclaimable",
    "slab_unreclaimable",
    "vmalloc",
)
"""v2 memory.stat keys summed as kernel usage when the kernel has no ``kernel`` key (before 5.19)."""

BLKIO_FILES = (
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "io_queued_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
    "sectors_recursive",
)
"""The v1 ``blkio.<name>`` files read; each name is also the kata BlkioStats field it fills."""

_NS_PER_S = 1_000_000_000
_NS_PER_US = 1_000

T = TypeVar("T")


class CgroupGone(LookupError):
    """The cgroup directory does not exist (any more): the container is gone or never had this cgroup."""

    def __init__(self, path: str) -> None:
        super().__init__(f"cgroup {path} does not exist")
        self.path = path


class IncompleteCgroup(RuntimeError):
    """A file the kernel always provides for a controller is missing while the cgroup still exists."""

    def __init__(self, file: str) -> None:
        super().__init__(f"{file}: missing, although its controller's other files are there")
        self.file = file


def decode(data: bytes, path: str) -> str:
    """Kernel stat files are ASCII; anything else is a garbled file, reported with its path."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as e:
        raise CgroupFormatError(path, 0, f"not ASCII text (byte {e.start})") from None


class _Dir:
    """One cgroup directory of one hierarchy: reads and parses its files, naming the full path in errors."""

    __slots__ = ("files", "path")

    def __init__(self, files: FileCache, path: str) -> None:
        self.files = files
        self.path = path

    def parsed(self, name: str, parse: Callable[[str, str], T]) -> T | None:
        """``parse(text, path)`` of the file ``name``, or None when it does not exist."""
        path = f"{self.path}/{name}"
        data = self.files.read_bytes(path)
        return None if data is None else parse(decode(data, path), path)

    def value(self, name: str) -> int | None:
        return self.parsed(name, parse_single)

    def keyed(self, name: str) -> dict[str, int] | None:
        return self.parsed(name, parse_flat_keyed)

    def need(self, found: T | None, name: str) -> T:
        """``found``, or IncompleteCgroup naming the missing file."""
        if found is None:
            raise IncompleteCgroup(f"{self.path}/{name}")
        return found

    def need_key(self, values: Mapping[str, int], key: str, name: str) -> int:
        """``values[key]``, or a format error naming the file that lacks the key."""
        if key not in values:
            raise CgroupFormatError(f"{self.path}/{name}", 0, f"key {key!r} missing")
        return values[key]

    def counter_v1(self, prefix: str) -> Counter | None:
        """The v1 page counter ``<prefix>{usage_in_bytes,max_usage_in_bytes,failcnt,limit_in_bytes}``."""
        usage = self.value(prefix + "usage_in_bytes")
        if usage is None:
            return None
        return Counter(
            usage=usage,
            max_usage=self.need(self.value(prefix + "max_usage_in_bytes"), prefix + "max_usage_in_bytes"),
            failcnt=self.need(self.value(prefix + "failcnt"), prefix + "failcnt"),
            limit=self.need(self.value(prefix + "limit_in_bytes"), prefix + "limit_in_bytes"),
        )


class CgroupReader:
    """Reads cgroups under one Layout; also holds what the guest-wide rules need (meminfo, CLK_TCK)."""

    def __init__(
        self,
        layout: Layout,
        meminfo: str = "/proc/meminfo",
        clk_tck: int | None = None,
        files: FileCache | None = None,
    ) -> None:
        self.layout = layout
        self.meminfo = meminfo
        self.clk_tck = clk_tck if clk_tck is not None else os.sysconf("SC_CLK_TCK")
        self.files = files if files is not None else FileCache()
        self._hugetlb_sizes: dict[str, tuple[str, ...]] = {}

    def close(self) -> None:
        """Close the files kept open between reads."""
        self.files.close()

    def read(self, cgroup_path: str) -> CgroupRecord:
        """Every controller's stats for ``cgroup_path`` (``/`` = the whole guest); CgroupGone if gone."""
        primary = self.layout.primary.dir_for(cgroup_path)
        try:
            record = self._read(cgroup_path)
        except IncompleteCgroup:
            if not os.path.isdir(primary):
                raise self._gone(cgroup_path) from None
            # A cgroup being removed loses its files a moment before its directory: read once more, with
            # fresh fds, before calling it broken.
            self._forget(cgroup_path)
            try:
                record = self._read(cgroup_path)
            except IncompleteCgroup:
                if not os.path.isdir(primary):
                    raise self._gone(cgroup_path) from None
                raise
        # Checked after reading, whatever was found: a file of a removed cgroup may have been read through an
        # fd opened earlier (regular files keep their content after unlink; kernfs ones fail with ENODEV).
        if not os.path.isdir(primary):
            raise self._gone(cgroup_path)
        return record

    def _forget(self, cgroup_path: str) -> None:
        """Close the cgroup's cached files in every hierarchy."""
        for h in set(self.layout.controllers.values()):
            self.files.forget(h.dir_for(cgroup_path))

    def _gone(self, cgroup_path: str) -> CgroupGone:
        """Close the vanished cgroup's cached files; the error to raise."""
        self._forget(cgroup_path)
        return CgroupGone(self.layout.primary.dir_for(cgroup_path))

    def _dir(self, h: Hierarchy | None, path: str) -> _Dir | None:
        return None if h is None else _Dir(self.files, h.dir_for(path))

    def _read(self, path: str) -> CgroupRecord:
        c = self.layout.controllers
        root = path == "/"
        memory_rec = None
        if (mem := self._dir(c.get("memory"), path)) is not None:
            memory_rec = self._memory_v1(mem) if c["memory"].version == 1 else self._memory_v2(mem, root)
        cpu_rec = None
        cpu = self._dir(c.get("cpu"), path)
        if cpu is not None and c["cpu"].version == 2:
            cpu_rec = self._cpu_v2(cpu)
        elif cpu is not None or "cpuacct" in c:
            cpu_rec = self._cpu_v1(cpu, self._dir(c.get("cpuacct"), path))
        blkio_rec: BlkioRecord | IoRecord | None = None
        if (blkio := self._dir(c.get("blkio"), path)) is not None:
            blkio_rec = self._blkio_v1(blkio) if c["blkio"].version == 1 else self._io_v2(blkio)
        pids = self._dir(c.get("pids"), path)
        hugetlb = c.get("hugetlb")
        return CgroupRecord(
            path=path,
            memory=memory_rec,
            cpu=cpu_rec,
            pids=self._pids(pids, root) if pids is not None else None,
            blkio=blkio_rec,
            hugetlb=self._hugetlb(hugetlb, path) if hugetlb is not None else {},
        )

    def _memory_v1(self, d: _Dir) -> MemoryRecord | None:
        stat = d.keyed("memory.stat")
        if stat is None:
            return None
        return MemoryRecord(
            version=1,
            usage=d.need(d.counter_v1("memory."), "memory.usage_in_bytes"),
            swap=d.counter_v1("memory.memsw."),
            kernel=d.counter_v1("memory.kmem."),
            kernel_tcp=d.counter_v1("memory.kmem.tcp."),
            cache=d.need_key(stat, "cache", "memory.stat"),
            use_hierarchy=d.need(d.value("memory.use_hierarchy"), "memory.use_hierarchy") == 1,
            stat=stat,
            oom_control=d.keyed("memory.oom_control") or {},
        )

    def _memory_v2(self, d: _Dir, root: bool) -> MemoryRecord | None:
        stat = d.keyed("memory.stat")
        if stat is None:
            return None
        events: dict[str, int] = {}
        if root:
            anon_file = d.need_key(stat, "anon", "memory.stat") + d.need_key(stat, "file", "memory.stat")
            usage = Counter(usage=anon_file, max_usage=0, failcnt=0, limit=U64_MAX)
            swap = self._root_swap()
        else:
            events = d.need(d.keyed("memory.events"), "memory.events")
            usage = Counter(
                usage=d.need(d.value("memory.current"), "memory.current"),
                max_usage=d.value("memory.peak") or 0,
                failcnt=d.need_key(events, "max", "memory.events"),
                limit=d.need(d.value("memory.max"), "memory.max"),
            )
            swap = self._swap_v2(d)
        kernel = stat["kernel"] if "kernel" in stat else sum(stat.get(k, 0) for k in KERNEL_PARTS)
        return MemoryRecord(
            version=2,
            usage=usage,
            swap=swap,
            kernel=Counter(usage=kernel, max_usage=0, failcnt=0, limit=U64_MAX),
            cache=d.need_key(stat, "file", "memory.stat"),
            use_hierarchy=True,
            stat=stat,
            events=events,
        )

    @staticmethod
    def _swap_v2(d: _Dir) -> Counter | None:
        current = d.value("memory.swap.current")
        if current is None:  # no swap accounting in this kernel (or swapaccount=0)
            return None
        swap_events = d.keyed("memory.swap.events") or {}
        return Counter(
            usage=current,
            max_usage=d.value("memory.swap.peak") or 0,
            failcnt=swap_events.get("fail", 0),
            limit=d.need(d.value("memory.swap.max"), "memory.swap.max"),
        )

    def _root_swap(self) -> Counter | None:
        data = self.files.read_bytes(self.meminfo)
        if data is None:
            return None
        info = parse_meminfo(decode(data, self.meminfo), self.meminfo)
        if "SwapTotal" not in info or "SwapFree" not in info:
            return None
        used = max(info["SwapTotal"] - info["SwapFree"], 0)
        return Counter(usage=used, max_usage=0, failcnt=0, limit=U64_MAX)

    def _cpu_v1(self, cpu: _Dir | None, cpuacct: _Dir | None) -> CpuRecord | None:
        usage = None
        if cpuacct is not None and (total := cpuacct.value("cpuacct.usage")) is not None:
            ticks = cpuacct.need(cpuacct.keyed("cpuacct.stat"), "cpuacct.stat")
            usage = CpuUsage(
                total=total,
                user=cpuacct.need_key(ticks, "user", "cpuacct.stat") * _NS_PER_S // self.clk_tck,
                kernel=cpuacct.need_key(ticks, "system", "cpuacct.stat") * _NS_PER_S // self.clk_tck,
                percpu=tuple(
                    cpuacct.need(
                        cpuacct.parsed("cpuacct.usage_percpu", parse_int_list), "cpuacct.usage_percpu"
                    )
                ),
            )
        throttling = None
        if cpu is not None and (stat := cpu.keyed("cpu.stat")) is not None and "nr_periods" in stat:
            throttling = Throttling(
                periods=stat["nr_periods"],
                throttled_periods=cpu.need_key(stat, "nr_throttled", "cpu.stat"),
                throttled_time=cpu.need_key(stat, "throttled_time", "cpu.stat"),
            )
        if usage is None and throttling is None:
            return None
        return CpuRecord(usage=usage, throttling=throttling)

    @staticmethod
    def _cpu_v2(d: _Dir) -> CpuRecord | None:
        stat = d.keyed("cpu.stat")
        if stat is None:
            return None
        usage = CpuUsage(
            total=d.need_key(stat, "usage_usec", "cpu.stat") * _NS_PER_US,
            user=d.need_key(stat, "user_usec", "cpu.stat") * _NS_PER_US,
            kernel=d.need_key(stat, "system_usec", "cpu.stat") * _NS_PER_US,
        )
        throttling = None
        if "nr_periods" in stat:  # only with the cpu controller enabled
            throttling = Throttling(
                periods=stat["nr_periods"],
                throttled_periods=d.need_key(stat, "nr_throttled", "cpu.stat"),
                throttled_time=d.need_key(stat, "throttled_usec", "cpu.stat") * _NS_PER_US,
            )
        return CpuRecord(usage=usage, throttling=throttling)

    @staticmethod
    def _pids(d: _Dir, root: bool) -> PidsRecord | None:
        current = d.value("pids.current")
        if current is None:
            return None
        limit = d.value("pids.max")
        if limit is None and root:  # the kernel puts no pids.max on the root: it has no limit
            limit = U64_MAX
        return PidsRecord(current=current, limit=d.need(limit, "pids.max"))

    @staticmethod
    def _blkio_v1(d: _Dir) -> BlkioRecord | None:
        files: dict[str, tuple[BlkioLine, ...]] = {}
        # The eight files come from one policy (CFQ, gone since kernel 5.0) and exist all or none: probe one.
        first = d.parsed(f"blkio.{BLKIO_FILES[0]}", parse_blkio)
        if first is not None:
            files[BLKIO_FILES[0]] = tuple(first)
            for name in BLKIO_FILES[1:]:
                lines = d.parsed(f"blkio.{name}", parse_blkio)
                if lines is not None:
                    files[name] = tuple(lines)
        if not files.get("io_serviced_recursive"):
            for name in ("io_service_bytes_recursive", "io_serviced_recursive"):
                lines = d.parsed(f"blkio.throttle.{name}", parse_blkio)
                if lines is not None:
                    files[name] = tuple(lines)
        return BlkioRecord(files) if files else None

    @staticmethod
    def _io_v2(d: _Dir) -> IoRecord | None:
        devices = d.parsed("io.stat", parse_nested_keyed)
        return None if devices is None else IoRecord(tuple(devices))

    def _hugetlb(self, h: Hierarchy, path: str) -> dict[str, HugetlbRecord]:
        d = _Dir(self.files, h.dir_for(path))
        anchor, peak = ("usage_in_bytes", "max_usage_in_bytes") if h.version == 1 else ("current", None)
        out: dict[str, HugetlbRecord] = {}
        if h.version == 2 and path == "/":  # no hugetlb files on the v2 root (as seen on this 6.18 host)
            return out
        if h.version == 2:  # v2 lists the controllers enabled for a cgroup: no hugetlb there, no files
            enabled = d.parsed("cgroup.controllers", lambda text, _: text.split())
            if enabled is None or "hugetlb" not in enabled:
                return out
        for size in self._page_sizes(h, d.path, anchor):
            usage = d.value(f"hugetlb.{size}.{anchor}")
            if usage is None:
                continue
            if h.version == 1:
                max_usage = d.need(d.value(f"hugetlb.{size}.{peak}"), f"hugetlb.{size}.{peak}")
                failcnt = d.need(d.value(f"hugetlb.{size}.failcnt"), f"hugetlb.{size}.failcnt")
            else:
                events = d.need(d.keyed(f"hugetlb.{size}.events"), f"hugetlb.{size}.events")
                max_usage, failcnt = 0, d.need_key(events, "max", f"hugetlb.{size}.events")
            out[size] = HugetlbRecord(usage=usage, max_usage=max_usage, failcnt=failcnt)
        return out

    def _page_sizes(self, h: Hierarchy, directory: str, anchor: str) -> tuple[str, ...]:
        """The huge page sizes of this hierarchy, from the first cgroup directory that lists any (cached)."""
        sizes = self._hugetlb_sizes.get(h.mount)
        if sizes is not None:
            return sizes
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return ()
        found = []
        for name in names:
            split = parse_hugetlb_name(name)
            if split is not None and split[1] == anchor:
                found.append(split[0])
        sizes = tuple(sorted(found, key=hugetlb_size_bytes))
        if sizes:
            self._hugetlb_sizes[h.mount] = sizes
        return sizes

"""Read one cgroup's stat files under a Layout into a CgroupRecord.

Which files, and what each value means (the rules the issue asks for, decided here once per version;
docs/cgroup-files.md has the table of every file, and what the reference readers do with it):

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
cpu v2: cpu.stat usage_usec, user_usec and system_usec and throttled_usec (µs → ns), nr_periods, nr_throttled.
pids: pids.current, pids.max (``max`` → 2**64-1; the root has no pids.max: no limit).
blkio v1: the first of BLKIO_GROUPS whose first file has a device line, in runc's order (fs/blkio.go
  GetStats): BFQ with its debug files, BFQ, CFQ, the recursive throttle files, the plain throttle files.
  Names as the kernel spells them (``blkio.time_recursive`` fills kata's io_time_recursive).
io v2: io.stat. hugetlb: per page size, v1 [rsvd.]usage_in_bytes/max_usage_in_bytes/failcnt, v2
  [rsvd.]current and events ``max`` (v2 keeps no peak); the ``rsvd`` files (kernel 5.7+) where present, as
  runc does. Read only when the cgroup's cgroup.controllers lists hugetlb on v2 (never on the v2 root,
  which has no hugetlb files).

Missing or malformed files. Only what the working set needs is required: v1 memory.usage_in_bytes and
memory.stat with ``total_inactive_file``; v2 memory.current (the root: memory.stat ``anon`` and ``file``) and
memory.stat with ``inactive_file``. Missing, they make the cgroup incomplete (IncompleteCgroup, or CgroupGone
when its directory is gone); malformed, a CgroupFormatError. Everything else costs only its own figure: a
controller whose anchor file is absent is None; an optional file (memsw, kmem, peak, swap) that is absent
stays absent; a file or key the kernel always writes next to the anchor that is missing or malformed, or a
malformed line, leaves that figure out (0 where kata's wire cannot say "absent") and is counted in
ReadErrors, which logs it once per file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Literal, TypeVar, cast

from guest_agent.files import ABSENT_FOR, FileCache, is_dir
from guest_agent.layout import Hierarchy, Layout
from guest_agent.names import KERNEL_PARTS
from guest_agent.parse import (
    U64_MAX,
    BlkioLine,
    CgroupFormatError,
    IoStatLine,
    KeyedSpelling,
    PlainV2,
    compile_fast_path,
    decode,
    hugetlb_size_bytes,
    keyed_spelling,
    parse_blkio,
    parse_flat_keyed,
    parse_hugetlb_name,
    parse_int_list_bytes,
    parse_meminfo,
    parse_nested_keyed,
    parse_plain_cpu_v1,
    parse_plain_singles,
    parse_plain_v2,
    parse_single_bytes,
)
from guest_agent.read_errors import ReadErrors
from guest_agent.record import (
    CgroupBlkio,
    CgroupCounter,
    CgroupCpu,
    CgroupCpuUsage,
    CgroupHugetlb,
    CgroupIo,
    CgroupMemory,
    CgroupPids,
    CgroupRecord,
    CgroupThrottling,
)

BlkioGroup = tuple[tuple[str, str], ...]


def _cfq_like(prefix: str, probe: str) -> BlkioGroup:
    """The eight recursive stat files CFQ (``blkio.``) and debug BFQ (``blkio.bfq.``) write, by kata field,
    the ``probe`` field's file first."""
    fields = (
        "io_serviced_recursive",
        "io_service_bytes_recursive",
        "sectors_recursive",
        "io_service_time_recursive",
        "io_wait_time_recursive",
        "io_merged_recursive",
        "io_queued_recursive",
    )
    files = (
        *((f, f"{prefix}{f}") for f in fields),
        ("io_time_recursive", f"{prefix}time_recursive"),  # the kernel's name has no io_
    )
    return tuple(sorted(files, key=lambda pair: pair[0] != probe))


def _two(prefix: str, suffix: str) -> BlkioGroup:
    return (
        ("io_serviced_recursive", f"{prefix}io_serviced{suffix}"),
        ("io_service_bytes_recursive", f"{prefix}io_service_bytes{suffix}"),
    )


BLKIO_GROUPS: tuple[BlkioGroup, ...] = (
    # BFQ built with CONFIG_BFQ_CGROUP_DEBUG, told by a file only that build has (runc's first file here):
    # probed by io_serviced_recursive, every plain BFQ kernel would count six debug files as missing.
    _cfq_like("blkio.bfq.", "sectors_recursive"),
    _two("blkio.bfq.", "_recursive"),  # BFQ
    _cfq_like("blkio.", "io_serviced_recursive"),  # CFQ (kernels before 5.0)
    _two("blkio.throttle.", "_recursive"),  # blk-throttle, kernel 5.x+
    _two("blkio.throttle.", ""),  # blk-throttle, older kernels: this cgroup only
)
"""(kata field, kernel file) per I/O policy, in runc's order of preference (fs/blkio.go GetStats): the first
group whose first file has a device line is read. The first file is io_serviced_recursive's, as kata-agent
probes it, in every group but debug BFQ's, which needs a file plain BFQ does not have."""


def _counter_v1_files(prefix: str) -> tuple[str, ...]:
    """A v1 page counter's files, in CgroupCounter's order."""
    return tuple(prefix + f for f in ("usage_in_bytes", "max_usage_in_bytes", "failcnt", "limit_in_bytes"))


_V1_COUNTERS = {p: _counter_v1_files(p) for p in ("memory.memsw.", "memory.kmem.", "memory.kmem.tcp.")}
_V1_MEMORY = (*_counter_v1_files("memory."), "memory.use_hierarchy")
_V1_MEMORY_ALL = (*_V1_COUNTERS["memory.memsw."], *_V1_COUNTERS["memory.kmem."], *_V1_MEMORY)
"""Swap first: without swap accounting the attempt stops at its first file."""
_V2_MEMORY = ("memory.current", "memory.peak", "memory.max")
_V2_SWAP = ("memory.swap.current", "memory.swap.peak", "memory.swap.max")
_V2_MEMORY_IN_ONE_GO = (*_V2_MEMORY, "memory.events", "memory.swap.current")
_V2_SWAP_REST = ("memory.swap.peak", "memory.swap.max", "memory.swap.events")
"""A v2 cgroup's memory files but memory.stat, read in one go (_plain_v2): the first run, cpu.stat, then the
swap files with swap accounting, in parse_plain_v2's order."""
_PIDS = ("pids.current", "pids.max")
_PLAIN_PIDS = compile_fast_path(rb"([0-9]{1,19}+)\n\0(?:([0-9]{1,19}+)|max)\n")
"""pids.current and pids.max as the kernel writes them, joined by a NUL (that no part matches)."""
_CPUACCT = ("cpuacct.usage", "cpuacct.stat", "cpuacct.usage_percpu")
_CPU_STAT = ("cpu.stat",)
"""The one-value files read in one go (_Dir.plain) when all are there and plainly written."""

_BLKIO_PROBES = tuple(group[0][1] for group in BLKIO_GROUPS)
"""The file each policy group of BLKIO_GROUPS is probed by."""
_NO_DEVICES = b"Total 0\n"
"""A v1 blkio per-op file of a cgroup that has done no block I/O: its sum line alone."""
_HUGETLB_V2_EVENTS_SPELLING = rb"max ([0-9]{1,19}+)\n"
_HUGETLB_V2_EVENTS = compile_fast_path(_HUGETLB_V2_EVENTS_SPELLING)
"""A v2 hugetlb.<size>.events file as the kernel writes it (its one key): the part _HUGETLB_V2_SIZES is built
of, held to parse_flat_keyed by tests/unit/test_fuzz_parsers.py."""
_HUGETLB_V2_SIZE = rb"[0-9]{1,19}+\n\0" + _HUGETLB_V2_EVENTS_SPELLING
_HUGETLB_V2_SIZES = compile_fast_path(_HUGETLB_V2_SIZE + rb"(?:\0" + _HUGETLB_V2_SIZE + rb")*+")
"""v2's hugetlb.<size>.rsvd.current and hugetlb.<size>.events per page size as the kernel writes them, joined
by NULs. No part of it matches a NUL, so a match holds each file in its own part."""
MAX_CONTROLLERS_SPELLINGS = 64
"""cgroup.controllers spellings the reader keeps the hugetlb answer of; beyond that it starts over."""
_ZERO = b"0\n"
"""What an optional peak file remembered absent reads as in one go (_Dir.plain): 0, as it does alone."""

_NS_PER_S = 1_000_000_000
_NS_PER_US = 1_000

T = TypeVar("T")
LenientParser = Callable[[str, str, list[CgroupFormatError]], T]
"""A multi-line parser that leaves a malformed line out and keeps it in its third argument."""


class CgroupGone(LookupError):
    """The cgroup directory does not exist (any more): the container is gone or never had this cgroup."""

    def __init__(self, path: str) -> None:
        super().__init__(f"cgroup {path} does not exist")
        self.path = path


class IncompleteCgroup(RuntimeError):
    """A file the working set needs is missing while the cgroup still exists."""

    def __init__(self, file: str) -> None:
        super().__init__(f"{file}: missing, although its controller's other files are there")
        self.file = file


Miss = tuple[str, str]
"""(file path, reason) of one figure left out."""


Strength = Literal["required", "optional", "expected"]
"""How a file's absence or garbling counts (_Dir)."""


def _words(data: bytes, path: str) -> list[str]:
    return decode(data, path).split()


class _PathTable(dict[str, str]):
    """The full path of each file of one cgroup directory, by file name: built on first use, then kept.

    Why: the file cache is keyed by path, and a path built anew for every read is a new string hashed anew
    at its lookup (some 35 a Stats, 50-odd characters each); a kept string carries its hash. Only names are
    kept here, never anything read.
    """

    __slots__ = ("directory", "prefix", "runs")

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory
        self.prefix = directory + "/"
        self.runs: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __missing__(self, name: str) -> str:
        path = self[name] = self.prefix + name
        return path

    def run(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The paths of ``names``, kept as one tuple."""
        paths = self.runs.get(names)
        if paths is None:
            paths = self.runs[names] = tuple(self[name] for name in names)
        return paths


MAX_WHERE = 512
"""Cgroup paths whose _Where the reader keeps; beyond that it starts over (about 10 KiB each)."""


class _Dir:
    """One cgroup directory of one hierarchy: reads and parses its files, naming the full path in errors.

    Three strengths of read: ``required`` (errors raise), ``optional`` (absent is normal; garbled or
    unreadable is a miss) and ``expected`` (the kernel always writes it next to its controller's anchor:
    absent, garbled or unreadable is a miss). Misses go to ``misses``; the reader counts them once the
    cgroup is known to exist. Every file goes through ``_load``, one level of calls between the reader's
    rules and the file cache: a Stats reads some 25 files, and each Python call per file costs about 1 µs a
    Stats (bench.hops); runs of one-value files are first tried in one go (``plain``).
    """

    __slots__ = ("files", "misses", "path", "paths", "prefix", "skipped", "stat_spelling")

    def __init__(
        self, files: FileCache, paths: _PathTable, misses: list[Miss], skipped: list[CgroupFormatError]
    ) -> None:
        self.files = files
        self.paths = paths
        self.path = paths.directory
        self.prefix = paths.prefix
        self.misses = misses
        self.skipped = skipped
        """The malformed lines left out of this read's files (shared by the cgroup's directories)."""
        self.stat_spelling: KeyedSpelling | None = None
        """memory.stat's keys as this cgroup's last well-formed one had them (names only, never a value)."""

    def _load(self, name: str, convert: Callable[[bytes, str], T], strength: Strength) -> T | None:
        """``convert(data, path)`` of the file ``name``, or None when it does not exist; what a missing,
        garbled or unreadable file also is follows ``strength`` (class docstring)."""
        path = self.paths[name]
        try:
            data = self.files.read_bytes(path)
            if data is not None:
                return convert(data, path)
        except CgroupFormatError as e:
            if strength == "required":
                raise
            self.misses.append((path, f"line {e.line}: {e.reason}" if e.line else e.reason))
            return None
        except OSError as e:
            if strength == "required":
                raise
            self.misses.append((path, e.strerror or str(e)))
            return None
        if strength == "expected":
            self.misses.append((path, "missing"))
        return None

    def _lenient(self, parse: LenientParser[T], data: bytes, path: str) -> T:
        """``parse`` with its malformed lines left out, each kept as a miss of the file."""
        skipped: list[CgroupFormatError] = []
        out = parse(decode(data, path), path, skipped)
        if skipped:
            self.misses.extend((path, f"line {e.line}: {e.reason}") for e in skipped)
            self.skipped.extend(skipped)
        return out

    def _flat_keyed(self, data: bytes, path: str) -> dict[str, int]:
        return self._lenient(parse_flat_keyed, data, path)

    def number(self, name: str, strength: Strength = "optional") -> int | None:
        """A one-value file (``max`` → U64_MAX); None when absent."""
        return self._load(name, parse_single_bytes, strength)

    def plain(self, names: tuple[str, ...], peak: int = -1) -> list[int] | None:
        """The values of one-value files read in one go when each is open and plainly written (digits or
        ``max``), the common case; None otherwise, and the caller reads them one by one under each file's
        own rules. Why: a Python call per file cost some 6k instructions of a small file's 9k (a Stats
        reads 16 such files on v1).

        ``peak``: the index of an optional peak file that older kernels lack (v2 memory.peak before 5.19,
        memory.swap.peak before 6.5), 0 when remembered absent, as the file-by-file rule reads it."""
        if peak < 0:
            data = self.files.read_open(self.paths.run(names))
            return None if data is None else parse_plain_singles(data)
        found = self.files.read_open(self.paths.run(names), absent=True)
        if found is None:
            return None
        if found[peak] is None:
            found[peak] = _ZERO
        if None in found:
            return None
        return parse_plain_singles(cast("list[bytes]", found))

    def value(self, name: str) -> int:
        """An expected one-value file; 0 when missing or garbled (a miss)."""
        found = self._load(name, parse_single_bytes, "expected")
        return 0 if found is None else found

    def keyed(self, name: str, strength: Strength = "optional") -> dict[str, int] | None:
        """A ``key value`` file, malformed lines left out (misses); None when absent."""
        return self._load(name, self._flat_keyed, strength)

    def io_devices(self) -> list[IoStatLine] | None:
        """v2 io.stat's device lines, malformed lines left out (misses); None when absent."""
        return self._load("io.stat", self._io_lines, "optional")

    def _io_lines(self, data: bytes, path: str) -> list[IoStatLine]:
        # A cgroup whose processes have done no block I/O (the captured v2 container's) has an empty io.stat:
        # parse_nested_keyed gives [] for it, here without its calls (some 6k instructions).
        return self._lenient(parse_nested_keyed, data, path) if data else []

    def blkio(self, name: str, strength: Strength) -> list[BlkioLine] | None:
        """A v1 blkio file's device lines, as lines(name, parse_blkio) reads them."""
        return self._load(name, self._blkio_lines, strength)

    def _blkio_lines(self, data: bytes, path: str) -> list[BlkioLine]:
        # A cgroup without block I/O (most, most of the time) has the sum line alone in every file that a
        # read probes: parse_blkio gives [] for it, here without its six calls (some 8k instructions).
        return [] if data == _NO_DEVICES else self._lenient(parse_blkio, data, path)

    def key(self, values: Mapping[str, int] | None, key: str, name: str) -> int:
        """``values[key]``; 0 and a miss when the key is absent (no second miss when the file was)."""
        if values is None:
            return 0
        if key not in values:
            self.misses.append((self.prefix + name, f"key {key!r} missing"))
            return 0
        return values[key]

    def need(self, found: T | None, name: str) -> T:
        """``found``, or IncompleteCgroup naming the missing file."""
        if found is None:
            raise IncompleteCgroup(self.prefix + name)
        return found

    def need_key(self, values: Mapping[str, int], key: str, name: str) -> int:
        """``values[key]``, or a format error: the key's own malformed line, else the file lacking the key."""
        if key not in values:
            path = self.prefix + name
            raise next(
                (e for e in self.skipped if e.source == path and e.key == key),
                CgroupFormatError(path, 0, f"key {key!r} missing"),
            )
        return values[key]

    def required_stat(self) -> dict[str, int] | None:
        """memory.stat, which the working set needs: None when absent, malformed lines left out (misses)."""
        return self._load("memory.stat", self._stat, "required")

    def _stat(self, data: bytes, path: str) -> dict[str, int]:
        """memory.stat by the spelling its last well-formed read had, when it still has it (one regex, the
        dict keyed by kept names: the split, the key strings and their hashes spared, some 40 lines); else
        through parse_flat_keyed, whose well-formed result gives the spelling for the next read."""
        spelling = self.stat_spelling
        if spelling is not None and (found := spelling.parse(data)) is not None:
            return found
        skipped = len(self.skipped)
        out = self._flat_keyed(data, path)
        if out and len(self.skipped) == skipped:
            self.stat_spelling = keyed_spelling(tuple(out))
        return out

    def counter_v1(self, prefix: str) -> CgroupCounter | None:
        """An optional v1 page counter: ``<prefix>usage_in_bytes`` and the three files beside it."""
        if (plain := self.plain(_V1_COUNTERS[prefix])) is not None:
            return CgroupCounter._make(plain)
        usage = self.number(prefix + "usage_in_bytes")
        return None if usage is None else self.counter_rest_v1(prefix, usage)

    def counter_rest_v1(self, prefix: str, usage: int) -> CgroupCounter:
        """The counter of ``usage``: ``<prefix>{max_usage_in_bytes,failcnt,limit_in_bytes}``, expected.

        Except memory.kmem.limit_in_bytes, optional as runc has it (fs/memory.go getMemoryData: "removed in
        newer kernels"); this 6.18 kernel still has it.
        """
        if prefix == "memory.kmem.":
            limit = self.number(prefix + "limit_in_bytes") or 0
        else:
            limit = self.value(prefix + "limit_in_bytes")
        return CgroupCounter(
            usage=usage,
            max_usage=self.value(prefix + "max_usage_in_bytes"),
            failcnt=self.value(prefix + "failcnt"),
            limit=limit,
        )


class _Where:
    """Where one cgroup's files are: its directory in every controller's hierarchy (a _Dir each, with its
    _PathTable) and in the primary one, and the lists one read of it fills (cleared at each read). Decided
    once per cgroup path, since the layout does not change while the reader lives: building the five _Dir
    objects was some 14k instructions a read. One read at a time (the reader is not thread-safe)."""

    __slots__ = ("dirs", "misses", "primary", "skipped")

    def __init__(self, layout: Layout, files: FileCache, cgroup_path: str) -> None:
        self.primary = layout.primary.dir_for(cgroup_path)
        self.misses: list[Miss] = []
        self.skipped: list[CgroupFormatError] = []
        self.dirs = {
            name: _Dir(files, _PathTable(h.dir_for(cgroup_path)), self.misses, self.skipped)
            for name, h in layout.controllers.items()
        }

    def start(self) -> list[Miss]:
        """Empty the read's lists for a new read; its misses."""
        self.misses.clear()
        self.skipped.clear()
        return self.misses


class CgroupReader:
    """Reads cgroups under one Layout; also holds what the guest-wide rules need (meminfo, CLK_TCK)."""

    def __init__(
        self,
        layout: Layout,
        meminfo: str = "/proc/meminfo",
        clk_tck: int | None = None,
        files: FileCache | None = None,
        errors: ReadErrors | None = None,
    ) -> None:
        self.layout = layout
        self.meminfo = meminfo
        self.clk_tck = clk_tck if clk_tck is not None else os.sysconf("SC_CLK_TCK")
        if files is None:
            files = FileCache(kernfs_devices=layout.mounted_devices, absent_for=ABSENT_FOR)
        self.files = files
        self.errors = errors if errors is not None else ReadErrors()
        self._hugetlb_sizes: dict[str, tuple[str, ...]] = {}
        self._where: dict[str, _Where] = {}
        self._hugetlb_v2_names: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._lists_hugetlb: dict[bytes, bool] = {}
        """cgroup.controllers' spellings seen, and whether each lists hugetlb (names only, never a value)."""

    def close(self) -> None:
        """Close the files kept open between reads."""
        self.files.close()

    def read(self, cgroup_path: str, *, extras: bool = False) -> CgroupRecord:
        """Every controller's stats for ``cgroup_path`` (``/`` = the whole guest); CgroupGone if gone.

        ``extras`` also reads what kata's StatsContainerResponse has no field for (v1 memory.kmem.tcp.* and
        memory.oom_control): five files a stats answer would read for nothing.

        Figures left out are counted in ``errors`` only once the cgroup is known to still exist: a cgroup
        being removed loses its files a moment before its directory, which is not a read error.
        """
        where = self._where.get(cgroup_path)
        if where is None:
            if len(self._where) >= MAX_WHERE:
                self._where.clear()
            where = self._where[cgroup_path] = _Where(self.layout, self.files, cgroup_path)
        primary = where.primary
        misses = where.start()
        try:
            record = self._read(where, cgroup_path, extras)
        except IncompleteCgroup:
            if not is_dir(primary):
                raise self._gone(cgroup_path) from None
            # Read once more, with fresh fds, before calling it broken.
            self._forget(cgroup_path)
            where.start()
            try:
                record = self._read(where, cgroup_path, extras)
            except IncompleteCgroup:
                if not is_dir(primary):
                    raise self._gone(cgroup_path) from None
                raise
        # Checked after reading, whatever was found: a file of a removed cgroup may have been read through an
        # fd opened earlier (regular files keep their content after unlink; kernfs ones fail with ENODEV).
        if not is_dir(primary):
            raise self._gone(cgroup_path)
        counted: set[str] = set()
        for path, reason in misses:  # one count per file and read, with its first reason
            if path not in counted:
                counted.add(path)
                self.errors.add(path, reason, cgroup_path)
        return record

    def _forget(self, cgroup_path: str) -> None:
        """Close the cgroup's cached files in every hierarchy."""
        self._where.pop(cgroup_path, None)
        for h in set(self.layout.controllers.values()):
            self.files.forget(h.dir_for(cgroup_path))

    def _gone(self, cgroup_path: str) -> CgroupGone:
        """Close the vanished cgroup's cached files; the error to raise."""
        self._forget(cgroup_path)
        for h in set(self.layout.controllers.values()):
            self.errors.forget(h.dir_for(cgroup_path))
        return CgroupGone(self.layout.primary.dir_for(cgroup_path))

    def _read(self, where: _Where, path: str, extras: bool) -> CgroupRecord:
        c = self.layout.controllers
        dirs = where.dirs
        root = path == "/"
        memory_rec = None
        cpu = dirs.get("cpu")
        plain = None
        if (mem := dirs.get("memory")) is not None:
            if c["memory"].version == 1:
                memory_rec = self._memory_v1(mem, extras)
            else:
                if not root and cpu is not None and c["cpu"].version == 2:  # a hybrid may keep cpu on v1
                    plain = self._plain_v2(mem, cpu)
                memory_rec = self._memory_v2(mem, root, plain)
        cpu_rec = None
        if cpu is not None and c["cpu"].version == 2:
            cpu_rec = self._cpu_v2(cpu, plain)
        elif cpu is not None or "cpuacct" in c:
            cpu_rec = self._cpu_v1(cpu, dirs.get("cpuacct"))
        blkio_rec: CgroupBlkio | CgroupIo | None = None
        if (blkio := dirs.get("blkio")) is not None:
            blkio_rec = self._blkio_v1(blkio) if c["blkio"].version == 1 else self._io_v2(blkio)
        pids = dirs.get("pids")
        hugetlb = c.get("hugetlb")
        return CgroupRecord(  # positional, in CgroupRecord's field order (keywords cost some 3k instructions)
            path,
            memory_rec,
            cpu_rec,
            self._pids(pids, root) if pids is not None else None,
            blkio_rec,
            self._hugetlb(hugetlb, dirs["hugetlb"], path) if hugetlb is not None else {},
        )

    @staticmethod
    def _memory_v1(d: _Dir, extras: bool) -> CgroupMemory | None:
        stat = d.required_stat()
        if stat is None:
            return None
        d.need_key(stat, "total_inactive_file", "memory.stat")
        swap: CgroupCounter | None
        kernel: CgroupCounter | None
        if (plain := d.plain(_V1_MEMORY_ALL)) is not None:  # the 13 files in one go
            swap, kernel = CgroupCounter._make(plain[:4]), CgroupCounter._make(plain[4:8])
            usage, use_hierarchy = CgroupCounter._make(plain[8:12]), plain[12]
        else:
            swap, kernel = d.counter_v1("memory.memsw."), d.counter_v1("memory.kmem.")
            if (plain := d.plain(_V1_MEMORY)) is not None:
                usage, use_hierarchy = CgroupCounter._make(plain[:4]), plain[4]
            else:
                found = d.need(d.number("memory.usage_in_bytes", "required"), "memory.usage_in_bytes")
                usage, use_hierarchy = d.counter_rest_v1("memory.", found), d.value("memory.use_hierarchy")
        if extras:
            return CgroupMemory(
                version=1,
                usage=usage,
                swap=swap,
                kernel=kernel,
                kernel_tcp=d.counter_v1("memory.kmem.tcp."),
                cache=d.key(stat, "cache", "memory.stat"),
                use_hierarchy=use_hierarchy == 1,
                stat=stat,
                oom_control=d.keyed("memory.oom_control") or {},
            )
        # A Stats: positional, in CgroupMemory's field order (keywords cost some 3k instructions).
        return CgroupMemory(
            1, usage, swap, kernel, d.key(stat, "cache", "memory.stat"), use_hierarchy == 1, stat
        )

    def _plain_v2(self, mem: _Dir, cpu: _Dir) -> PlainV2 | None:
        """The v2 memory files but memory.stat and cpu.stat, read in one go and parsed in one, when each is
        open (or an optional file remembered absent) and as the kernel writes it; None otherwise, and each is
        read on its own under its own rules. Why: memory.events, memory.swap.events and cpu.stat one by one
        cost a read, a parser call and a dict each. An absent peak file reads as 0, as it does alone; without
        memory.swap.current the other swap files are not looked at (no swap accounting), as alone."""
        files = self.files
        found = files.read_open(mem.paths.run(_V2_MEMORY_IN_ONE_GO) + cpu.paths.run(_CPU_STAT), absent=True)
        if found is None:
            return None
        if found[1] is None:
            found[1] = _ZERO
        swap = found[4] is not None
        if not swap:
            del found[4]
        elif (rest := files.read_open(mem.paths.run(_V2_SWAP_REST), absent=True)) is None:
            return None
        else:
            found += rest
            if found[6] is None:
                found[6] = _ZERO
        if None in found:
            return None
        return parse_plain_v2(cast("list[bytes]", found), swap)

    def _memory_v2(self, d: _Dir, root: bool, one_go: PlainV2 | None) -> CgroupMemory | None:
        stat = d.required_stat()
        if stat is None:
            return None
        d.need_key(stat, "inactive_file", "memory.stat")
        events: dict[str, int] = {}
        if root:
            anon_file = d.need_key(stat, "anon", "memory.stat") + d.need_key(stat, "file", "memory.stat")
            usage = CgroupCounter(usage=anon_file, max_usage=0, failcnt=0, limit=U64_MAX)
            swap = self._root_swap(d)
        elif one_go is not None:  # read in one go (_plain_v2)
            events = one_go.events
            usage = CgroupCounter(one_go.usage, one_go.peak, events["max"], one_go.limit)
            swap = None if one_go.swap is None else CgroupCounter._make(one_go.swap)
        else:
            events_read = d.keyed("memory.events", "expected")
            events = events_read or {}
            failcnt = d.key(events_read, "max", "memory.events")
            if (plain := d.plain(_V2_MEMORY, peak=1)) is not None:
                usage = CgroupCounter(usage=plain[0], max_usage=plain[1], failcnt=failcnt, limit=plain[2])
            else:
                usage = CgroupCounter(
                    usage=d.need(d.number("memory.current", "required"), "memory.current"),
                    max_usage=d.number("memory.peak") or 0,
                    failcnt=failcnt,
                    limit=d.value("memory.max"),
                )
            swap = self._swap_v2(d)
        kernel = stat["kernel"] if "kernel" in stat else sum(stat.get(k, 0) for k in KERNEL_PARTS)
        # Positional, in CgroupMemory's field order (keywords cost some 3k instructions); no kernel_tcp on v2.
        kernel_counter = CgroupCounter(kernel, 0, 0, U64_MAX)
        cache = d.key(stat, "file", "memory.stat")
        return CgroupMemory(2, usage, swap, kernel_counter, cache, True, stat, None, events)

    @staticmethod
    def _swap_v2(d: _Dir) -> CgroupCounter | None:
        plain = d.plain(_V2_SWAP, peak=1)
        current = d.number("memory.swap.current") if plain is None else plain[0]
        if current is None:  # no swap accounting in this kernel (or swapaccount=0)
            return None
        if plain is not None:
            peak, limit = plain[1], plain[2]
        else:
            peak, limit = d.number("memory.swap.peak") or 0, d.value("memory.swap.max")
        swap_events = d.keyed("memory.swap.events") or {}
        return CgroupCounter(usage=current, max_usage=peak, failcnt=swap_events.get("fail", 0), limit=limit)

    def _root_swap(self, d: _Dir) -> CgroupCounter | None:
        try:
            data = self.files.read_bytes(self.meminfo)
            info = None if data is None else parse_meminfo(decode(data, self.meminfo), self.meminfo)
        except (CgroupFormatError, OSError) as e:
            d.misses.append((self.meminfo, str(e)))
            return None
        if info is None or "SwapTotal" not in info or "SwapFree" not in info:
            return None
        used = max(info["SwapTotal"] - info["SwapFree"], 0)
        return CgroupCounter(usage=used, max_usage=0, failcnt=0, limit=U64_MAX)

    def _cpu_v1(self, cpu: _Dir | None, cpuacct: _Dir | None) -> CgroupCpu | None:
        if cpu is not None and cpuacct is not None:  # the four files in one go, as the kernel writes them
            data = self.files.read_open(cpuacct.paths.run(_CPUACCT) + cpu.paths.run(_CPU_STAT))
            if data is not None and (plain := parse_plain_cpu_v1(data)) is not None:
                clk_tck = self.clk_tck
                return CgroupCpu(
                    CgroupCpuUsage(
                        plain.usage,
                        plain.user_ticks * _NS_PER_S // clk_tck,
                        plain.system_ticks * _NS_PER_S // clk_tck,
                        plain.percpu,
                    ),
                    CgroupThrottling(plain.periods, plain.throttled_periods, plain.throttled_time),
                )
        usage = None
        if cpuacct is not None and (total := cpuacct.number("cpuacct.usage")) is not None:
            ticks = cpuacct.keyed("cpuacct.stat", "expected")
            percpu = cpuacct._load("cpuacct.usage_percpu", parse_int_list_bytes, "expected")
            usage = CgroupCpuUsage(
                total=total,
                user=cpuacct.key(ticks, "user", "cpuacct.stat") * _NS_PER_S // self.clk_tck,
                kernel=cpuacct.key(ticks, "system", "cpuacct.stat") * _NS_PER_S // self.clk_tck,
                percpu=tuple(percpu or ()),
            )
        throttling = None
        if cpu is not None and (stat := cpu.keyed("cpu.stat")) is not None and "nr_periods" in stat:
            throttling = CgroupThrottling(
                periods=stat["nr_periods"],
                throttled_periods=cpu.key(stat, "nr_throttled", "cpu.stat"),
                throttled_time=cpu.key(stat, "throttled_time", "cpu.stat"),
            )
        if usage is None and throttling is None:
            return None
        return CgroupCpu(usage=usage, throttling=throttling)

    @staticmethod
    def _cpu_v2(d: _Dir, plain: PlainV2 | None) -> CgroupCpu | None:
        if plain is not None:  # read in one go (_plain_v2)
            throttled = plain.throttling
            return CgroupCpu(
                CgroupCpuUsage(
                    plain.cpu_usage * _NS_PER_US, plain.cpu_user * _NS_PER_US, plain.cpu_system * _NS_PER_US
                ),
                None
                if throttled is None
                else CgroupThrottling(throttled[0], throttled[1], throttled[2] * _NS_PER_US),
            )
        stat = d.keyed("cpu.stat")
        if stat is None:
            return None
        usage = CgroupCpuUsage(
            total=d.key(stat, "usage_usec", "cpu.stat") * _NS_PER_US,
            user=d.key(stat, "user_usec", "cpu.stat") * _NS_PER_US,
            kernel=d.key(stat, "system_usec", "cpu.stat") * _NS_PER_US,
        )
        throttling = None
        if "nr_periods" in stat:  # only with the cpu controller enabled
            throttling = CgroupThrottling(
                periods=stat["nr_periods"],
                throttled_periods=d.key(stat, "nr_throttled", "cpu.stat"),
                throttled_time=d.key(stat, "throttled_usec", "cpu.stat") * _NS_PER_US,
            )
        return CgroupCpu(usage=usage, throttling=throttling)

    @staticmethod
    def _pids(d: _Dir, root: bool) -> CgroupPids | None:
        data = d.files.read_open(d.paths.run(_PIDS))  # both in one go, as the kernel writes them
        if data is not None and (plain := _PLAIN_PIDS.fullmatch(b"\0".join(data))) is not None:
            limit = plain[2]
            return CgroupPids(int(plain[1]), U64_MAX if limit is None else int(limit))
        current = d.number("pids.current")
        if current is None:
            return None
        if root:  # the kernel puts no pids.max on the root: it has no limit
            limit = d.number("pids.max")
            return CgroupPids(current=current, limit=U64_MAX if limit is None else limit)
        return CgroupPids(current=current, limit=d.value("pids.max"))

    @staticmethod
    def _blkio_v1(d: _Dir) -> CgroupBlkio | None:
        """The first group of BLKIO_GROUPS whose first file has a device line (runc's rule)."""
        probes = d.files.read_open(d.paths.run(_BLKIO_PROBES), absent=True)
        if probes is not None and probes.count(None) + probes.count(_NO_DEVICES) == len(probes):
            return None  # in one go: every probe absent or without a device line (a cgroup without I/O)
        for group in BLKIO_GROUPS:
            (field, first_name), *rest = group
            first = d.blkio(first_name, "optional")
            if not first:
                continue
            files = {field: tuple(first)}
            for field, name in rest:
                lines = d.blkio(name, "expected")
                if lines is not None:
                    files[field] = tuple(lines)
            return CgroupBlkio(files)
        return None

    @staticmethod
    def _io_v2(d: _Dir) -> CgroupIo | None:
        devices = d.io_devices()
        return None if devices is None else CgroupIo(tuple(devices))

    def _hugetlb(self, h: Hierarchy, d: _Dir, path: str) -> dict[str, CgroupHugetlb]:
        anchor = "usage_in_bytes" if h.version == 1 else "current"
        out: dict[str, CgroupHugetlb] = {}
        if h.version == 2 and path == "/":  # no hugetlb files on the v2 root (as seen on this 6.18 host)
            return out
        if h.version == 2:
            sizes = self._hugetlb_sizes.get(h.mount)
            if sizes is not None and (plain := self._hugetlb_v2_plain(d, sizes)) is not None:
                return plain
            # v2 lists the controllers enabled for a cgroup: no hugetlb there, no files
            enabled = d._load("cgroup.controllers", _words, "optional")
            if enabled is None or "hugetlb" not in enabled:
                return out
        for size in self._page_sizes(h, d.path, anchor):
            # The reservation counters (kernel 5.7+) where present, as runc does (fs/hugetlb.go GetStats).
            prefix = f"hugetlb.{size}.rsvd."
            usage = d.number(prefix + anchor)
            if usage is None:
                prefix = f"hugetlb.{size}."
                usage = d.number(prefix + anchor)
            if usage is None:
                continue
            if h.version == 1:
                max_usage, failcnt = d.value(prefix + "max_usage_in_bytes"), d.value(prefix + "failcnt")
            else:  # failcnt from the plain events file: v2 keeps no rsvd events (runc fs2/hugetlb.go)
                events = d.keyed(f"hugetlb.{size}.events", "expected")
                max_usage, failcnt = 0, d.key(events, "max", f"hugetlb.{size}.events")
            out[size] = CgroupHugetlb(usage=usage, max_usage=max_usage, failcnt=failcnt)
        return out

    def _hugetlb_v2_plain(self, d: _Dir, sizes: tuple[str, ...]) -> dict[str, CgroupHugetlb] | None:
        """A v2 cgroup's hugetlb: cgroup.controllers and each page size's hugetlb.<size>.rsvd.current and
        .events in one go, when each is open and as the kernel writes it; None otherwise, and they are read
        one by one under their own rules. Why: one by one they cost a read of cgroup.controllers, its decode
        and split, and a read and two parses a page size (some 60k instructions a Stats with two sizes).
        What is kept across reads is names only: the file names per set of sizes, and whether a
        cgroup.controllers spelling lists hugetlb (the file itself is read every time)."""
        names = self._hugetlb_v2_names.get(sizes)
        if names is None:
            names = self._hugetlb_v2_names[sizes] = (
                "cgroup.controllers",
                *(f"hugetlb.{size}.{name}" for size in sizes for name in ("rsvd.current", "events")),
            )
        data = d.files.read_open(d.paths.run(names))
        if data is None:
            return None
        controllers = data[0]
        listed = self._lists_hugetlb.get(controllers)
        if listed is None:
            if not controllers.isascii():  # garbled: read alone, it is a miss
                return None
            if len(self._lists_hugetlb) >= MAX_CONTROLLERS_SPELLINGS:
                self._lists_hugetlb.clear()
            listed = self._lists_hugetlb[controllers] = "hugetlb" in controllers.decode("ascii").split()
        if not listed:
            return {}
        joined = b"\0".join(data[1:])
        if _HUGETLB_V2_SIZES.fullmatch(joined) is None:
            return None
        values = map(int, joined.translate(None, b"\0max").split())  # usage, failcnt per size
        return {size: CgroupHugetlb(usage, 0, failcnt) for size, usage, failcnt in zip(sizes, values, values)}

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

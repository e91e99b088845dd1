"""Every file the reader opens is one the kernel creates, by the kernel's own name (issue 15 §3).

The lists below are typed from the kernel sources (the cftype arrays named next to each), not taken from
guest_agent: an oracle that shared the reader's table would have repeated its ``blkio.io_time_recursive``
(the kernel's file is ``blkio.time_recursive``; kata's *field* is io_time_recursive). v1 names get the
controller's prefix (``blkio.``, ``memory.``, ...) from cgroup_file_name(); hugetlb names are built per page
size by hugetlb_cgroup_cfttypes_init() as ``hugetlb.<size>.<name>``.

Two directions are checked: every name the reader opens (recorded through its FileCache while reading trees
that hold every file) is in these lists; and every blkio and hugetlb file the kernel offers for a kata
field is actually read, each with its own test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from guest_agent.files import FileCache
from guest_agent.layout import detect_layout
from guest_agent.parse import BlkioLine
from guest_agent.reader import CgroupReader

# block/cfq-iosched.c cfq_blkcg_legacy_files (kernels before 5.0), statistics and their recursive twins.
CFQ = [
    "blkio.time",
    "blkio.sectors",
    "blkio.io_service_bytes",
    "blkio.io_serviced",
    "blkio.io_service_time",
    "blkio.io_wait_time",
    "blkio.io_merged",
    "blkio.io_queued",
    "blkio.time_recursive",
    "blkio.sectors_recursive",
    "blkio.io_service_bytes_recursive",
    "blkio.io_serviced_recursive",
    "blkio.io_service_time_recursive",
    "blkio.io_wait_time_recursive",
    "blkio.io_merged_recursive",
    "blkio.io_queued_recursive",
]
# block/bfq-cgroup.c bfq_blkcg_legacy_files: always the two byte/io counters; the rest only with
# CONFIG_BFQ_CGROUP_DEBUG.
BFQ = [
    "blkio.bfq.io_service_bytes",
    "blkio.bfq.io_serviced",
    "blkio.bfq.io_service_bytes_recursive",
    "blkio.bfq.io_serviced_recursive",
]
BFQ_DEBUG = [
    "blkio.bfq.time",
    "blkio.bfq.sectors",
    "blkio.bfq.io_service_time",
    "blkio.bfq.io_wait_time",
    "blkio.bfq.io_merged",
    "blkio.bfq.io_queued",
    "blkio.bfq.time_recursive",
    "blkio.bfq.sectors_recursive",
    "blkio.bfq.io_service_time_recursive",
    "blkio.bfq.io_wait_time_recursive",
    "blkio.bfq.io_merged_recursive",
    "blkio.bfq.io_queued_recursive",
]
# block/blk-throttle.c throtl_legacy_files (the *_recursive pair since kernel 4.x).
THROTTLE = [
    "blkio.throttle.io_service_bytes",
    "blkio.throttle.io_service_bytes_recursive",
    "blkio.throttle.io_serviced",
    "blkio.throttle.io_serviced_recursive",
]
# mm/hugetlb_cgroup.c hugetlb_legacy_tmpl (v1) and hugetlb_dfl_tmpl (v2), per page size.
HUGETLB_V1 = [
    "limit_in_bytes",
    "rsvd.limit_in_bytes",
    "usage_in_bytes",
    "rsvd.usage_in_bytes",
    "max_usage_in_bytes",
    "rsvd.max_usage_in_bytes",
    "failcnt",
    "rsvd.failcnt",
    "numa_stat",
]
HUGETLB_V2 = ["max", "rsvd.max", "current", "rsvd.current", "events", "events.local", "numa_stat"]
# mm/memcontrol-v1.c mem_cgroup_legacy_files (+ memsw_files of mm/memcontrol.c swap accounting).
MEMORY_V1 = [
    "memory.usage_in_bytes",
    "memory.max_usage_in_bytes",
    "memory.limit_in_bytes",
    "memory.soft_limit_in_bytes",
    "memory.failcnt",
    "memory.stat",
    "memory.use_hierarchy",
    "memory.oom_control",
    "memory.numa_stat",
    "memory.kmem.usage_in_bytes",
    "memory.kmem.max_usage_in_bytes",
    "memory.kmem.limit_in_bytes",
    "memory.kmem.failcnt",
    "memory.kmem.tcp.usage_in_bytes",
    "memory.kmem.tcp.max_usage_in_bytes",
    "memory.kmem.tcp.limit_in_bytes",
    "memory.kmem.tcp.failcnt",
    "memory.memsw.usage_in_bytes",
    "memory.memsw.max_usage_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.memsw.failcnt",
]
# mm/memcontrol.c memory_files and swap_files (v2).
MEMORY_V2 = [
    "memory.current",
    "memory.peak",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.events",
    "memory.events.local",
    "memory.stat",
    "memory.numa_stat",
    "memory.oom.group",
    "memory.swap.current",
    "memory.swap.high",
    "memory.swap.max",
    "memory.swap.peak",
    "memory.swap.events",
]
# kernel/sched/cpuacct.c files; kernel/sched/core.c cpu_legacy_files (v1 "stat" → cpu.stat).
CPU_V1 = [
    "cpuacct.usage",
    "cpuacct.usage_user",
    "cpuacct.usage_sys",
    "cpuacct.usage_percpu",
    "cpuacct.usage_percpu_user",
    "cpuacct.usage_percpu_sys",
    "cpuacct.usage_all",
    "cpuacct.stat",
    "cpu.shares",
    "cpu.cfs_quota_us",
    "cpu.cfs_period_us",
    "cpu.stat",
]
# kernel/cgroup/cgroup.c cgroup_base_files (cgroup.controllers, cpu.stat on v2); kernel/cgroup/pids.c
# pids_files; block/blk-cgroup.c blkcg_files ("stat" → io.stat).
CORE_V2 = ["cgroup.controllers", "cgroup.procs", "cpu.stat", "io.stat"]
PIDS = ["pids.max", "pids.current", "pids.peak", "pids.events"]

KERNEL_NAMES = {*CFQ, *BFQ, *BFQ_DEBUG, *THROTTLE, *MEMORY_V1, *MEMORY_V2, *CPU_V1, *CORE_V2, *PIDS}
PAGE_SIZES = ("2MB", "1GB")


def kernel_name(name: str) -> bool:
    if name in KERNEL_NAMES:
        return True
    prefix, _, rest = name.partition(".")
    size, _, file = rest.partition(".")
    return prefix == "hugetlb" and size in PAGE_SIZES and file in {*HUGETLB_V1, *HUGETLB_V2}


class RecordingCache(FileCache):
    """The reader's file cache, also recording every path it is asked to read."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def read_bytes(self, path: str) -> bytes | None:
        self.asked.add(path)
        return super().read_bytes(path)


def fill(directory: Path, names: list[str]) -> None:
    """Every named file with a value its parser takes (the content does not matter here, only the names)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.startswith("blkio."):
            text = "8:0 1\n" if "time" in name or "sectors" in name else "8:0 Read 1\n8:0 Total 1\nTotal 1\n"
        elif name in ("memory.stat",):
            text = "cache 1\ntotal_inactive_file 1\nanon 1\nfile 1\ninactive_file 1\n"
        elif name in (
            "cpu.stat",
            "cpuacct.stat",
            "memory.events",
            "memory.oom_control",
            "memory.swap.events",
        ):
            text = "user 1\nsystem 1\nnr_periods 1\nnr_throttled 1\nthrottled_time 1\nmax 1\nfail 1\n"
            text += "usage_usec 1\nuser_usec 1\nsystem_usec 1\nthrottled_usec 1\n"
        elif name == "cgroup.controllers":
            text = "cpu io memory hugetlb pids\n"
        elif name.endswith(".events"):
            text = "max 1\n"
        else:
            text = "1\n"
        (directory / name).write_text(text)


def opened_names(root: Path, path: str) -> set[str]:
    cache = RecordingCache()
    CgroupReader(detect_layout(str(root)), files=cache, clk_tck=100).read(path)
    return {p.rsplit("/", 1)[-1] for p in cache.asked}


def hugetlb(names: list[str]) -> list[str]:
    return [f"hugetlb.{size}.{name}" for size in PAGE_SIZES for name in names]


@pytest.mark.parametrize(
    "blkio", [CFQ, BFQ, BFQ + BFQ_DEBUG, THROTTLE], ids=["cfq", "bfq", "bfq-debug", "throttle"]
)
def test_every_name_a_v1_reader_opens_is_a_kernel_file(tmp_path, blkio):
    for controller, names in (
        ("memory", MEMORY_V1),
        ("cpu", [n for n in CPU_V1 if n.startswith("cpu.")]),
        ("cpuacct", [n for n in CPU_V1 if n.startswith("cpuacct.")]),
        ("pids", PIDS),
        ("blkio", blkio),
        ("hugetlb", hugetlb(HUGETLB_V1)),
    ):
        fill(tmp_path / controller / "c1", names)
    opened = opened_names(tmp_path, "/c1")
    assert {
        "memory.usage_in_bytes",
        "cpuacct.usage",
        "pids.current",
        "hugetlb.2MB.rsvd.usage_in_bytes",
    } <= opened
    assert sorted(n for n in opened if not kernel_name(n)) == []


def test_every_name_a_v2_reader_opens_is_a_kernel_file(tmp_path):
    fill(tmp_path, ["cgroup.controllers", "memory.stat"])
    fill(tmp_path / "c1", [*MEMORY_V2, *CORE_V2, *PIDS, *hugetlb(HUGETLB_V2)])
    opened = opened_names(tmp_path, "/c1")
    assert {"memory.current", "io.stat", "hugetlb.2MB.rsvd.current", "hugetlb.1GB.events"} <= opened
    assert sorted(n for n in opened if not kernel_name(n)) == []


KATA_FIELD_FILES = [
    # (kernel file, kata BlkioStats field it fills), from the lists above; the policy's other files absent.
    *((f, f.removeprefix("blkio.")) for f in CFQ if f.endswith("_recursive") and "time_recursive" not in f),
    ("blkio.time_recursive", "io_time_recursive"),
    ("blkio.io_service_time_recursive", "io_service_time_recursive"),
    ("blkio.io_wait_time_recursive", "io_wait_time_recursive"),
    ("blkio.bfq.io_service_bytes_recursive", "io_service_bytes_recursive"),
    ("blkio.bfq.io_serviced_recursive", "io_serviced_recursive"),
    ("blkio.bfq.time_recursive", "io_time_recursive"),
    ("blkio.bfq.sectors_recursive", "sectors_recursive"),
    ("blkio.bfq.io_service_time_recursive", "io_service_time_recursive"),
    ("blkio.bfq.io_wait_time_recursive", "io_wait_time_recursive"),
    ("blkio.bfq.io_merged_recursive", "io_merged_recursive"),
    ("blkio.bfq.io_queued_recursive", "io_queued_recursive"),
    ("blkio.throttle.io_service_bytes_recursive", "io_service_bytes_recursive"),
    ("blkio.throttle.io_serviced_recursive", "io_serviced_recursive"),
    ("blkio.throttle.io_service_bytes", "io_service_bytes_recursive"),
    ("blkio.throttle.io_serviced", "io_serviced_recursive"),
]


def _policy_of(file: str) -> list[str]:
    for names in (BFQ_DEBUG, BFQ, CFQ, THROTTLE):
        if file in names:
            return names
    raise AssertionError(file)


@pytest.mark.parametrize(("file", "field"), KATA_FIELD_FILES, ids=[f for f, _ in KATA_FIELD_FILES])
def test_each_kernel_blkio_file_is_read_into_its_kata_field(tmp_path, file, field):
    c1 = tmp_path / "blkio" / "c1"
    c1.mkdir(parents=True)
    (tmp_path / "memory" / "c1").mkdir(parents=True)
    # The policy's probe file (its io_serviced one) lists a device, as it does once a disk was used; debug
    # BFQ comes with plain BFQ's files and is told by its own sectors_recursive (runc's probe for it),
    # and the throttle pairs stand alone.
    policy = _policy_of(file)
    names = {file, *((*BFQ, "blkio.bfq.sectors_recursive") if policy is BFQ_DEBUG else ())}
    if policy is THROTTLE:
        names.add("blkio.throttle.io_serviced" + ("_recursive" if file.endswith("_recursive") else ""))
    else:
        names.add("blkio.bfq.io_serviced_recursive" if "bfq" in file else "blkio.io_serviced_recursive")
    for name in names:
        value = 77 if name == file else 1
        one_value = name.rsplit(".", 1)[-1] in ("time_recursive", "sectors_recursive")  # blkg_prfill_stat
        line = f"8:16 {value}\n" if one_value else f"8:16 Read {value}\n"
        (c1 / name).write_text(line + f"Total {value}\n")
    record = CgroupReader(detect_layout(str(tmp_path)), clk_tck=100).read("/c1")
    assert record.blkio is not None
    lines = dict(record.blkio.files)[field]  # type: ignore[union-attr]
    assert [x.value for x in lines] == [77]
    assert isinstance(lines[0], BlkioLine)
    assert (lines[0].major, lines[0].minor) == (8, 16)


@pytest.mark.parametrize("rsvd", [True, False], ids=["rsvd", "plain"])
@pytest.mark.parametrize("version", [1, 2])
def test_each_kernel_hugetlb_file_is_read(tmp_path, version, rsvd):
    # With the .rsvd files present (kernel 5.7+) they are the ones read, as runc does; else the plain ones.
    if version == 1:
        directory = tmp_path / "hugetlb" / "c1"
        (tmp_path / "memory" / "c1").mkdir(parents=True)
        names = [n for n in HUGETLB_V1 if n != "numa_stat"]
    else:
        (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
        directory = tmp_path / "c1"
        directory.mkdir()
        (directory / "cgroup.controllers").write_text("hugetlb\n")
        names = [n for n in HUGETLB_V2 if n != "numa_stat"]
    directory.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names, 1):
        if not rsvd and name.startswith("rsvd."):
            continue
        text = f"max {n}\n" if name.startswith("events") else f"{n * 1000}\n"
        (directory / f"hugetlb.2MB.{name}").write_text(text)
    huge = CgroupReader(detect_layout(str(tmp_path)), clk_tck=100).read("/c1").hugetlb["2MB"]
    number = {name: n for n, name in enumerate(names, 1)}
    lead = "rsvd." if rsvd else ""
    if version == 1:
        assert huge.usage == number[f"{lead}usage_in_bytes"] * 1000
        assert huge.max_usage == number[f"{lead}max_usage_in_bytes"] * 1000
        assert huge.failcnt == number[f"{lead}failcnt"] * 1000
    else:
        assert huge.usage == number[f"{lead}current"] * 1000
        assert huge.failcnt == number["events"]  # v2 has no rsvd events file
        assert huge.max_usage == 0

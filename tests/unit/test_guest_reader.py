"""CgroupReader on small cgroup trees written in tmp_path in the kernel's file formats.

Each test writes the files one kernel version would have, then checks the record against those same numbers
through the rule named in the test (the rules are listed in guest_agent.reader's docstring).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from guest_agent import reader as reader_module
from guest_agent.files import ABSENT_FOR, FileCache
from guest_agent.layout import Layout, detect_layout
from guest_agent.names import KERNEL_PARTS
from guest_agent.parse import U64_MAX, BlkioLine, CgroupFormatError, parse_blkio, parse_plain_v2
from guest_agent.reader import _NO_DEVICES, MAX_WHERE, CgroupGone, CgroupReader, IncompleteCgroup
from guest_agent.record import (
    CgroupCounter,
    CgroupHugetlb,
    CgroupIo,
    CgroupPids,
    CgroupRecord,
    CgroupThrottling,
)
from tests.translate_builders import FIXTURES, fixture_names

V1_LIMIT = 9223372036854771712  # PAGE_COUNTER_MAX * PAGE_SIZE: v1's "no limit"
CLK_TCK = 100
NS = 1_000_000_000


def write(directory: Path, files: Mapping[str, object]) -> None:
    """Write each file as the kernel prints it: dicts as 'key value' lines, other values as one line."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        lines = [f"{k} {v}" for k, v in value.items()] if isinstance(value, Mapping) else [f"{value}"]
        (directory / name).write_text("".join(line + "\n" for line in lines))


def v1_counter(prefix: str, c: CgroupCounter) -> dict[str, object]:
    return {
        f"{prefix}usage_in_bytes": c.usage,
        f"{prefix}max_usage_in_bytes": c.max_usage,
        f"{prefix}failcnt": c.failcnt,
        f"{prefix}limit_in_bytes": c.limit,
    }


V1_STAT = {"cache": 103809024, "rss": 114688, "total_cache": 103809024, "total_inactive_file": 73400320}
V1_USAGE = CgroupCounter(usage=107118592, max_usage=109330432, failcnt=3, limit=V1_LIMIT)
V1_MEMSW = CgroupCounter(usage=107118592 + 4096, max_usage=109334528, failcnt=1, limit=V1_LIMIT)
V1_KMEM = CgroupCounter(usage=2633728, max_usage=2772992, failcnt=0, limit=V1_LIMIT)
V1_KMEM_TCP = CgroupCounter(usage=0, max_usage=0, failcnt=0, limit=V1_LIMIT)


def v1_tree(root: Path, path: str = "/c1", *, memsw: bool = True) -> Layout:
    """A v1 hierarchy set with one container cgroup at ``path`` holding every file the agent reads."""
    rel = path.lstrip("/")
    memory = {
        "memory.stat": V1_STAT,
        "memory.use_hierarchy": 1,
        "memory.oom_control": {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 2},
        **v1_counter("memory.", V1_USAGE),
        **v1_counter("memory.kmem.", V1_KMEM),
        **v1_counter("memory.kmem.tcp.", V1_KMEM_TCP),
    }
    if memsw:
        memory.update(v1_counter("memory.memsw.", V1_MEMSW))
    write(root / "memory" / rel, memory)
    write(root / "cpuacct" / rel, {"cpuacct.usage": 40220997, "cpuacct.stat": {"user": 7, "system": 3}})
    (root / "cpuacct" / rel / "cpuacct.usage_percpu").write_text("1621743 38599254 \n")
    write(
        root / "cpu" / rel, {"cpu.stat": {"nr_periods": 10, "nr_throttled": 4, "throttled_time": 123456789}}
    )
    write(root / "pids" / rel, {"pids.current": 1, "pids.max": "max"})
    write(root / "blkio" / rel, {})
    return detect_layout(str(root))


def test_v1_memory_is_read_as_the_kernel_counts_it(tmp_path):
    record = CgroupReader(v1_tree(tmp_path), clk_tck=CLK_TCK).read("/c1", extras=True)
    mem = record.memory
    assert mem is not None
    assert mem.version == 1
    assert mem.usage == V1_USAGE
    assert mem.swap == V1_MEMSW  # memsw: memory + swap, passed through as the kernel counts it
    assert mem.kernel == V1_KMEM
    assert mem.kernel_tcp == V1_KMEM_TCP
    assert mem.cache == V1_STAT["cache"]  # the local key, as kata-agent sends it
    assert mem.use_hierarchy is True
    assert dict(mem.stat) == V1_STAT
    assert mem.oom_control["oom_kill"] == 2


def test_v1_answer_read_leaves_out_what_kata_cannot_carry(tmp_path):
    """A stats answer (no extras) never opens memory.kmem.tcp.* or memory.oom_control."""
    reader = CgroupReader(v1_tree(tmp_path), clk_tck=CLK_TCK)
    mem = reader.read("/c1").memory
    assert mem is not None
    assert mem.kernel == V1_KMEM
    assert mem.kernel_tcp is None
    assert mem.oom_control == {}
    opened = {os.path.basename(path) for path in reader.files._fds}
    assert "memory.oom_control" not in opened
    assert not {name for name in opened if name.startswith("memory.kmem.tcp.")}


def test_v1_without_swap_accounting_has_no_swap_rather_than_zeros(tmp_path):
    record = CgroupReader(v1_tree(tmp_path, memsw=False), clk_tck=CLK_TCK).read("/c1")
    assert record.memory is not None
    assert record.memory.swap is None


def test_v1_cpu_converts_user_hz_ticks_to_ns_and_reads_throttling(tmp_path):
    record = CgroupReader(v1_tree(tmp_path), clk_tck=CLK_TCK).read("/c1")
    assert record.cpu is not None
    usage = record.cpu.usage
    assert usage is not None
    assert usage.total == 40220997
    assert usage.user == 7 * NS // CLK_TCK  # ticks × 1e9 / CLK_TCK
    assert usage.kernel == 3 * NS // CLK_TCK
    assert usage.percpu == (1621743, 38599254)
    throttling = record.cpu.throttling
    assert throttling is not None
    assert (throttling.periods, throttling.throttled_periods, throttling.throttled_time) == (10, 4, 123456789)


def test_pids_max_reads_as_unlimited(tmp_path):
    record = CgroupReader(v1_tree(tmp_path), clk_tck=CLK_TCK).read("/c1")
    assert record.pids is not None
    assert (record.pids.current, record.pids.limit) == (1, U64_MAX)


def blkio_text(lines: list[BlkioLine]) -> str:
    """A blkio file as the kernel prints it: ``maj:min Op value`` (or ``maj:min value``), then ``Total``."""
    body = "".join(
        f"{x.major}:{x.minor} {x.op} {x.value}\n" if x.op else f"{x.major}:{x.minor} {x.value}\n"
        for x in lines
    )
    return body + f"Total {sum(x.value for x in lines)}\n"


SERVICE_BYTES = [BlkioLine(254, 0, "Read", 4096), BlkioLine(254, 0, "Write", 8192)]
SERVICED = [BlkioLine(254, 0, "Read", 1), BlkioLine(254, 0, "Write", 2)]


def test_v1_blkio_uses_the_recursive_throttle_files_when_no_policy_has_entries(tmp_path):
    layout = v1_tree(tmp_path)
    blkio = tmp_path / "blkio" / "c1"
    (blkio / "blkio.io_serviced_recursive").write_text("Total 0\n")  # CFQ file with no device (an idle disk)
    (blkio / "blkio.throttle.io_service_bytes_recursive").write_text(blkio_text(SERVICE_BYTES))
    (blkio / "blkio.throttle.io_serviced_recursive").write_text(blkio_text(SERVICED))
    (blkio / "blkio.throttle.io_serviced").write_text(blkio_text([BlkioLine(254, 0, "Read", 999)]))
    record = CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")
    assert record.blkio is not None
    assert dict(record.blkio.files) == {  # type: ignore[union-attr]
        "io_service_bytes_recursive": tuple(SERVICE_BYTES),
        "io_serviced_recursive": tuple(SERVICED),
    }


def test_v1_blkio_falls_back_to_the_plain_throttle_files_of_older_kernels(tmp_path):
    # Kernels before 5.x have only blkio.throttle.io_serviced / io_service_bytes (runc's last group).
    layout = v1_tree(tmp_path)
    blkio = tmp_path / "blkio" / "c1"
    (blkio / "blkio.throttle.io_service_bytes").write_text(blkio_text(SERVICE_BYTES))
    (blkio / "blkio.throttle.io_serviced").write_text(blkio_text(SERVICED))
    record = CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")
    assert record.blkio is not None
    assert dict(record.blkio.files) == {  # type: ignore[union-attr]
        "io_service_bytes_recursive": tuple(SERVICE_BYTES),
        "io_serviced_recursive": tuple(SERVICED),
    }


def test_v1_blkio_reads_bfq_before_throttle(tmp_path):
    # BFQ (every multi-queue kernel with bfq as scheduler) writes blkio.bfq.io_service{d,_bytes}_recursive.
    layout = v1_tree(tmp_path)
    blkio = tmp_path / "blkio" / "c1"
    (blkio / "blkio.bfq.io_service_bytes_recursive").write_text(blkio_text(SERVICE_BYTES))
    (blkio / "blkio.bfq.io_serviced_recursive").write_text(blkio_text(SERVICED))
    (blkio / "blkio.throttle.io_serviced_recursive").write_text(blkio_text([BlkioLine(254, 0, "Read", 999)]))
    record = CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")
    assert record.blkio is not None
    assert dict(record.blkio.files) == {  # type: ignore[union-attr]
        "io_service_bytes_recursive": tuple(SERVICE_BYTES),
        "io_serviced_recursive": tuple(SERVICED),
    }


def test_v1_blkio_of_plain_bfq_counts_no_read_errors(tmp_path):
    # A kernel without CONFIG_BFQ_CGROUP_DEBUG (Debian's, the 6.18 fixture's) has only the two BFQ files;
    # the debug files are not missing figures, they do not exist in that build (block/bfq-cgroup.c).
    layout = v1_tree(tmp_path)
    blkio = tmp_path / "blkio" / "c1"
    (blkio / "blkio.bfq.io_service_bytes_recursive").write_text(blkio_text(SERVICE_BYTES))
    (blkio / "blkio.bfq.io_serviced_recursive").write_text(blkio_text(SERVICED))
    reader = CgroupReader(layout, clk_tck=CLK_TCK)
    for _ in range(2):
        record = reader.read("/c1")
    assert record.blkio is not None
    assert set(record.blkio.files) == {"io_service_bytes_recursive", "io_serviced_recursive"}  # type: ignore[union-attr]
    assert not any(name.startswith("blkio.") for name in reader.errors.snapshot()), reader.errors.snapshot()


CFQ_FILES = {  # kata field → the file block/cfq-iosched.c names (cfq_blkcg_legacy_files), "blkio." added
    "io_service_bytes_recursive": "blkio.io_service_bytes_recursive",
    "io_serviced_recursive": "blkio.io_serviced_recursive",
    "io_queued_recursive": "blkio.io_queued_recursive",
    "io_service_time_recursive": "blkio.io_service_time_recursive",
    "io_wait_time_recursive": "blkio.io_wait_time_recursive",
    "io_merged_recursive": "blkio.io_merged_recursive",
    "io_time_recursive": "blkio.time_recursive",
    "sectors_recursive": "blkio.sectors_recursive",
}


@pytest.mark.parametrize("prefix", ["blkio.", "blkio.bfq."])
def test_v1_blkio_reads_all_eight_files_of_cfq_and_of_debug_bfq(tmp_path, prefix):
    layout = v1_tree(tmp_path)
    blkio = tmp_path / "blkio" / "c1"
    for n, (field, name) in enumerate(CFQ_FILES.items(), 1):
        line = BlkioLine(8, 0, "", n) if field in ("io_time_recursive", "sectors_recursive") else None
        lines = [line] if line else [BlkioLine(8, 0, "Read", n), BlkioLine(8, 0, "Total", n)]
        (blkio / name.replace("blkio.", prefix, 1)).write_text(blkio_text(lines))
    (blkio / "blkio.throttle.io_serviced_recursive").write_text(blkio_text([BlkioLine(8, 0, "Read", 999)]))
    record = CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")
    assert record.blkio is not None
    files = dict(record.blkio.files)  # type: ignore[union-attr]
    assert set(files) == set(CFQ_FILES)
    assert files["io_time_recursive"] == (BlkioLine(8, 0, "", 7),)  # from blkio[.bfq].time_recursive
    assert files["sectors_recursive"] == (BlkioLine(8, 0, "", 8),)
    assert files["io_serviced_recursive"] == (BlkioLine(8, 0, "Read", 2), BlkioLine(8, 0, "Total", 2))


def test_v1_blkio_with_no_policy_file_has_no_blkio(tmp_path):
    layout = v1_tree(tmp_path)
    (tmp_path / "blkio" / "c1" / "blkio.sectors_recursive").write_text("8:0 40\n")  # not a group's probe
    assert CgroupReader(layout, clk_tck=CLK_TCK).read("/c1").blkio is None


def test_v1_missing_the_usage_the_working_set_needs_is_an_error_naming_it(tmp_path):
    layout = v1_tree(tmp_path)
    os.unlink(tmp_path / "memory" / "c1" / "memory.usage_in_bytes")
    with pytest.raises(IncompleteCgroup, match=r"memory/c1/memory\.usage_in_bytes: missing"):
        CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")


def test_a_garbled_file_is_an_error_naming_its_path_and_line(tmp_path):
    layout = v1_tree(tmp_path)
    (tmp_path / "memory" / "c1" / "memory.stat").write_text("cache 1\ntotal_inactive_file one\n")
    with pytest.raises(CgroupFormatError) as info:
        CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")
    assert str(info.value).startswith(
        f"{tmp_path}/memory/c1/memory.stat:2: expected an integer, got 'one'"
    )  # a key the working set needs


def test_a_file_that_is_not_ascii_is_an_error_naming_its_path(tmp_path):
    layout = v1_tree(tmp_path)
    (tmp_path / "memory" / "c1" / "memory.usage_in_bytes").write_bytes(b"12\xff\n")
    with pytest.raises(CgroupFormatError, match=r"memory\.usage_in_bytes: not ASCII text \(byte 2\)"):
        CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")


def test_a_cgroup_that_does_not_exist_is_gone(tmp_path):
    layout = v1_tree(tmp_path)
    with pytest.raises(CgroupGone, match=r"memory/nope does not exist"):
        CgroupReader(layout, clk_tck=CLK_TCK).read("/nope")


def test_a_cgroup_removed_after_a_first_read_is_gone_and_its_files_are_closed(tmp_path):
    layout = v1_tree(tmp_path)
    reader = CgroupReader(layout, clk_tck=CLK_TCK)
    reader.read("/c1")
    assert len(reader.files) > 0
    for controller in ("memory", "cpu", "cpuacct", "pids", "blkio"):
        shutil.rmtree(tmp_path / controller / "c1")
    with pytest.raises(CgroupGone):
        reader.read("/c1")
    assert len(reader.files) == 0


def test_rewritten_files_are_read_fresh(tmp_path):
    # The reader keeps files open between reads; an in-place rewrite (as the kernel regenerates) shows.
    layout = v1_tree(tmp_path)
    reader = CgroupReader(layout, clk_tck=CLK_TCK)
    assert reader.read("/c1").pids.current == 1  # type: ignore[union-attr]
    (tmp_path / "pids" / "c1" / "pids.current").write_text("42\n")
    assert reader.read("/c1").pids.current == 42  # type: ignore[union-attr]


V2_STAT = {
    "anon": 114688,
    "file": 103809024,
    "kernel": 3145728,
    "kernel_stack": 16384,
    "pagetables": 8192,
    "slab_reclaimable": 1000,
    "slab_unreclaimable": 2000,
    "inactive_file": 73400320,
    "active_file": 30408704,
}


def v2_tree(root: Path, *, peak: bool = True, swap: bool = True, stat: Mapping[str, int] = V2_STAT) -> Layout:
    write(root, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids", "memory.stat": dict(stat)})
    files: dict[str, object] = {
        "memory.stat": dict(stat),
        "memory.current": 107118592,
        "memory.max": "max",
        "memory.events": {"low": 0, "high": 0, "max": 7, "oom": 1, "oom_kill": 1, "oom_group_kill": 0},
        "cpu.stat": {
            "usage_usec": 40220,
            "user_usec": 10000,
            "system_usec": 30220,
            "nr_periods": 5,
            "nr_throttled": 2,
            "throttled_usec": 1500,
        },
        "pids.current": 3,
        "pids.max": 100,
        "io.stat": "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0",
    }
    if peak:
        files["memory.peak"] = 109330432
    if swap:
        files.update(
            {
                "memory.swap.current": 8192,
                "memory.swap.max": "max",
                "memory.swap.peak": 12288,
                "memory.swap.events": {"high": 0, "max": 0, "fail": 4},
            }
        )
    write(root / "c1", files)
    return detect_layout(str(root))


def test_v2_memory_fills_what_kata_agent_leaves_empty(tmp_path):
    mem = CgroupReader(v2_tree(tmp_path)).read("/c1").memory
    assert mem is not None
    assert mem.version == 2
    # usage = memory.current, limit "max" → 2^64-1, peak = memory.peak, failcnt = memory.events "max"
    assert mem.usage == CgroupCounter(usage=107118592, max_usage=109330432, failcnt=7, limit=U64_MAX)
    # swap only (memory.swap.*), unlimited → 2^64-1, failcnt = swap.events "fail"
    assert mem.swap == CgroupCounter(usage=8192, max_usage=12288, failcnt=4, limit=U64_MAX)
    assert mem.kernel == CgroupCounter(usage=V2_STAT["kernel"], max_usage=0, failcnt=0, limit=U64_MAX)
    assert mem.cache == V2_STAT["file"]
    assert mem.use_hierarchy is True
    assert dict(mem.stat) == V2_STAT
    assert mem.events["oom_kill"] == 1


def test_v2_before_memory_peak_and_the_kernel_key_existed(tmp_path):
    # Kernels before 5.19: no memory.peak (max_usage 0) and no "kernel" key (sum of the itemised parts).
    stat = {k: v for k, v in V2_STAT.items() if k != "kernel"}
    mem = CgroupReader(v2_tree(tmp_path, peak=False, stat=stat)).read("/c1").memory
    assert mem is not None
    assert mem.usage.max_usage == 0
    assert mem.kernel is not None
    assert mem.kernel.usage == sum(stat.get(k, 0) for k in KERNEL_PARTS)
    assert mem.kernel.usage == 16384 + 8192 + 1000 + 2000


def test_v2_without_swap_accounting_has_no_swap(tmp_path):
    mem = CgroupReader(v2_tree(tmp_path, swap=False)).read("/c1").memory
    assert mem is not None
    assert mem.swap is None


def test_v2_root_usage_is_anon_plus_file_and_swap_comes_from_meminfo(tmp_path):
    layout = v2_tree(tmp_path)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       24684084 kB\nMemFree:        24000468 kB\nSwapTotal: 1024 kB\nSwapFree: 256 kB\n"
    )
    mem = CgroupReader(layout, meminfo=str(meminfo)).read("/").memory
    assert mem is not None
    # never MemTotal - MemFree (kubernetes#118916): usage = anon + file of the root memory.stat
    assert mem.usage == CgroupCounter(
        usage=V2_STAT["anon"] + V2_STAT["file"], max_usage=0, failcnt=0, limit=U64_MAX
    )
    assert mem.swap == CgroupCounter(usage=(1024 - 256) * 1024, max_usage=0, failcnt=0, limit=U64_MAX)
    assert mem.events == {}


def test_v2_root_without_meminfo_has_no_swap(tmp_path):
    mem = CgroupReader(v2_tree(tmp_path), meminfo=str(tmp_path / "absent")).read("/").memory
    assert mem is not None
    assert mem.swap is None


def test_v2_cpu_converts_usec_to_ns_including_throttled_time(tmp_path):
    cpu = CgroupReader(v2_tree(tmp_path)).read("/c1").cpu
    assert cpu is not None
    assert cpu.usage is not None
    assert (cpu.usage.total, cpu.usage.user, cpu.usage.kernel) == (40220_000, 10000_000, 30220_000)
    assert cpu.usage.percpu == ()
    assert cpu.throttling is not None
    assert (cpu.throttling.periods, cpu.throttling.throttled_periods) == (5, 2)
    assert cpu.throttling.throttled_time == 1500 * 1000  # throttled_usec → ns (kata-agent leaves it 0)


def test_v2_cpu_without_the_cpu_controller_has_usage_but_no_throttling(tmp_path):
    layout = v2_tree(tmp_path)
    (tmp_path / "c1" / "cpu.stat").write_text("usage_usec 5\nuser_usec 3\nsystem_usec 2\n")
    cpu = CgroupReader(layout).read("/c1").cpu
    assert cpu is not None
    assert cpu.usage is not None
    assert cpu.usage.total == 5000
    assert cpu.throttling is None


def test_v2_pids_and_io(tmp_path):
    record = CgroupReader(v2_tree(tmp_path)).read("/c1")
    assert record.pids is not None
    assert (record.pids.current, record.pids.limit) == (3, 100)
    assert record.blkio is not None
    devices = record.blkio.devices  # type: ignore[union-attr]
    assert [(d.major, d.minor, d.stats) for d in devices] == [
        (254, 0, {"rbytes": 4096, "wbytes": 8192, "rios": 1, "wios": 2, "dbytes": 0, "dios": 0})
    ]


def test_v2_root_pids_has_no_limit_file_and_means_unlimited(tmp_path):
    layout = v2_tree(tmp_path)
    (tmp_path / "pids.current").write_text("150\n")
    record = CgroupReader(layout).read("/")
    assert record.pids is not None
    assert (record.pids.current, record.pids.limit) == (150, U64_MAX)


def test_hugetlb_v1_and_v2_per_page_size(tmp_path):
    v1_root = tmp_path / "v1"
    layout = v1_tree(v1_root)
    write(
        v1_root / "hugetlb" / "c1",
        {
            "hugetlb.2MB.usage_in_bytes": 4 << 20,
            "hugetlb.2MB.max_usage_in_bytes": 6 << 20,
            "hugetlb.2MB.failcnt": 1,
            "hugetlb.2MB.limit_in_bytes": V1_LIMIT,
            "hugetlb.1GB.usage_in_bytes": 0,
            "hugetlb.1GB.max_usage_in_bytes": 0,
            "hugetlb.1GB.failcnt": 0,
        },
    )
    layout = detect_layout(str(v1_root))
    huge = CgroupReader(layout, clk_tck=CLK_TCK).read("/c1").hugetlb
    assert {k: (v.usage, v.max_usage, v.failcnt) for k, v in huge.items()} == {
        "2MB": (4 << 20, 6 << 20, 1),
        "1GB": (0, 0, 0),
    }
    v2_root = tmp_path / "v2"
    v2_tree(v2_root)
    write(v2_root / "c1", {"hugetlb.2MB.current": 2 << 20, "hugetlb.2MB.events": {"max": 5}})
    assert CgroupReader(detect_layout(str(v2_root))).read("/c1").hugetlb == {}  # hugetlb not enabled for c1
    write(v2_root / "c1", {"cgroup.controllers": "memory pids hugetlb"})
    huge = CgroupReader(detect_layout(str(v2_root))).read("/c1").hugetlb
    # v2: usage = current, failcnt = events "max", no peak kept by the kernel → 0
    assert {k: (v.usage, v.max_usage, v.failcnt) for k, v in huge.items()} == {"2MB": (2 << 20, 0, 5)}


def test_hybrid_reads_v1_controllers_and_v2_hugetlb(tmp_path):
    v1_tree(tmp_path)
    write(tmp_path / "unified", {"cgroup.controllers": "hugetlb"})
    hugetlb = {"cgroup.controllers": "hugetlb", "hugetlb.2MB.current": 0, "hugetlb.2MB.events": {"max": 0}}
    write(tmp_path / "unified" / "c1", hugetlb)
    layout = detect_layout(str(tmp_path))
    assert layout.mode == "hybrid"
    record = CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")
    assert record.memory is not None
    assert record.memory.version == 1
    assert set(record.hugetlb) == {"2MB"}


def test_a_stat_file_deleted_and_copied_afresh_is_read_afresh(tmp_path):
    # Issue 15 §4 as found: under --cgroupfs-root, rm memory.stat and copy a new one in; the reader must not
    # keep reading the deleted file through the fd it kept open.
    layout = v1_tree(tmp_path)
    reader = CgroupReader(layout, clk_tck=CLK_TCK)
    assert reader.read("/c1").memory.cache == V1_STAT["cache"]  # type: ignore[union-attr]
    stat = tmp_path / "memory" / "c1" / "memory.stat"
    stat.unlink()
    write(tmp_path / "memory" / "c1", {"memory.stat": {**V1_STAT, "cache": 4096}})
    assert reader.read("/c1").memory.cache == 4096  # type: ignore[union-attr]


def test_a_captured_tree_is_checked_per_read_and_a_live_one_is_not(tmp_path):
    # The per-read inode check costs an fstat; mounted hierarchies (kernfs) do without it.
    reader = CgroupReader(v1_tree(tmp_path), clk_tck=CLK_TCK)
    assert reader.files.kernfs_devices == frozenset()
    if os.path.isdir("/sys/fs/cgroup/memory") and detect_layout("/sys/fs/cgroup").mounted_devices:
        live = CgroupReader(detect_layout("/sys/fs/cgroup"))
        assert os.stat("/sys/fs/cgroup/memory/memory.stat").st_dev in live.files.kernfs_devices


def comounted_cpu_tree(root: Path) -> None:
    """The v1 tree of v1_tree, but cpu and cpuacct co-mounted as one ``cpu,cpuacct`` without symlinks."""
    v1_tree(root)
    shutil.rmtree(root / "cpu")
    os.rename(root / "cpuacct", root / "cpu,cpuacct")
    write(
        root / "cpu,cpuacct" / "c1", {"cpu.stat": {"nr_periods": 10, "nr_throttled": 4, "throttled_time": 9}}
    )


def test_a_comounted_cpu_hierarchy_found_in_mountinfo_reports_cpu_usage(tmp_path):
    # Issue 15 §2: such a tree used to report CPU usage 0, silently.
    root = tmp_path / "cg"
    comounted_cpu_tree(root)
    (tmp_path / "mountinfo").write_text(
        f"27 23 0:22 / {root}/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpuacct,cpu,clone_children\n"
        f"28 23 0:23 / {root}/memory rw,nosuid - cgroup cgroup rw,memory\n"
    )
    layout = detect_layout(str(root), mountinfo=str(tmp_path / "mountinfo"))
    cpu = CgroupReader(layout, clk_tck=CLK_TCK).read("/c1").cpu
    assert cpu is not None
    assert cpu.usage is not None
    assert cpu.usage.total == 40220997
    assert cpu.throttling == CgroupThrottling(periods=10, throttled_periods=4, throttled_time=9)


def test_a_comounted_cpu_hierarchy_of_a_captured_tree_reports_cpu_usage(tmp_path):
    comounted_cpu_tree(tmp_path)
    cpu = CgroupReader(detect_layout(str(tmp_path)), clk_tck=CLK_TCK).read("/c1").cpu
    assert cpu is not None
    assert cpu.usage is not None
    assert cpu.usage.total == 40220997


def test_v1_without_the_kmem_limit_file_is_not_a_read_error(tmp_path):
    # runc (fs/memory.go getMemoryData) lets memory.kmem.limit_in_bytes be absent on newer kernels.
    layout = v1_tree(tmp_path)
    os.unlink(tmp_path / "memory" / "c1" / "memory.kmem.limit_in_bytes")
    reader = CgroupReader(layout, clk_tck=CLK_TCK)
    kernel = reader.read("/c1").memory.kernel  # type: ignore[union-attr]
    assert kernel == CgroupCounter(usage=V1_KMEM.usage, max_usage=V1_KMEM.max_usage, failcnt=0, limit=0)
    assert reader.errors.snapshot() == {}


class CountingFiles(FileCache):
    """The reader's file cache, counting the batches it served in one go (read_open)."""

    served = 0

    def read_open(self, paths: Sequence[str], absent: bool = False) -> Any:
        data = super().read_open(paths, True) if absent else super().read_open(paths)
        self.served += data is not None
        return data


def trusted_reader(layout: Layout, root: Path, **kwargs: Any) -> CgroupReader:
    """A reader that takes ``root``'s files as kernfs ones (no inode check), as on a mounted hierarchy; its
    one-value files are read in one go from the second read on."""
    files = CountingFiles(kernfs_devices=[os.stat(root).st_dev], absent_for=ABSENT_FOR)
    return CgroupReader(layout, files=files, **kwargs)


@pytest.mark.parametrize("name", fixture_names())
def test_files_read_in_one_go_give_what_they_give_one_by_one(name):
    # Every captured kernel's tree: the same record and the same read errors either way.
    root = FIXTURES / name
    meta = json.loads((root / "meta.json").read_text())
    kwargs: dict[str, Any] = {"meminfo": str(root / "meminfo"), "clk_tck": CLK_TCK}
    checked = CgroupReader(detect_layout(str(root / "cgroup")), **kwargs)
    trusted = trusted_reader(detect_layout(str(root / "cgroup")), root, **kwargs)
    expected = checked.read(meta["container_path"])
    assert trusted.read(meta["container_path"]) == expected
    assert trusted.read(meta["container_path"]) == expected
    assert trusted.errors.snapshot() == checked.errors.snapshot()
    assert isinstance(trusted.files, CountingFiles)
    assert trusted.files.served > 0 or meta["container_path"] == "/"  # a v2 root has none of those files


def test_a_garbled_one_value_file_costs_its_figure_only_when_read_in_one_go(tmp_path):
    reader = trusted_reader(v1_tree(tmp_path), tmp_path, clk_tck=CLK_TCK)
    reader.read("/c1")
    assert isinstance(reader.files, CountingFiles)
    served = reader.files.served
    assert reader.read("/c1").pids == CgroupPids(current=1, limit=U64_MAX)  # "max", in one go
    assert reader.files.served > served
    (tmp_path / "memory" / "c1" / "memory.memsw.failcnt").write_text("7x\n")  # rewritten in place
    swap = reader.read("/c1").memory.swap  # type: ignore[union-attr]
    assert swap == CgroupCounter(
        usage=V1_MEMSW.usage, max_usage=V1_MEMSW.max_usage, failcnt=0, limit=V1_LIMIT
    )
    assert reader.errors.snapshot() == {"memory.memsw.failcnt": 1}
    (tmp_path / "memory" / "c1" / "memory.memsw.failcnt").write_text("1\n")
    assert reader.read("/c1").memory.swap == V1_MEMSW  # type: ignore[union-attr]


@pytest.mark.parametrize("memsw", [True, False])
def test_v1_memory_read_in_one_go_with_and_without_swap_accounting(tmp_path, memsw):
    layout = v1_tree(tmp_path, memsw=memsw)
    reader = trusted_reader(layout, tmp_path, clk_tck=CLK_TCK)
    expected = CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")
    assert reader.read("/c1") == expected
    assert reader.read("/c1") == expected
    assert expected.memory is not None
    assert expected.memory.swap == (V1_MEMSW if memsw else None)
    assert reader.errors.snapshot() == {}


def test_the_blkio_file_of_a_cgroup_without_io_reads_as_the_parser_reads_it(tmp_path):
    # The reader skips the parser for the sum line alone; the parser must agree that it holds no device.
    assert parse_blkio(_NO_DEVICES.decode(), "blkio.throttle.io_serviced") == []
    layout = v1_tree(tmp_path)
    for name in ("blkio.throttle.io_serviced_recursive", "blkio.throttle.io_serviced"):
        (tmp_path / "blkio" / "c1" / name).write_bytes(_NO_DEVICES)
    reader = CgroupReader(layout, clk_tck=CLK_TCK)
    assert reader.read("/c1").blkio is None
    assert reader.errors.snapshot() == {}


def test_a_cgroup_removed_and_made_again_reads_its_new_files_after_its_paths_were_kept(tmp_path):
    # The reader keeps each cgroup's file paths (never what it read): a cgroup made again under the same
    # name is read anew, and more cgroups than MAX_WHERE only make it start over.
    layout = v1_tree(tmp_path)
    reader = CgroupReader(layout, clk_tck=CLK_TCK)
    before = reader.read("/c1")
    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "pids" / "c1", kept)
    shutil.rmtree(tmp_path / "pids" / "c1")
    shutil.copytree(kept, tmp_path / "pids" / "c1")
    (tmp_path / "pids" / "c1" / "pids.current").write_text("7\n")
    assert reader.read("/c1").pids == CgroupPids(current=7, limit=before.pids.limit)  # type: ignore[union-attr]
    for index in range(MAX_WHERE + 1):
        with pytest.raises(CgroupGone):
            reader.read(f"/none-{index}")
    assert reader.read("/c1").pids == CgroupPids(current=7, limit=before.pids.limit)  # type: ignore[union-attr]


def test_a_garbled_v1_cpu_file_costs_its_figure_only_when_read_in_one_go(tmp_path):
    # The four v1 cpu files are read in one go from the second read on; a line the kernel would not write
    # sends them back through their own parsers, which leave out that figure alone and count it.
    reader = trusted_reader(v1_tree(tmp_path), tmp_path, clk_tck=CLK_TCK)
    first = reader.read("/c1").cpu
    assert reader.read("/c1").cpu == first
    assert first is not None
    assert first.throttling == CgroupThrottling(periods=10, throttled_periods=4, throttled_time=123456789)
    (tmp_path / "cpu" / "c1" / "cpu.stat").write_text("nr_periods 10\nnr_throttled -4\nthrottled_time 9\n")
    cpu = reader.read("/c1").cpu
    assert cpu is not None
    assert cpu.usage == first.usage
    assert cpu.throttling == CgroupThrottling(periods=10, throttled_periods=0, throttled_time=9)
    assert reader.errors.snapshot() == {"cpu.stat": 1}


def test_blkio_probes_read_in_one_go_still_see_a_device_line_when_it_comes(tmp_path):
    # A cgroup without I/O: every probe is absent or its sum line alone, read in one go from the second
    # read on; the first device line sends the read through runc's rule again.
    layout = v1_tree(tmp_path)
    blkio = tmp_path / "blkio" / "c1"
    for name in ("blkio.throttle.io_serviced_recursive", "blkio.throttle.io_serviced"):
        (blkio / name).write_bytes(_NO_DEVICES)
    reader = trusted_reader(layout, tmp_path, clk_tck=CLK_TCK)
    assert reader.read("/c1").blkio is None
    assert reader.read("/c1").blkio is None
    (blkio / "blkio.throttle.io_service_bytes_recursive").write_text(blkio_text(SERVICE_BYTES))
    (blkio / "blkio.throttle.io_serviced_recursive").write_text(blkio_text(SERVICED))
    record = reader.read("/c1")
    assert record == CgroupReader(layout, clk_tck=CLK_TCK).read("/c1")
    assert record.blkio is not None
    assert reader.errors.snapshot() == {}


def test_v2_one_value_files_read_in_one_go_without_the_peak_files_of_older_kernels(tmp_path):
    # memory.peak (5.19+) and memory.swap.peak (6.5+) absent: remembered absent, they read as 0 in one go,
    # as they do file by file, and a garbled memory.max still costs its figure only.
    layout = v2_tree(tmp_path, peak=False)
    os.unlink(tmp_path / "c1" / "memory.swap.peak")
    reader = trusted_reader(layout, tmp_path)
    expected = CgroupReader(layout).read("/c1")
    assert reader.read("/c1") == expected
    assert isinstance(reader.files, CountingFiles)
    served = reader.files.served
    assert reader.read("/c1") == expected
    assert reader.files.served >= served + 2  # the memory trio and the swap trio
    assert expected.memory is not None
    assert expected.memory.usage.max_usage == 0
    assert expected.memory.swap is not None
    assert expected.memory.swap.max_usage == 0
    (tmp_path / "c1" / "memory.max").write_text("lots\n")
    memory = reader.read("/c1").memory
    assert memory is not None
    assert memory.usage == expected.memory.usage._replace(limit=0)
    assert reader.errors.snapshot() == {"memory.max": 1}


def test_v2_hugetlb_read_in_one_go_reads_as_file_by_file(tmp_path):
    # A page size's rsvd.current and events in one go from the second read on; a garbled events file sends
    # them back through their own rules, which leave out the failcnt alone and count it.
    layout = v2_tree(tmp_path)
    sizes = {
        "cgroup.controllers": "memory pids hugetlb",
        "hugetlb.2MB.current": 2 << 20,
        "hugetlb.2MB.rsvd.current": 4 << 20,
        "hugetlb.2MB.events": {"max": 5},
    }
    write(tmp_path / "c1", sizes)
    reader = trusted_reader(layout, tmp_path)
    expected = CgroupReader(layout).read("/c1").hugetlb
    assert expected == {"2MB": CgroupHugetlb(usage=4 << 20, max_usage=0, failcnt=5)}
    assert reader.read("/c1").hugetlb == expected
    assert isinstance(reader.files, CountingFiles)
    served = reader.files.served
    assert reader.read("/c1").hugetlb == expected
    assert reader.files.served >= served + 4  # memory, swap, pids, and the page size
    (tmp_path / "c1" / "hugetlb.2MB.events").write_text("max five\n")
    assert reader.read("/c1").hugetlb == {"2MB": CgroupHugetlb(usage=4 << 20, max_usage=0, failcnt=0)}
    assert reader.errors.snapshot() == {"hugetlb.2MB.events": 1}


V2_ONE_GO = (*reader_module._V2_MEMORY_IN_ONE_GO, "cpu.stat", *reader_module._V2_SWAP_REST)
"""The files _plain_v2 reads in one go (every v2 memory and cpu file but memory.stat)."""


def count_one_go(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the reads whose v2 memory and cpu files were taken in one go: [taken, fell back]."""
    counts = [0, 0]

    def counted(data: Sequence[bytes], swap: bool) -> Any:
        found = parse_plain_v2(data, swap)
        counts[found is None] += 1
        return found

    monkeypatch.setattr("guest_agent.reader.parse_plain_v2", counted)
    return counts


def read_outcome(reader: CgroupReader, path: str) -> object:
    """The record, or the error the read raised (its type and text)."""
    try:
        return reader.read(path)
    except (LookupError, RuntimeError, ValueError) as e:
        return type(e), str(e)


@pytest.mark.parametrize(
    ("name", "change", "trusted"),
    [(name, "garbled", trusted) for name in V2_ONE_GO for trusted in (False, True)]
    + [(name, "removed", False) for name in V2_ONE_GO],
)
def test_v2_memory_and_cpu_in_one_go_a_changed_file_costs_what_it_costs_alone(
    tmp_path, monkeypatch, name, change, trusted
):
    # Read in one go from the second read on; then one file garbled in place or removed: the read falls back
    # to each file's own rules, so the record and the read errors are those of a reader that never took the
    # one go (a captured tree's reader checks each inode, so a removed file is seen; the trusted one takes
    # the tree as kernfs, where only an in-place rewrite can happen).
    counts = count_one_go(monkeypatch)
    layout = v2_tree(tmp_path)
    files = CountingFiles(kernfs_devices=[os.stat(tmp_path).st_dev] if trusted else (), absent_for=ABSENT_FOR)
    reader = CgroupReader(layout, files=files)
    expected = CgroupReader(layout).read("/c1")
    assert reader.read("/c1") == expected
    assert reader.read("/c1") == expected
    taken = counts[0]
    assert taken >= 1
    path = tmp_path / "c1" / name
    original = path.read_bytes()
    if change == "garbled":
        path.write_text("garbled line\n")
    else:
        path.unlink()
    fresh = CgroupReader(layout)
    got = read_outcome(reader, "/c1")
    assert got == read_outcome(fresh, "/c1")
    assert reader.errors.snapshot() == fresh.errors.snapshot()
    assert counts[0] == taken  # not taken with the changed file
    if not isinstance(got, CgroupRecord):  # memory.current is required: both raise
        assert name == "memory.current"
    else:  # the rest of the record is untouched
        assert got._replace(memory=None, cpu=None) == expected._replace(memory=None, cpu=None)
    if change == "garbled":
        path.write_bytes(original)
        assert reader.read("/c1") == expected
        assert counts[0] == taken + 1


def read_in_one_go(layout: Layout, root: Path, counts: list[int]) -> tuple[CgroupReader, CgroupRecord]:
    """A trusted reader that has read /c1 twice, the second time in one go, and what a fresh reader reads."""
    reader = trusted_reader(layout, root)
    expected = CgroupReader(layout).read("/c1")
    assert reader.read("/c1") == expected
    assert reader.read("/c1") == expected
    assert counts[0] >= 1
    return reader, expected


@pytest.mark.parametrize(("peak", "swap"), [(True, True), (False, True), (True, False), (False, False)])
def test_v2_memory_and_cpu_in_one_go_with_the_files_older_kernels_lack(tmp_path, monkeypatch, peak, swap):
    # memory.peak (5.19+) and memory.swap.peak (6.5+) absent read as 0, no swap accounting as no swap:
    # the one go gives what the files alone give, and it is taken.
    counts = count_one_go(monkeypatch)
    layout = v2_tree(tmp_path, peak=peak, swap=swap)
    if swap and not peak:
        os.unlink(tmp_path / "c1" / "memory.swap.peak")
    reader, expected = read_in_one_go(layout, tmp_path, counts)
    assert expected.memory is not None
    assert (expected.memory.swap is None) == (not swap)
    assert reader.errors.snapshot() == {}


def test_v2_cpu_stat_without_the_cpu_controller_in_one_go(tmp_path, monkeypatch):
    # The cpu controller not enabled for the cgroup: cpu.stat has its three usage lines alone, no throttling.
    counts = count_one_go(monkeypatch)
    layout = v2_tree(tmp_path)
    write(tmp_path / "c1", {"cpu.stat": {"usage_usec": 7, "user_usec": 3, "system_usec": 4}})
    _, expected = read_in_one_go(layout, tmp_path, counts)
    assert expected.cpu is not None
    assert expected.cpu.throttling is None
    assert expected.cpu.usage is not None
    assert expected.cpu.usage.total == 7000


@pytest.mark.parametrize("change", ["garbled", "removed", "device line"])
def test_v2_an_empty_io_stat_is_no_devices_and_a_changed_one_reads_as_alone(tmp_path, change):
    # No block I/O: io.stat is empty, no devices and no miss; then rewritten or removed between reads, it
    # reads as a reader that never saw it empty reads it.
    layout = v2_tree(tmp_path)
    path = tmp_path / "c1" / "io.stat"
    path.write_bytes(b"")
    reader = CgroupReader(layout)
    assert reader.read("/c1").blkio == CgroupIo(())
    assert reader.read("/c1").blkio == CgroupIo(())
    if change == "removed":
        path.unlink()
    else:
        path.write_text(
            "8:0 rbytes=x\n" if change == "garbled" else "254:0 rbytes=1 wbytes=2 rios=3 wios=4\n"
        )
    fresh = CgroupReader(layout)
    got = reader.read("/c1")
    assert got == fresh.read("/c1")
    assert reader.errors.snapshot() == fresh.errors.snapshot()
    assert (got.blkio is None) == (change == "removed")
    assert reader.errors.snapshot() == ({"io.stat": 1} if change == "garbled" else {})

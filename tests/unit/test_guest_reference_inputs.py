"""The reference readers' published test inputs, through our parsers and reader, with the values they assert.

Sources (read at the commits fetched for issue 15; inputs copied as data, expectations restated here):
- runc's cgroup library, opencontainers/cgroups: fscommon/utils_test.go TestGetCgroupParamsInt;
  fs/memory_test.go TestMemoryStats and its failure cases; fs/cpuacct_test.go TestCpuacctStats;
  fs/cpu_test.go TestCpuStats;
  fs/blkio_test.go (every stats test); fs/hugetlb_test.go TestHugetlbStats, TestHugetlbRStatsRsvd;
  fs/pids_test.go TestPidsStats, TestPidsStatsUnlimited; fs2/io_test.go; fs2/memory_test.go.
- containerd/cgroups: cgroup1/memory_test.go TestParseMemoryStats, TestParseMemoryOomControl,
  TestMemoryController_Stat; cgroup1/cpuacct_test.go TestGetUsage; cgroup1/utils_test.go TestReadUint;
  cgroup2/utils_test.go TestGetKVStatsFileContentUint64.
- kata-agent's cgroups-rs (kata-containers/cgroups-rs): src/fs/memory.rs test_parse_memory_stat,
  test_parse_oom_control; src/fs/blkio.rs test_parse_io_service, test_parse_io_service_total,
  test_parse_blkio_data.
- cAdvisor: lib/container/libcontainer/handler_test.go TestSetMemoryEvents; lib/machine/topology_test.go's
  meminfo line.

Where we deliberately differ (docs/cgroup-files.md says why) the test says so and asserts our rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from guest_agent.layout import detect_layout
from guest_agent.parse import (
    U64_MAX,
    BlkioLine,
    CgroupFormatError,
    parse_blkio,
    parse_flat_keyed,
    parse_int_list,
    parse_meminfo,
    parse_nested_keyed,
    parse_single,
)
from guest_agent.reader import CgroupReader, IncompleteCgroup
from guest_agent.record import CgroupCounter

CLOCK_TICKS = 100  # runc's and containerd's clockTicks in these tests
NS_PER_S = 1_000_000_000


def write(directory: Path, files: Mapping[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def read(root: Path, path: str = "/c1") -> CgroupReader:
    return CgroupReader(detect_layout(str(root), mountinfo=str(root / "no-mountinfo")), clk_tck=CLOCK_TICKS)


# ---------------------------------------------------------------------------------------------------------
# One-value files: runc fscommon TestGetCgroupParamsInt, containerd TestReadUint, runc TestCpuStats.


def test_runc_single_values():
    assert parse_single("2048", "cgroup.file") == 2048  # no newline
    assert parse_single("2048\n", "cgroup.file") == 2048
    with pytest.raises(CgroupFormatError, match="expected an integer, got 'not-a-float'"):
        parse_single("not-a-float", "cgroup.file")


@pytest.mark.parametrize("text", ["-12345", "-9223372036854775808"])
def test_runc_negative_values_are_malformed_here(text):
    # runc (and containerd's parseUint) read these as 0; we call them malformed (issue 15 §1).
    with pytest.raises(CgroupFormatError, match="negative value"):
        parse_single(text, "cgroup.file")


def test_containerd_reads_max_as_zero_we_as_unlimited():
    # containerd cgroup1 readUint returns 0 for "max" ("backwards compatibility"); runc's GetCgroupParamUint
    # and we return 2**64-1, the kernel's meaning.
    assert parse_single("max", "pids.max") == U64_MAX


def test_runc_cpu_stat_throttling_up_to_u64_max(tmp_path):
    write(
        tmp_path / "cpu" / "c1",
        {"cpu.stat": "nr_periods 2000\nnr_throttled 200\nthrottled_time 18446744073709551615\n"},
    )
    cpu = read(tmp_path).read("/c1").cpu
    assert cpu is not None
    assert cpu.throttling is not None
    assert (cpu.throttling.periods, cpu.throttling.throttled_periods) == (2000, 200)
    assert cpu.throttling.throttled_time == 18446744073709551615


# ---------------------------------------------------------------------------------------------------------
# Flat keyed files.

CONTAINERD_MEMORY_STAT = """cache 1
rss 2
rss_huge 3
mapped_file 4
dirty 5
writeback 6
pgpgin 7
pgpgout 8
pgfault 9
pgmajfault 10
inactive_anon 11
active_anon 12
inactive_file 13
active_file 14
unevictable 15
hierarchical_memory_limit 16
hierarchical_memsw_limit 17
total_cache 18
total_rss 19
total_rss_huge 20
total_mapped_file 21
total_dirty 22
total_writeback 23
total_pgpgin 24
total_pgpgout 25
total_pgfault 26
total_pgmajfault 27
total_inactive_anon 28
total_active_anon 29
total_inactive_file 30
total_active_file 31
total_unevictable 32
"""


def test_containerd_memory_stat_every_key_in_order():
    stat = parse_flat_keyed(CONTAINERD_MEMORY_STAT, "memory.stat")
    assert list(stat.values()) == list(range(1, 33))
    assert stat["hierarchical_memsw_limit"] == 17
    assert stat["total_inactive_file"] == 30


def test_containerd_oom_control_and_cpuacct_stat():
    oom = parse_flat_keyed("oom_kill_disable 1\nunder_oom 2\noom_kill 3\n", "memory.oom_control")
    assert oom == {"oom_kill_disable": 1, "under_oom": 2, "oom_kill": 3}
    ticks = parse_flat_keyed("user 1\nsystem 2\nsched_delay 3\n", "cpuacct.stat")
    # containerd's TestGetUsage: user and system ticks → ns with clockTicks 100
    assert (ticks["user"] * NS_PER_S // CLOCK_TICKS, ticks["system"] * NS_PER_S // CLOCK_TICKS) == (
        10_000_000,
        20_000_000,
    )


@pytest.mark.parametrize(
    ("text", "key", "containerd", "ours", "skipped"),
    [
        ("some_key 123\nanother_key 456\nthird_key 789", "another_key", 456, 456, 0),
        ("first_key 999\nsecond_key 888", "first_key", 999, 999, 0),
        ("first_key 111\nsecond_key 222\nthird_key 333", "third_key", 333, 333, 0),
        ("key1 100\nkey2 200", "missing_key", 0, None, 0),
        ("invalid_line\nvalid_key 42", "valid_key", 42, 42, 1),
        ("invalid key 1 2\nvalid_key 100", "valid_key", 100, 100, 1),
        ("key1 not_a_number\nkey2 500", "key1", 0, None, 1),
        ("", "any_key", 0, None, 0),
        ("max 18446744073709551615", "max", 18446744073709551615, 18446744073709551615, 0),
        ("zero 0\nnon_zero 1", "zero", 0, 0, 0),
    ],
)
def test_containerd_kv_cases(text, key, containerd, ours, skipped):
    # containerd's getKVStatsFileContentUint64 gives 0 for a missing key or a bad value; we keep the key
    # absent (the reader then leaves the figure out and counts it) and name the bad line.
    bad: list[CgroupFormatError] = []
    values = parse_flat_keyed(text, "test.stat", bad)
    assert values.get(key) == ours
    assert values.get(key, 0) == containerd
    assert len(bad) == skipped


CGROUPS_RS_MEMORY_STAT = """\
cache 178880512
rss 4206592
rss_huge 0
shmem 106496
mapped_file 7491584
dirty 114688
writeback 49152
swap 0
pgpgin 213928
pgpgout 169220
pgfault 87064
pgmajfault 202
inactive_anon 0
active_anon 4153344
inactive_file 84779008
active_file 94273536
unevictable 0
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 4200333312
total_rss 2927677440
total_rss_huge 0
total_shmem 590061568
total_mapped_file 1086164992
total_dirty 1769472
total_writeback 602112
total_swap 0
total_pgpgin 5267326291
total_pgpgout 5265586647
total_pgfault 9947902469
total_pgmajfault 25132
total_inactive_anon 585981952
total_active_anon 2928996352
total_inactive_file 1272135680
total_active_file 2338816000
total_unevictable 81920
"""


def test_cgroups_rs_memory_stat():
    stat = parse_flat_keyed(CGROUPS_RS_MEMORY_STAT, "memory.stat")
    assert len(stat) == 36
    assert stat["cache"] == 178880512
    assert stat["hierarchical_memory_limit"] == 9223372036854771712
    assert stat["total_pgfault"] == 9947902469
    assert stat["total_inactive_file"] == 1272135680
    assert stat["total_unevictable"] == 81920


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("oom_kill_disable 0\noom_kill 1337\n", {"oom_kill_disable": 0, "oom_kill": 1337}),
        ("oom_kill_disable 0\nunder_oom 1\n", {"oom_kill_disable": 0, "under_oom": 1}),
        (
            "oom_kill_disable 0\nunder_oom 1\noom_kill 1337\n",
            {"oom_kill_disable": 0, "under_oom": 1, "oom_kill": 1337},
        ),
    ],
)
def test_cgroups_rs_oom_control(text, expected):
    assert parse_flat_keyed(text, "memory.oom_control") == expected


@pytest.mark.parametrize(
    ("text", "high", "maximum"),
    [
        ("low 0\nhigh 42\nmax 5\noom 1\noom_kill 0\noom_group_kill 0\n", 42, 5),
        ("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n", 0, 0),
        ("low 0\nhigh 238\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n", 238, 0),
    ],
)
def test_cadvisor_memory_events(tmp_path, text, high, maximum):
    events = parse_flat_keyed(text, "memory.events")
    assert (events["high"], events["max"]) == (high, maximum)
    write(tmp_path, {"cgroup.controllers": "memory\n"})
    write(
        tmp_path / "c1",
        {"memory.stat": "inactive_file 0\nfile 0\n", "memory.current": "0\n", "memory.max": "max\n"},
    )
    write(tmp_path / "c1", {"memory.events": text})
    reader = read(tmp_path)
    memory = reader.read("/c1").memory
    assert memory is not None
    assert memory.usage.failcnt == maximum  # v2 failcnt = memory.events "max"
    assert reader.errors.snapshot() == {}


def test_cadvisor_empty_memory_events_reads_zero_and_is_counted_here(tmp_path):
    # cAdvisor: an empty memory.events gives 0 silently. We give 0 too (kata's wire has no "absent" for
    # failcnt) but count the file, since the kernel always writes the key.
    write(tmp_path, {"cgroup.controllers": "memory\n"})
    write(
        tmp_path / "c1",
        {"memory.stat": "inactive_file 0\nfile 0\n", "memory.current": "0\n", "memory.max": "max\n"},
    )
    write(tmp_path / "c1", {"memory.events": ""})
    reader = read(tmp_path)
    memory = reader.read("/c1").memory
    assert memory is not None
    assert memory.usage.failcnt == 0
    assert reader.errors.snapshot() == {"memory.events": 1}


# ---------------------------------------------------------------------------------------------------------
# The v1 memory reader: runc TestMemoryStats (+ failure cases), containerd TestMemoryController_Stat.

RUNC_MEMORY = {
    "memory.stat": "cache 512\nrss 1024",
    "memory.usage_in_bytes": "2048\n",
    "memory.limit_in_bytes": "8192\n",
    "memory.max_usage_in_bytes": "4096\n",
    "memory.failcnt": "100\n",
    "memory.memsw.usage_in_bytes": "2048\n",
    "memory.memsw.max_usage_in_bytes": "4096\n",
    "memory.memsw.failcnt": "100\n",
    "memory.memsw.limit_in_bytes": "8192\n",
    "memory.kmem.usage_in_bytes": "2048\n",
    "memory.kmem.max_usage_in_bytes": "4096\n",
    "memory.kmem.failcnt": "100\n",
    "memory.kmem.limit_in_bytes": "8192\n",
    "memory.use_hierarchy": "1\n",
}


def test_runc_memory_stats_need_the_inactive_file_key_here(tmp_path):
    # runc answers this input; we require total_inactive_file (the working set needs it).
    write(tmp_path / "memory" / "c1", RUNC_MEMORY)
    with pytest.raises(CgroupFormatError, match="key 'total_inactive_file' missing"):
        read(tmp_path).read("/c1")


def test_runc_memory_stats_with_the_inactive_file_key(tmp_path):
    write(
        tmp_path / "memory" / "c1",
        {**RUNC_MEMORY, "memory.stat": "cache 512\nrss 1024\ntotal_inactive_file 0"},
    )
    reader = read(tmp_path)
    memory = reader.read("/c1").memory
    assert memory is not None
    assert memory.cache == 512
    assert memory.usage == CgroupCounter(usage=2048, max_usage=4096, failcnt=100, limit=8192)
    assert memory.swap == CgroupCounter(usage=2048, max_usage=4096, failcnt=100, limit=8192)
    assert memory.kernel == CgroupCounter(usage=2048, max_usage=4096, failcnt=100, limit=8192)
    assert dict(memory.stat) == {"cache": 512, "rss": 1024, "total_inactive_file": 0}
    assert memory.use_hierarchy is True
    assert reader.errors.snapshot() == {}


def test_runc_no_stat_file_is_no_memory(tmp_path):
    write(
        tmp_path / "memory" / "c1",
        {k: RUNC_MEMORY[k] for k in ("memory.usage_in_bytes", "memory.limit_in_bytes")},
    )
    assert read(tmp_path).read("/c1").memory is None  # runc: no error, no memory stats


@pytest.mark.parametrize("bad", ["missing", "bad"])
def test_runc_usage_missing_or_bad_fails_as_in_runc(tmp_path, bad):
    files = {**RUNC_MEMORY, "memory.stat": "cache 512\ntotal_inactive_file 0\n"}
    if bad == "missing":
        del files["memory.usage_in_bytes"]
    else:
        files["memory.usage_in_bytes"] = "bad"
    write(tmp_path / "memory" / "c1", files)
    with pytest.raises((IncompleteCgroup, CgroupFormatError)):
        read(tmp_path).read("/c1")


@pytest.mark.parametrize("name", ["memory.max_usage_in_bytes", "memory.limit_in_bytes"])
@pytest.mark.parametrize("bad", ["missing", "bad"])
def test_runc_fails_on_these_we_leave_the_figure_out(tmp_path, name, bad):
    # runc's TestMemoryStatsNo{MaxUsage,LimitInBytes}File and TestMemoryStatsBad{MaxUsage,LimitInBytes}File
    # expect a failure; issue 15 §1: one bad file costs one figure, counted.
    files = {**RUNC_MEMORY, "memory.stat": "cache 512\ntotal_inactive_file 0\n"}
    if bad == "missing":
        del files[name]
    else:
        files[name] = "bad"
    write(tmp_path / "memory" / "c1", files)
    reader = read(tmp_path)
    memory = reader.read("/c1").memory
    assert memory is not None
    field = "max_usage" if "max_usage" in name else "limit"
    assert getattr(memory.usage, field) == 0
    assert memory.usage.usage == 2048
    assert reader.errors.snapshot() == {name: 1}


def test_runc_bad_stat_file_fails_for_its_missing_working_set_key(tmp_path):
    write(tmp_path / "memory" / "c1", {**RUNC_MEMORY, "memory.stat": "rss rss"})
    with pytest.raises(CgroupFormatError, match=r"memory\.stat: key 'total_inactive_file' missing"):
        read(tmp_path).read("/c1")


def test_containerd_memory_controller_stat(tmp_path):
    # containerd's buildMemoryMetrics writes 0..15 into usage/max/failcnt/limit of "", memsw, kmem, kmem.tcp.
    files = {
        "memory.stat": CONTAINERD_MEMORY_STAT,
        "memory.oom_control": "oom_kill_disable 1\nunder_oom 2\noom_kill 3\n",
    }
    n = 0
    for module in ("memory.", "memory.memsw.", "memory.kmem.", "memory.kmem.tcp."):
        for metric in ("usage_in_bytes", "max_usage_in_bytes", "failcnt", "limit_in_bytes"):
            files[module + metric] = f"{n}\n"
            n += 1
    write(tmp_path / "memory" / "c1", files)
    reader = read(tmp_path)
    memory = reader.read("/c1", extras=True).memory
    assert memory is not None
    assert memory.usage == CgroupCounter(usage=0, max_usage=1, failcnt=2, limit=3)
    assert memory.swap == CgroupCounter(usage=4, max_usage=5, failcnt=6, limit=7)
    assert memory.kernel == CgroupCounter(usage=8, max_usage=9, failcnt=10, limit=11)
    assert memory.kernel_tcp == CgroupCounter(usage=12, max_usage=13, failcnt=14, limit=15)
    assert memory.oom_control == {"oom_kill_disable": 1, "under_oom": 2, "oom_kill": 3}
    # containerd never reads memory.use_hierarchy; the kernel always writes it, so we count its absence
    assert reader.errors.snapshot() == {"memory.use_hierarchy": 1}


# ---------------------------------------------------------------------------------------------------------
# cpuacct: runc TestCpuacctStats.

RUNC_PERCPU = [
    1564936537989058,
    1583937096487821,
    1604195415465681,
    1596445226820187,
    1481069084155629,
    1478735613864327,
    1477610593414743,
    1476362015778086,
]


def test_runc_cpuacct(tmp_path):
    assert parse_int_list(" ".join(map(str, RUNC_PERCPU)), "cpuacct.usage_percpu") == RUNC_PERCPU
    write(
        tmp_path / "cpuacct" / "c1",
        {
            "cpuacct.usage": "12262454190222160",
            "cpuacct.usage_percpu": " ".join(map(str, RUNC_PERCPU)),
            "cpuacct.stat": "user 452278264\nsystem 291429664",
        },
    )
    cpu = read(tmp_path).read("/c1").cpu
    assert cpu is not None
    assert cpu.usage is not None
    assert cpu.usage.total == 12262454190222160
    assert list(cpu.usage.percpu) == RUNC_PERCPU
    assert cpu.usage.kernel == 291429664 * NS_PER_S // CLOCK_TICKS
    assert cpu.usage.user == 452278264 * NS_PER_S // CLOCK_TICKS


# ---------------------------------------------------------------------------------------------------------
# blkio: runc fs/blkio_test.go, cgroups-rs src/fs/blkio.rs.

RUNC_BLKIO = {
    "sectors": "8:0 1024",
    "sectors_bfq": "8:0 2048",
    "service_bytes": "8:0 Read 100\n8:0 Write 200\n8:0 Sync 300\n8:0 Async 500\n8:0 Total 500\nTotal 500",
    "service_bytes_bfq": (
        "8:0 Read 1100\n8:0 Write 1200\n8:0 Sync 1300\n8:0 Async 1500\n8:0 Total 1500\nTotal 1500"
    ),
    "serviced": "8:0 Read 10\n8:0 Write 40\n8:0 Sync 20\n8:0 Async 30\n8:0 Total 50\nTotal 50",
    "serviced_bfq": "8:0 Read 11\n8:0 Write 41\n8:0 Sync 21\n8:0 Async 31\n8:0 Total 51\nTotal 51",
    "queued": "8:0 Read 1\n8:0 Write 4\n8:0 Sync 2\n8:0 Async 3\n8:0 Total 5\nTotal 5",
    "queued_bfq": "8:0 Read 2\n8:0 Write 3\n8:0 Sync 4\n8:0 Async 5\n8:0 Total 6\nTotal 6",
    "service_time": (
        "8:0 Read 173959\n8:0 Write 0\n8:0 Sync 0\n8:0 Async 173959\n8:0 Total 17395\nTotal 17395"
    ),
    "service_time_bfq": "8:0 Read 173959\n8:0 Write 0\n8:0 Sync 0\n8:0 Async 173\n8:0 Total 174\nTotal 174",
    "wait_time": "8:0 Read 15571\n8:0 Write 0\n8:0 Sync 0\n8:0 Async 15571\n8:0 Total 15571",
    "wait_time_bfq": "8:0 Read 1557\n8:0 Write 0\n8:0 Sync 0\n8:0 Async 1557\n8:0 Total 1557",
    "merged": "8:0 Read 5\n8:0 Write 10\n8:0 Sync 0\n8:0 Async 0\n8:0 Total 15\nTotal 15",
    "merged_bfq": "8:0 Read 51\n8:0 Write 101\n8:0 Sync 0\n8:0 Async 0\n8:0 Total 151\nTotal 151",
    "time": "8:0 8",
    "time_bfq": "8:0 16",
}
THROTTLE_BYTES = (
    "8:0 Read 11030528\n8:0 Write 23\n8:0 Sync 42\n8:0 Async 11030528\n8:0 Total 11030528\n"
    "252:0 Read 11030528\n252:0 Write 23\n252:0 Sync 42\n252:0 Async 11030528\n252:0 Total 11030528\n"
    "Total 22061056"
)
THROTTLE_BYTES_RECURSIVE = (
    "8:0 Read 110305281\n8:0 Write 231\n8:0 Sync 421\n8:0 Async 110305281\n8:0 Total 110305281\n"
    "252:0 Read 110305281\n252:0 Write 231\n252:0 Sync 421\n252:0 Async 110305281\n252:0 Total 110305281\n"
    "Total 220610561"
)
THROTTLE_SERVICED = (
    "8:0 Read 164\n8:0 Write 23\n8:0 Sync 42\n8:0 Async 164\n8:0 Total 164\n"
    "252:0 Read 164\n252:0 Write 23\n252:0 Sync 42\n252:0 Async 164\n252:0 Total 164\nTotal 328"
)
THROTTLE_SERVICED_RECURSIVE = (
    "8:0 Read 1641\n8:0 Write 231\n8:0 Sync 421\n8:0 Async 1641\n8:0 Total 1641\n"
    "252:0 Read 1641\n252:0 Write 231\n252:0 Sync 421\n252:0 Async 1641\n252:0 Total 1641\nTotal 3281"
)


def _policy(prefix: str, suffix: str) -> dict[str, str]:
    """runc's blkio{BFQDebug,CFQ}StatsTestFiles: kernel file name → content."""
    return {
        f"{prefix}io_service_bytes_recursive": RUNC_BLKIO["service_bytes" + suffix],
        f"{prefix}io_serviced_recursive": RUNC_BLKIO["serviced" + suffix],
        f"{prefix}io_queued_recursive": RUNC_BLKIO["queued" + suffix],
        f"{prefix}io_service_time_recursive": RUNC_BLKIO["service_time" + suffix],
        f"{prefix}io_wait_time_recursive": RUNC_BLKIO["wait_time" + suffix],
        f"{prefix}io_merged_recursive": RUNC_BLKIO["merged" + suffix],
        f"{prefix}time_recursive": RUNC_BLKIO["time" + suffix],
        f"{prefix}sectors_recursive": RUNC_BLKIO["sectors" + suffix],
    }


BFQ_DEBUG_FILES = _policy("blkio.bfq.", "_bfq")
BFQ_FILES = {
    k: v
    for k, v in BFQ_DEBUG_FILES.items()
    if k.endswith(("io_service_bytes_recursive", "io_serviced_recursive"))
}
CFQ_FILES = _policy("blkio.", "")


def lines(text: str) -> tuple[BlkioLine, ...]:
    """Expected entries, spelled the way runc's appendBlkioStatEntry lists them (Total line left out)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if parts[0] == "Total":
            continue
        major, minor = (int(x) for x in parts[0].split(":"))
        out.append(BlkioLine(major, minor, parts[1] if len(parts) == 3 else "", int(parts[-1])))
    return tuple(out)


def blkio_files(tmp_path: Path, files: Mapping[str, str]) -> dict[str, tuple[BlkioLine, ...]]:
    write(tmp_path / "blkio" / "c1", files)
    record = read(tmp_path).read("/c1")
    assert record.blkio is not None
    return dict(record.blkio.files)  # type: ignore[union-attr]


def test_runc_blkio_bfq_debug_stats(tmp_path):
    files = blkio_files(tmp_path, BFQ_DEBUG_FILES)
    assert files["sectors_recursive"] == (BlkioLine(8, 0, "", 2048),)
    assert files["io_time_recursive"] == (BlkioLine(8, 0, "", 16),)
    assert files["io_service_bytes_recursive"] == lines(RUNC_BLKIO["service_bytes_bfq"])
    assert files["io_serviced_recursive"] == lines(RUNC_BLKIO["serviced_bfq"])
    assert files["io_queued_recursive"][-1] == BlkioLine(8, 0, "Total", 6)
    assert files["io_service_time_recursive"][3] == BlkioLine(8, 0, "Async", 173)
    assert files["io_wait_time_recursive"] == lines(RUNC_BLKIO["wait_time_bfq"])
    assert files["io_merged_recursive"][-1] == BlkioLine(8, 0, "Total", 151)


def test_runc_blkio_multiple_stats_files_prefers_bfq(tmp_path):
    files = blkio_files(tmp_path, {**BFQ_DEBUG_FILES, **CFQ_FILES})
    assert files["sectors_recursive"] == (BlkioLine(8, 0, "", 2048),)
    assert files["io_serviced_recursive"] == lines(RUNC_BLKIO["serviced_bfq"])


def test_runc_blkio_bfq_stats(tmp_path):
    files = blkio_files(tmp_path, BFQ_FILES)
    assert files == {
        "io_service_bytes_recursive": lines(RUNC_BLKIO["service_bytes_bfq"]),
        "io_serviced_recursive": lines(RUNC_BLKIO["serviced_bfq"]),
    }


def test_runc_blkio_cfq_stats(tmp_path):
    files = blkio_files(tmp_path, CFQ_FILES)
    assert files["sectors_recursive"] == (BlkioLine(8, 0, "", 1024),)
    assert files["io_time_recursive"] == (BlkioLine(8, 0, "", 8),)
    assert files["io_service_bytes_recursive"] == lines(RUNC_BLKIO["service_bytes"])
    assert files["io_queued_recursive"] == lines(RUNC_BLKIO["queued"])
    assert len(files) == 8


def test_runc_throttle_recursive_stats(tmp_path):
    empty_cfq = dict.fromkeys(CFQ_FILES, "")
    files = blkio_files(
        tmp_path,
        {
            **empty_cfq,
            "blkio.throttle.io_service_bytes_recursive": THROTTLE_BYTES_RECURSIVE,
            "blkio.throttle.io_serviced_recursive": THROTTLE_SERVICED_RECURSIVE,
        },
    )
    assert files == {
        "io_service_bytes_recursive": lines(THROTTLE_BYTES_RECURSIVE),
        "io_serviced_recursive": lines(THROTTLE_SERVICED_RECURSIVE),
    }
    assert files["io_serviced_recursive"][5] == BlkioLine(252, 0, "Read", 1641)


def test_runc_throttle_stats(tmp_path):
    files = blkio_files(
        tmp_path,
        {
            **dict.fromkeys(CFQ_FILES, ""),
            "blkio.throttle.io_service_bytes": THROTTLE_BYTES,
            "blkio.throttle.io_serviced": THROTTLE_SERVICED,
        },
    )
    assert files == {
        "io_service_bytes_recursive": lines(THROTTLE_BYTES),
        "io_serviced_recursive": lines(THROTTLE_SERVICED),
    }


@pytest.mark.parametrize("garbled", ["8:0 Read 100 100", "8:0 Read Write"])
def test_runc_unexpected_fields_cost_the_file_not_the_answer(tmp_path, garbled):
    # runc's TestBlkioStatsUnexpected{NumberOfFields,FieldType} fail the whole read; we leave that one
    # list empty and count the file.
    write(tmp_path / "blkio" / "c1", {**CFQ_FILES, "blkio.io_service_bytes_recursive": garbled})
    reader = read(tmp_path)
    record = reader.read("/c1")
    assert record.blkio is not None
    files = dict(record.blkio.files)  # type: ignore[union-attr]
    assert files["io_service_bytes_recursive"] == ()
    assert files["io_serviced_recursive"] == lines(RUNC_BLKIO["serviced"])
    assert reader.errors.snapshot() == {"blkio.io_service_bytes_recursive": 1}


def test_runc_missing_cfq_file_costs_that_list(tmp_path):
    # runc's TestBlkioStatsNoFilesCFQ (each file missing in turn) expects no error; so do we, and we count.
    for name in CFQ_FILES:
        if name == "blkio.io_serviced_recursive":
            continue  # the policy's probe: without it the policy is not chosen
        root = tmp_path / name
        write(root / "blkio" / "c1", {k: v for k, v in CFQ_FILES.items() if k != name})
        reader = read(root)
        record = reader.read("/c1")
        assert record.blkio is not None
        assert len(record.blkio.files) == 7  # type: ignore[union-attr]
        assert reader.errors.snapshot() == {name: 1}


CGROUPS_RS_IO_SERVICE = """\
8:32 Read 4280320
8:32 Write 0
8:32 Sync 4280320
8:32 Async 0
8:32 Discard 1
8:32 Total 4280320
8:48 Read 5705479168
8:48 Write 56096055296
8:48 Sync 11213923328
8:48 Async 50587611136
8:48 Total 61801534464
8:16 Read 10059776
8:16 Write 0
8:16 Sync 10059776
8:16 Async 0
8:16 Total 10059776
8:0 Read 7192576
8:0 Write 0
8:0 Sync 7192576
8:0 Async 0
8:0 Total 7192576
Total 61823067136
 """


def test_cgroups_rs_io_service():
    # cgroups-rs's input ends with a line holding one space, which it filters out; the kernel never writes
    # one, so our strict parser names it, and the reader's lenient mode skips it (counted).
    with pytest.raises(CgroupFormatError, match=r"blkio:22: the file.s .Total. line must come last"):
        parse_blkio(CGROUPS_RS_IO_SERVICE, "blkio")
    skipped: list[CgroupFormatError] = []
    parsed = parse_blkio(CGROUPS_RS_IO_SERVICE, "blkio", skipped)
    assert [e.line for e in skipped] == [22, 23]  # the Total line is then not last, and the blank line
    assert BlkioLine(8, 32, "Discard", 1) in parsed
    assert [x.value for x in parsed if x.op == "Total"] == [4280320, 61801534464, 10059776, 7192576]
    assert parse_blkio(CGROUPS_RS_IO_SERVICE.rstrip(" "), "blkio")[6] == BlkioLine(8, 48, "Read", 5705479168)


def test_cgroups_rs_blkio_data():
    text = "8:48 454480833999\n8:32 228392923193\n8:16 772456885\n8:0 559583764\n"
    assert parse_blkio(text, "blkio.time_recursive") == [
        BlkioLine(8, 48, "", 454480833999),
        BlkioLine(8, 32, "", 228392923193),
        BlkioLine(8, 16, "", 772456885),
        BlkioLine(8, 0, "", 559583764),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "8:32 Read 4280320\n8:32 Write a\n8:32 Async 1\n",
        "8:32 Read 4280320\nb:32 Write 1\n8:32 Async 1\n",
        "8:32 Read 4280320\n8:32 Write 1\n8:c Async 1\n",
    ],
)
def test_cgroups_rs_invalid_io_service_values(text):
    with pytest.raises(CgroupFormatError):
        parse_blkio(text, "blkio")


# ---------------------------------------------------------------------------------------------------------
# v2 io.stat: runc fs2/io_test.go.

RUNC_IO_STAT = """254:1 rbytes=6901432320 wbytes=14245535744 rios=263278 wios=248603 dbytes=0 dios=0
254:0 rbytes=2702336 wbytes=0 rios=97 wios=0 dbytes=0 dios=0
259:0 rbytes=6911345664 wbytes=14245536256 rios=264538 wios=244914 dbytes=530485248 dios=2"""
RUNC_IO_COST = """251:0 rbytes=2285568 wbytes=688128 rios=107 wios=168 dbytes=0 dios=0
252:0 rbytes=2037743988736 wbytes=1036567117824 rios=169193849 wios=41541021 dbytes=1012840136704 dios=199909
259:0 rbytes=4085926524416 wbytes=1036680064512 rios=185034771 wios=40358485 dbytes=1013982564352 \
dios=199959 cost.vrate=100.00 cost.usage=1532009788 cost.wait=1477289869 cost.indebt=0 cost.indelay=0"""


def test_runc_io_stat():
    devices = parse_nested_keyed(RUNC_IO_STAT, "io.stat")
    assert [(d.major, d.minor, d.stats["rbytes"], d.stats["wbytes"]) for d in devices] == [
        (254, 1, 6901432320, 14245535744),
        (254, 0, 2702336, 0),
        (259, 0, 6911345664, 14245536256),
    ]
    assert [(d.stats["rios"], d.stats["wios"]) for d in devices] == [
        (263278, 248603),
        (97, 0),
        (264538, 244914),
    ]


def test_runc_io_cost_debug_keys_are_skipped():
    devices = parse_nested_keyed(RUNC_IO_COST, "io.stat")
    assert [(d.major, d.minor, d.stats["rbytes"], d.stats["rios"]) for d in devices] == [
        (251, 0, 2285568, 107),
        (252, 0, 2037743988736, 169193849),
        (259, 0, 4085926524416, 185034771),
    ]
    assert set(devices[2].stats) == {"rbytes", "wbytes", "rios", "wios", "dbytes", "dios"}


# ---------------------------------------------------------------------------------------------------------
# v2 memory: runc fs2/memory_test.go.

RUNC_V2_MEMORY_STAT = """anon 790425600
file 6502666240
kernel_stack 7012352
pagetables 8867840
percpu 2445520
sock 40960
shmem 6721536
file_mapped 656187392
file_dirty 1122304
file_writeback 0
swapcached 10
anon_thp 438304768
file_thp 0
shmem_thp 0
inactive_anon 892223488
active_anon 2973696
inactive_file 5307346944
active_file 1179316224
unevictable 31477760
slab_reclaimable 348866240
slab_unreclaimable 10099808
slab 358966048
workingset_refault_anon 0
workingset_refault_file 0
workingset_activate_anon 0
workingset_activate_file 0
workingset_restore_anon 0
workingset_restore_file 0
workingset_nodereclaim 0
pgfault 103216687
pgmajfault 6879
pgrefill 0
pgscan 0
pgsteal 0
pgactivate 1110217
pgdeactivate 292
pglazyfree 267
pglazyfreed 0
thp_fault_alloc 57411
thp_collapse_alloc 443"""


def test_runc_v2_pod_cgroup(tmp_path):
    write(tmp_path, {"cgroup.controllers": "memory\n", "memory.stat": RUNC_V2_MEMORY_STAT})
    write(
        tmp_path / "c1",
        {
            "memory.stat": RUNC_V2_MEMORY_STAT,
            "memory.current": "123456789",
            "memory.max": "999999999",
            "memory.peak": "987654321",
            "memory.events": "max 0\n",
        },
    )
    memory = read(tmp_path).read("/c1").memory
    assert memory is not None
    assert (memory.usage.usage, memory.usage.limit, memory.usage.max_usage) == (
        123456789,
        999999999,
        987654321,
    )
    assert memory.cache == 6502666240  # runc: Cache = memory.stat "file"


def test_runc_v2_pod_cgroup_without_memory_current_fails(tmp_path):
    write(tmp_path, {"cgroup.controllers": "memory\n"})
    write(tmp_path / "c1", {"memory.stat": RUNC_V2_MEMORY_STAT})
    with pytest.raises(IncompleteCgroup, match=r"memory\.current: missing"):
        read(tmp_path).read("/c1")


def test_runc_v2_root_is_anon_plus_file(tmp_path):
    write(tmp_path, {"cgroup.controllers": "memory\n", "memory.stat": RUNC_V2_MEMORY_STAT})
    memory = CgroupReader(detect_layout(str(tmp_path)), meminfo=str(tmp_path / "none")).read("/").memory
    assert memory is not None
    assert memory.usage.usage == 7293091840  # runc TestRootStatsFromMeminfo: anon + file


# ---------------------------------------------------------------------------------------------------------
# hugetlb and pids: runc fs/hugetlb_test.go, fs/pids_test.go.


@pytest.mark.parametrize("rsvd", [False, True], ids=["plain", "rsvd"])
def test_runc_hugetlb_stats(tmp_path, rsvd):
    middle = "rsvd." if rsvd else ""
    files = {}
    for size in ("2MB", "1GB"):
        files[f"hugetlb.{size}.{middle}usage_in_bytes"] = "128\n"
        files[f"hugetlb.{size}.{middle}max_usage_in_bytes"] = "256\n"
        files[f"hugetlb.{size}.{middle}failcnt"] = "100\n"
        if rsvd:  # a kernel with reservation files has the plain ones too; they are not the ones read
            files[f"hugetlb.{size}.usage_in_bytes"] = "1\n"
    write(tmp_path / "hugetlb" / "c1", files)
    huge = read(tmp_path).read("/c1").hugetlb
    assert {size: (h.usage, h.max_usage, h.failcnt) for size, h in huge.items()} == {
        "2MB": (128, 256, 100),
        "1GB": (128, 256, 100),
    }


@pytest.mark.parametrize(("limit", "expected"), [("1024", 1024), ("max", U64_MAX)])
def test_runc_pids_stats(tmp_path, limit, expected):
    # runc reports pids.max "max" as 0; we keep 2**64-1 in the record, and guest_agent.kata spells it 0 on
    # the wire as kata-agent does.
    write(tmp_path / "pids" / "c1", {"pids.current": "1337", "pids.max": limit})
    pids = read(tmp_path).read("/c1").pids
    assert pids is not None
    assert (pids.current, pids.limit) == (1337, expected)


# ---------------------------------------------------------------------------------------------------------
# meminfo: cAdvisor lib/machine/topology_test.go.


def test_cadvisor_meminfo_line():
    assert parse_meminfo("MemTotal:       32817192 kB\n", "meminfo") == {"MemTotal": 32817192 * 1024}

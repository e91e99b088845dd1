"""Parsers of guest_agent.parse on small samples written in the kernel's own formats.

Each sample is built the way the kernel prints the file (seq_printf formats named in each test), and the
expected values are the numbers in the sample, so every assertion states a rule rather than a magic number.
"""

from __future__ import annotations

import pytest

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

# Kernel: memcg_stat_show prints "%s %lu\n" per key; v1 keeps local keys first, then total_*.
V1_MEMORY_STAT = {
    "cache": 103809024,
    "rss": 114688,
    "inactive_file": 73400320,
    "active_file": 30408704,
    "hierarchical_memory_limit": 9223372036854771712,
    "total_cache": 103809024,
    "total_inactive_file": 73400320,
}


def kernel_flat(values: dict[str, int]) -> str:
    """The text the kernel writes for a flat keyed file holding ``values``."""
    return "".join(f"{k} {v}\n" for k, v in values.items())


def test_flat_keyed_returns_every_key_with_its_value():
    assert parse_flat_keyed(kernel_flat(V1_MEMORY_STAT), "memory.stat") == V1_MEMORY_STAT


def test_flat_keyed_keeps_the_kernel_order():
    # The raw memory.stat map is sent as-is; the kernel's order is kept so logs read like the file.
    assert list(parse_flat_keyed(kernel_flat(V1_MEMORY_STAT), "memory.stat")) == list(V1_MEMORY_STAT)


def test_flat_keyed_accepts_a_missing_final_newline_and_an_empty_file():
    assert parse_flat_keyed("nr_periods 3\nnr_throttled 1", "cpu.stat") == {
        "nr_periods": 3,
        "nr_throttled": 1,
    }
    assert parse_flat_keyed("", "memory.events") == {}


def test_flat_keyed_reads_2_to_the_64_minus_1_and_refuses_more():
    assert parse_flat_keyed(f"max {U64_MAX}\n", "x") == {"max": U64_MAX}
    with pytest.raises(CgroupFormatError, match=r"^x:1: value 18446744073709551616 does not fit"):
        parse_flat_keyed(f"max {U64_MAX + 1}\n", "x")


def test_flat_keyed_refuses_a_negative_count():
    # Rule (issue 15): the kernel prints every stat value with %llu/%lu, so a sign is a garbled file. runc's
    # and containerd's ParseUint read it as 0, which would pass a garbled figure off as a measurement.
    with pytest.raises(CgroupFormatError, match=r"^memory.stat:2: negative value -4096 where the kernel"):
        parse_flat_keyed("a 5\nb -4096\n", "memory.stat")


def test_flat_keyed_with_a_skipped_list_keeps_the_good_lines_and_names_the_bad():
    skipped: list[CgroupFormatError] = []
    text = "cache 1\nrss -5\nbogus line here\nshmem 3\nmapped_file 1\nmapped_file 2\n"
    assert parse_flat_keyed(text, "memory.stat", skipped) == {"cache": 1, "shmem": 3}
    assert [(e.line, e.key) for e in skipped] == [(2, "rss"), (3, "bogus"), (6, "mapped_file")]


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("cache 1\nrss\n", 2, "expected 'key value'"),
        ("cache 1\nrss 1 2\n", 2, "expected 'key value'"),
        ("cache\t1\n", 1, "expected 'key value'"),
        (" 1\n", 1, "expected 'key value'"),
        ("cache 1\n\nrss 2\n", 2, "expected 'key value'"),
        ("cache 0x10\n", 1, "expected an integer, got '0x10'"),
        ("cache 1_000\n", 1, "expected an integer, got '1_000'"),
        ("cache +5\n", 1, "expected an integer, got '+5'"),
        ("cache 5.0\n", 1, "expected an integer, got '5.0'"),
        ("cache ٣\n", 1, "expected an integer"),  # a non-ASCII digit
        ("cache 1\nrss 2\ncache 3\n", 3, "key 'cache' repeated"),
    ],
)
def test_flat_keyed_names_the_file_and_line_of_a_garbled_line(text, line, why):
    with pytest.raises(CgroupFormatError) as info:
        parse_flat_keyed(text, "/sys/fs/cgroup/memory/x/memory.stat")
    assert str(info.value).startswith(f"/sys/fs/cgroup/memory/x/memory.stat:{line}: {why}")
    assert info.value.line == line


def test_single_value_and_max():
    # memory.max / pids.max print "max\n" for no limit; everything else one "%llu\n".
    assert parse_single("4096\n", "memory.current") == 4096
    assert parse_single("max\n", "memory.max") == U64_MAX
    with pytest.raises(CgroupFormatError, match="negative value -1"):  # a limit file; stats never read it
        parse_single("-1\n", "cpu.cfs_quota_us")


@pytest.mark.parametrize("text", ["", "1\n2\n", "12 34\n", "max \n", "MAX\n"])
def test_single_value_refuses_anything_but_one_value(text):
    with pytest.raises(CgroupFormatError, match=r"^memory\.current"):
        parse_single(text, "memory.current")


def test_int_list_reads_percpu_usage_with_its_trailing_space():
    # cpuacct_percpu_seq_show prints "%llu " per cpu, then "\n".
    per_cpu = [1621743, 38599254, 0]
    text = "".join(f"{v} " for v in per_cpu) + "\n"
    assert parse_int_list(text, "cpuacct.usage_percpu") == per_cpu
    with pytest.raises(CgroupFormatError, match=r"cpuacct.usage_percpu:1: expected an integer, got 'x'"):
        parse_int_list("1 x\n", "cpuacct.usage_percpu")


def blkio_text(lines: list[BlkioLine], total: int | None) -> str:
    """What blkcg_print_rwstat / blkg_prfill_stat write: '%s %s %llu' per op (or '%s %llu'), 'Total %llu'."""
    out = "".join(
        f"{x.major}:{x.minor} {x.op} {x.value}\n" if x.op else f"{x.major}:{x.minor} {x.value}\n"
        for x in lines
    )
    return out + (f"Total {total}\n" if total is not None else "")


def test_blkio_reads_every_device_and_op_and_skips_the_file_total():
    lines = [
        BlkioLine(254, 0, op, value)
        for op, value in [("Read", 4096), ("Write", 104857600), ("Sync", 0), ("Async", 104861696)]
    ] + [BlkioLine(254, 0, "Discard", 0), BlkioLine(254, 0, "Total", 104861696), BlkioLine(8, 16, "Read", 7)]
    total = sum(x.value for x in lines if x.op == "Total")
    assert parse_blkio(blkio_text(lines, total), "blkio.throttle.io_service_bytes_recursive") == lines


def test_blkio_files_without_ops_and_an_empty_file():
    lines = [BlkioLine(8, 0, "", 123456), BlkioLine(8, 16, "", 7)]
    assert parse_blkio(blkio_text(lines, None), "blkio.sectors_recursive") == lines
    assert parse_blkio("Total 0\n", "blkio.throttle.io_serviced_recursive") == []


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("8-0 Read 1\n", 1, "expected 'major:minor'"),
        ("8:0 Read\t1\n", 1, "expected an integer, got 'Read\\t1'"),
        ("8:0 Re/ad 1\n", 1, "bad op"),
        ("Total 1\n8:0 Read 1\n", 1, "the file's 'Total' line must come last"),
        ("8:0 Read 1 2\n", 1, "expected 'maj:min [Op] value'"),
        ("8:x Read 1\n", 1, "expected an integer, got 'x'"),
    ],
)
def test_blkio_names_file_and_line_of_a_garbled_line(text, line, why):
    with pytest.raises(CgroupFormatError) as info:
        parse_blkio(text, "blkio.io_serviced_recursive")
    assert str(info.value).startswith(f"blkio.io_serviced_recursive:{line}: {why}")


def test_io_stat_reads_the_standard_keys_per_device_and_skips_policy_keys():
    # blkcg_print_one_stat: "%s rbytes=%llu wbytes=%llu rios=%llu wios=%llu dbytes=%llu dios=%llu", then the
    # policies' own keys (iocost prints floats, iolatency prints "depth=max").
    dev_a = {"rbytes": 4096, "wbytes": 104857600, "rios": 1, "wios": 800, "dbytes": 0, "dios": 0}
    dev_b = {"rbytes": 1, "wbytes": 2, "rios": 3, "wios": 4, "dbytes": 5, "dios": 6}
    text = (
        "254:0 " + " ".join(f"{k}={v}" for k, v in dev_a.items()) + " cost.vrate=100.00 depth=max\n"
        "8:16 " + " ".join(f"{k}={v}" for k, v in dev_b.items()) + "\n"
    )
    parsed = parse_nested_keyed(text, "io.stat")
    assert [(x.major, x.minor, x.stats) for x in parsed] == [(254, 0, dev_a), (8, 16, dev_b)]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("254:0 rbytes\n", "expected 'key=value', got 'rbytes'"),
        ("254:0 rbytes=1.5\n", "expected an integer, got '1.5'"),
        ("254:0 rbytes=1 rbytes=2\n", "key 'rbytes' repeated"),
        ("254 rbytes=1\n", "expected 'major:minor'"),
        ("254:0 =1\n", "expected 'key=value'"),
    ],
)
def test_io_stat_names_file_and_line_of_a_garbled_line(text, why):
    with pytest.raises(CgroupFormatError, match=rf"^io\.stat:1: {why}"):
        parse_nested_keyed(text, "io.stat")


def test_meminfo_converts_kb_to_bytes_and_keeps_plain_counts():
    # /proc/meminfo: "%-15s %8lu kB" for sizes; HugePages_* are plain counts.
    text = (
        "MemTotal:       24684084 kB\n"
        "SwapTotal:       1048576 kB\n"
        "SwapFree:         524288 kB\n"
        "HugePages_Total:       0\n"
    )
    info = parse_meminfo(text, "meminfo")
    assert info == {
        "MemTotal": 24684084 * 1024,
        "SwapTotal": 1048576 * 1024,
        "SwapFree": 524288 * 1024,
        "HugePages_Total": 0,
    }
    with pytest.raises(CgroupFormatError, match=r"^meminfo:1: expected 'Key: value \[kB\]'"):
        parse_meminfo("MemTotal: 5 MB\n", "meminfo")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hugetlb.2MB.current", ("2MB", "current")),
        ("hugetlb.1GB.usage_in_bytes", ("1GB", "usage_in_bytes")),
        ("hugetlb.64KB.rsvd.max", ("64KB", "rsvd.max")),
        ("hugetlb.2MB", None),
        ("hugetlb.2XB.current", None),
        ("hugetlb.MB.current", None),
        ("memory.stat", None),
    ],
)
def test_hugetlb_file_names(name, expected):
    # hugetlb_cgroup names files "hugetlb.<size><KB|MB|GB>.<file>".
    assert parse_hugetlb_name(name) == expected


def test_hugetlb_size_in_bytes():
    assert hugetlb_size_bytes("2MB") == 2 << 20
    assert hugetlb_size_bytes("1GB") == 1 << 30
    assert hugetlb_size_bytes("64KB") == 64 << 10

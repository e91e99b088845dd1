"""guest_agent.kata: a CgroupRecord spelled as kata-agent's StatsContainerResponse, field by field."""

from __future__ import annotations

from guest_agent.kata import IO_STAT_OPS, to_response
from guest_agent.parse import U64_MAX, BlkioLine, IoStatLine
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
from shimstats._proto.kata import agent_pb2

USAGE = Counter(usage=107118592, max_usage=109330432, failcnt=3, limit=9223372036854771712)
MEMSW = Counter(usage=107122688, max_usage=109334528, failcnt=1, limit=9223372036854771712)
KMEM = Counter(usage=2633728, max_usage=2772992, failcnt=0, limit=9223372036854771712)
V1_STAT = {"cache": 103809024, "rss": 114688, "total_inactive_file": 73400320}


def roundtrip(record: CgroupRecord) -> agent_pb2.StatsContainerResponse:
    """to_response, then through the wire format, as the host receives it."""
    return agent_pb2.StatsContainerResponse.FromString(to_response(record).SerializeToString())


def as_tuple(data: agent_pb2.MemoryData) -> Counter:
    return Counter(usage=data.usage, max_usage=data.max_usage, failcnt=data.failcnt, limit=data.limit)


def test_v1_memory_goes_through_unchanged():
    record = CgroupRecord(
        path="/c1",
        memory=MemoryRecord(
            version=1,
            usage=USAGE,
            swap=MEMSW,
            kernel=KMEM,
            cache=V1_STAT["cache"],
            use_hierarchy=True,
            stat=V1_STAT,
        ),
    )
    ms = roundtrip(record).cgroup_stats.memory_stats
    assert as_tuple(ms.usage) == USAGE
    assert as_tuple(ms.swap_usage) == MEMSW
    assert as_tuple(ms.kernel_usage) == KMEM
    assert ms.cache == V1_STAT["cache"]
    assert ms.use_hierarchy is True
    assert dict(ms.stats) == V1_STAT  # the raw memory.stat map, every key


def test_absent_swap_and_controllers_stay_unset_and_zero_counters_stay_present():
    zero = Counter(0, 0, 0, 0)
    record = CgroupRecord(
        path="/",
        memory=MemoryRecord(
            version=2, usage=zero, swap=None, kernel=zero, cache=0, use_hierarchy=True, stat={}
        ),
    )
    stats = roundtrip(record).cgroup_stats
    assert stats.memory_stats.HasField("usage")
    assert stats.memory_stats.HasField("kernel_usage")
    assert not stats.memory_stats.HasField("swap_usage")
    for name in ("cpu_stats", "pids_stats", "blkio_stats"):
        assert not stats.HasField(name)
    assert len(stats.hugetlb_stats) == 0
    assert len(roundtrip(record).network_stats) == 0  # kata-agent never fills it either


def test_empty_record_still_carries_cgroup_stats():
    response = roundtrip(CgroupRecord(path="/c1"))
    assert response.HasField("cgroup_stats")


def test_cpu_fields_and_units_pass_through():
    usage = CpuUsage(total=40220997, user=70000000, kernel=30000000, percpu=(1621743, 38599254))
    throttling = Throttling(periods=10, throttled_periods=4, throttled_time=1500000)
    cs = roundtrip(CgroupRecord(path="/c1", cpu=CpuRecord(usage, throttling))).cgroup_stats.cpu_stats
    assert (cs.cpu_usage.total_usage, cs.cpu_usage.usage_in_usermode, cs.cpu_usage.usage_in_kernelmode) == (
        usage.total,
        usage.user,
        usage.kernel,
    )
    assert tuple(cs.cpu_usage.percpu_usage) == usage.percpu
    assert (
        cs.throttling_data.periods,
        cs.throttling_data.throttled_periods,
        cs.throttling_data.throttled_time,
    ) == (10, 4, 1500000)


def test_cpu_without_throttling_leaves_throttling_unset():
    record = CgroupRecord(path="/c1", cpu=CpuRecord(CpuUsage(total=5, user=3, kernel=2), None))
    cs = roundtrip(record).cgroup_stats.cpu_stats
    assert cs.HasField("cpu_usage")
    assert not cs.HasField("throttling_data")


def test_pids_unlimited_is_sent_as_zero_like_kata_agent():
    assert roundtrip(CgroupRecord(path="/c", pids=PidsRecord(3, U64_MAX))).cgroup_stats.pids_stats.limit == 0
    assert roundtrip(CgroupRecord(path="/c", pids=PidsRecord(3, 100))).cgroup_stats.pids_stats.limit == 100


def test_v1_blkio_ops_are_lowercased_per_file():
    lines = (
        BlkioLine(254, 0, "Read", 4096),
        BlkioLine(254, 0, "Write", 8192),
        BlkioLine(254, 0, "Total", 12288),
    )
    sectors = (BlkioLine(8, 0, "", 40),)
    blkio = BlkioRecord({"io_service_bytes_recursive": lines, "sectors_recursive": sectors})
    bs = roundtrip(CgroupRecord(path="/c", blkio=blkio)).cgroup_stats.blkio_stats
    assert [(e.major, e.minor, e.op, e.value) for e in bs.io_service_bytes_recursive] == [
        (x.major, x.minor, x.op.lower(), x.value) for x in lines
    ]
    assert [(e.major, e.minor, e.op, e.value) for e in bs.sectors_recursive] == [(8, 0, "", 40)]
    assert len(bs.io_serviced_recursive) == 0


def test_v2_io_stat_becomes_six_entries_per_device_in_service_bytes():
    # kata-agent's spelling: every io.stat key of a device → one entry in io_service_bytes_recursive.
    dev = IoStatLine(254, 0, {"rbytes": 4096, "wbytes": 8192, "rios": 1, "wios": 2, "dbytes": 0, "dios": 0})
    other = IoStatLine(8, 16, {"rbytes": 1, "wbytes": 2, "rios": 3, "wios": 4, "dbytes": 5, "dios": 6})
    bs = roundtrip(CgroupRecord(path="/c", blkio=IoRecord((dev, other)))).cgroup_stats.blkio_stats
    expected = [(d.major, d.minor, op, d.stats[key]) for d in (dev, other) for key, op in IO_STAT_OPS]
    assert [(e.major, e.minor, e.op, e.value) for e in bs.io_service_bytes_recursive] == expected
    assert [op for _, op in IO_STAT_OPS] == ["read", "write", "rios", "wios", "dbytes", "dios"]
    assert len(bs.io_serviced_recursive) == 0


def test_hugetlb_map_is_keyed_by_page_size():
    huge = {"2MB": HugetlbRecord(usage=4 << 20, max_usage=6 << 20, failcnt=1), "1GB": HugetlbRecord(0, 0, 0)}
    hs = roundtrip(CgroupRecord(path="/c", hugetlb=huge)).cgroup_stats.hugetlb_stats
    assert {k: (v.usage, v.max_usage, v.failcnt) for k, v in hs.items()} == {
        k: (v.usage, v.max_usage, v.failcnt) for k, v in huge.items()
    }


def test_the_blkio_fields_are_exactly_the_kata_blkio_lists() -> None:
    # One list serves the reader, translate and the runtime-rs emulation: it must name every kata list, and
    # every group the reader reads fills only kata lists.
    from guest_agent.reader import BLKIO_FIELDS, BLKIO_GROUPS
    from shimstats._proto.kata import agent_pb2

    assert tuple(f.name for f in agent_pb2.BlkioStats.DESCRIPTOR.fields) == BLKIO_FIELDS
    assert {field for group in BLKIO_GROUPS for field, _ in group} == set(BLKIO_FIELDS)

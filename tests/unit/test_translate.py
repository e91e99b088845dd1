"""Field-by-field rules of the translation core (shimstats.translate); the invariant is in
test_translate_invariant.py. Every expected number is the input's, moved by the rule the test names."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from google.protobuf.message import Message

from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats._proto.kata import agent_pb2
from shimstats.translate import (
    guest_version,
    record_from_agent,
    resolve_format,
    to_metrics,
    translate,
)
from shimstats.translate.agent import V1_KEYS
from shimstats.translate.record import UNLIMITED, MemoryStat
from tests.translate_builders import (
    DEVICES,
    PAGE,
    U64_MAX,
    V1_UNLIMITED,
    Guest,
    agent_response,
    example_v1,
    example_v2,
    expected_working_set,
    full_response,
    kata_agent_v2,
    memory_data,
)


def _v1(response: agent_pb2.StatsContainerResponse) -> v1.Metrics:
    m = translate(response, "v1")
    assert isinstance(m, v1.Metrics)
    return m


def _v2(response: agent_pb2.StatsContainerResponse) -> v2.Metrics:
    m = translate(response, "v2")
    assert isinstance(m, v2.Metrics)
    return m


def _wire(messages: Iterable[Message]) -> list[bytes]:
    """Network stats are the same fields under the same numbers in all three protos: compare the bytes."""
    return [m.SerializeToString() for m in messages]


def _response(stats: dict[str, int], usage: int = 100 * PAGE) -> agent_pb2.StatsContainerResponse:
    r = agent_pb2.StatsContainerResponse()
    r.cgroup_stats.memory_stats.stats.update(stats)
    r.cgroup_stats.memory_stats.usage.CopyFrom(memory_data(usage, U64_MAX))
    r.cgroup_stats.memory_stats.swap_usage.CopyFrom(memory_data(5 * PAGE, U64_MAX))
    return r


# ---------------------------------------------------------------------------------------------- guest version


@pytest.mark.parametrize(
    ("stats", "version"),
    [
        ({"cache": 1, "rss": 2}, "v1"),
        ({"total_inactive_file": 1}, "v1"),
        ({"anon": 1, "file": 2, "inactive_file": 3}, "v2"),
        ({"file": 2}, "v2"),
        ({"inactive_file": 3, "kernel_stack": 4, "sock": 0, "file_mapped": 0}, "v2"),  # anon, file left out
        ({}, "unknown"),
        ({"inactive_file": 3, "active_file": 4}, "unknown"),  # keys both versions have
        ({"anon": 1, "cache": 1}, "unknown"),  # markers of both versions
    ],
)
def test_guest_version_from_memory_stat_keys(stats: dict[str, int], version: str) -> None:
    assert guest_version(_response(stats)) == version


def test_guest_version_without_memory_stats_is_unknown() -> None:
    assert guest_version(agent_pb2.StatsContainerResponse()) == "unknown"


@pytest.mark.parametrize("output", ["v1", "v2"])
def test_unknown_guest_subtracts_nothing_and_sends_no_swap(output: str) -> None:
    """Empty map: usage only, so the working set is the usage; swap_usage's meaning is undecidable."""
    response = _response({}, usage=100 * PAGE)
    metrics = translate(response, output)
    got = cri.cri_memory(metrics)
    assert got is not None
    assert (got.usage_bytes, got.working_set_bytes, got.rss_bytes) == (100 * PAGE, 100 * PAGE, 0)
    if isinstance(metrics, v1.Metrics):
        assert not metrics.memory.HasField("swap")
        assert not metrics.memory.HasField("kernel")
    else:
        assert metrics.memory.swap_usage == 0


# ---------------------------------------------------------------------------------------------- v1 output

KERNEL_TO_V1 = {
    "cache": "cache",
    "rss": "rss",
    "rss_huge": "rss_huge",
    "mapped_file": "mapped_file",
    "dirty": "dirty",
    "writeback": "writeback",
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
    "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
}
"""v1 memory.stat key → v1 proto field (docs/spec/metrics.md §3.1); total_<key> → total_<field> likewise."""
KERNEL_TO_V1 |= {
    "total_" + k: "total_" + f for k, f in KERNEL_TO_V1.items() if not k.startswith("hierarchical")
}


def test_kernel_to_v1_table_covers_every_v1_memory_stat_number() -> None:
    numbers = {f.name for f in v1.MemoryStat.DESCRIPTOR.fields if f.number <= 32}
    assert set(KERNEL_TO_V1.values()) == numbers


def test_v1_keys_are_the_first_memory_stat_fields_in_order() -> None:
    """record_from_agent builds a v1 guest's MemoryStat positionally from V1_KEYS' look-ups."""
    assert tuple(V1_KEYS) == MemoryStat._fields[: len(V1_KEYS)]


def test_v1_guest_to_v1_sets_every_field_under_its_proto_name() -> None:
    guest = example_v1()
    memory = _v1(agent_response(guest)).memory
    for key, field in KERNEL_TO_V1.items():
        assert getattr(memory, field) == guest.stats[key], (key, field)
    assert memory.total_pg_fault != memory.pg_fault  # the example has a child, so the two differ


def test_v1_guest_to_v1_memory_entries() -> None:
    """usage = memory.*, swap = memsw (memory + swap, as sent), kernel = kmem; no kata field for kmem.tcp."""
    guest = example_v1()
    memory = _v1(agent_response(guest)).memory
    assert (memory.usage.usage, memory.usage.limit) == (guest.usage, guest.limit)
    assert (memory.usage.max, memory.usage.failcnt) == (guest.peak, guest.failcnt)
    assert guest.swap is not None
    assert (memory.swap.usage, memory.swap.limit) == (
        guest.usage + guest.swap,
        guest.limit + guest.swap_limit,
    )
    assert (memory.kernel.usage, memory.kernel.limit) == (guest.kernel, V1_UNLIMITED)
    assert not memory.HasField("kernel_tcp")


V2_TO_V1 = {
    "anon": "rss",
    "file": "cache",
    "anon_thp": "rss_huge",
    "file_mapped": "mapped_file",
    "file_dirty": "dirty",
    "file_writeback": "writeback",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "inactive_anon": "inactive_anon",
    "active_anon": "active_anon",
    "inactive_file": "inactive_file",
    "active_file": "active_file",
    "unevictable": "unevictable",
}
"""v2 memory.stat key → the v1 proto field of the same meaning."""


def test_v2_guest_to_v1_fills_local_and_total_from_the_hierarchical_v2_keys() -> None:
    guest = example_v2()
    memory = _v1(agent_response(guest)).memory
    for key, field in V2_TO_V1.items():
        assert getattr(memory, field) == getattr(memory, "total_" + field) == guest.stats.get(key, 0), key
    assert memory.total_pg_pg_in == memory.hierarchical_memory_limit == 0  # v2 has neither


def test_v2_guest_to_v1_memory_entries() -> None:
    """swap = memory + swap with limits added (unlimited stays unlimited); kernel = memory.stat kernel;
    kernel_tcp = sock; v2 has no separate limits for those: unlimited."""
    guest = example_v2()
    memory = _v1(agent_response(guest)).memory
    assert guest.swap is not None
    assert (memory.swap.usage, memory.swap.limit) == (guest.usage + guest.swap, UNLIMITED)
    assert (memory.kernel.usage, memory.kernel.limit) == (guest.stats["kernel"], UNLIMITED)
    assert (memory.kernel_tcp.usage, memory.kernel_tcp.limit) == (guest.stats["sock"], UNLIMITED)
    finite = Guest("v2", guest.stats, guest.usage, 1 << 30, swap=guest.swap, swap_limit=1 << 28)
    assert _v1(agent_response(finite)).memory.swap.limit == (1 << 30) + (1 << 28)


@pytest.mark.parametrize("guest", [example_v1(), example_v2()], ids=["v1", "v2"])
def test_v1_cpu_pids_hugetlb_network(guest: Guest) -> None:
    response = full_response(guest)
    m, cg = _v1(response), response.cgroup_stats
    u = cg.cpu_stats.cpu_usage
    assert (m.cpu.usage.total, m.cpu.usage.user, m.cpu.usage.kernel) == (
        u.total_usage,
        u.usage_in_usermode,
        u.usage_in_kernelmode,
    )
    assert list(m.cpu.usage.per_cpu) == list(u.percpu_usage)
    t = cg.cpu_stats.throttling_data
    assert (m.cpu.throttling.periods, m.cpu.throttling.throttled_periods) == (t.periods, t.throttled_periods)
    assert m.cpu.throttling.throttled_time == t.throttled_time
    assert (m.pids.current, m.pids.limit) == (cg.pids_stats.current, 0)  # "max" is 0 in v1, as containerd
    assert {h.pagesize: (h.usage, h.max, h.failcnt) for h in m.hugetlb} == {
        size: (h.usage, h.max_usage, h.failcnt) for size, h in cg.hugetlb_stats.items()
    }
    assert [n.SerializeToString() for n in m.network] == [
        n.SerializeToString() for n in response.network_stats
    ]


def test_v1_guest_blkio_keeps_every_file_in_the_kernels_spelling() -> None:
    response = full_response(example_v1())
    blkio, sent = _v1(response).blkio, response.cgroup_stats.blkio_stats
    spelling = {"read": "Read", "write": "Write", "sync": "Sync", "async": "Async", "discard": "Discard"}
    spelling |= {"total": "Total", "": ""}
    for field in blkio.DESCRIPTOR.fields:
        got = [(e.op, e.device, e.major, e.minor, e.value) for e in getattr(blkio, field.name)]
        want = [(spelling[e.op], "", e.major, e.minor, e.value) for e in getattr(sent, field.name)]
        assert got == want, field.name
    assert blkio.io_queued_recursive  # the list the Go shim loses is kept


def test_v2_guest_blkio_as_v1_reads_writes_discards_and_their_total_per_device() -> None:
    """From io.stat: Read, Write, Discard and Total = Read + Write + Discard (the kernel's v1 rule)."""
    response = full_response(example_v2())
    blkio = _v1(response).blkio
    sent: dict[tuple[int, int], dict[str, int]] = {}
    for e in response.cgroup_stats.blkio_stats.io_service_bytes_recursive:
        sent.setdefault((e.major, e.minor), {})[e.op] = e.value
    for name, (r, w, d) in (
        ("io_service_bytes_recursive", ("read", "write", "dbytes")),
        ("io_serviced_recursive", ("rios", "wios", "dios")),
    ):
        want = []
        for (major, minor), ops in sent.items():
            values = {"Read": ops[r], "Write": ops[w], "Discard": ops[d]}
            values["Total"] = ops[r] + ops[w] + ops[d]
            want += [(op, major, minor, value) for op, value in values.items()]
        assert [(e.op, e.major, e.minor, e.value) for e in getattr(blkio, name)] == want


# ---------------------------------------------------------------------------------------------- v2 output

V1_TO_V2 = {
    "anon": "total_rss",
    "file": "total_cache",
    "anon_thp": "total_rss_huge",
    "shmem": "total_shmem",
    "file_mapped": "total_mapped_file",
    "file_dirty": "total_dirty",
    "file_writeback": "total_writeback",
    "inactive_anon": "total_inactive_anon",
    "active_anon": "total_active_anon",
    "inactive_file": "total_inactive_file",
    "active_file": "total_active_file",
    "unevictable": "total_unevictable",
    "pgfault": "total_pgfault",
    "pgmajfault": "total_pgmajfault",
}
"""v2 proto field → the v1 memory.stat key of the same meaning (hierarchical, as every v2 value is)."""


def test_v1_guest_to_v2_memory() -> None:
    guest = example_v1()
    memory = _v2(agent_response(guest)).memory
    for field, key in V1_TO_V2.items():
        assert getattr(memory, field) == guest.stats[key], field
    assert memory.kernel_stack == memory.slab == memory.sock == 0  # v1 does not itemise kernel memory
    assert guest.swap is not None
    assert (memory.usage, memory.usage_limit, memory.max_usage) == (guest.usage, guest.limit, guest.peak)
    assert (memory.swap_usage, memory.swap_limit) == (guest.swap, guest.swap_limit)  # memsw - memory


def test_v1_unlimited_becomes_v2_max() -> None:
    guest = Guest("v1", example_v1().stats, 10 * PAGE, V1_UNLIMITED, swap=PAGE, swap_limit=U64_MAX)
    memory = _v2(agent_response(guest)).memory
    assert (memory.usage_limit, memory.swap_limit) == (U64_MAX, U64_MAX)


def test_v2_guest_to_v2_memory() -> None:
    guest = example_v2()
    m = _v2(agent_response(guest))
    for field in v2.MemoryStat.DESCRIPTOR.fields:
        if field.name in guest.stats:
            assert getattr(m.memory, field.name) == guest.stats[field.name], field.name
    assert m.memory.workingset_refault_file == guest.stats["workingset_refault_file"] > 0
    assert guest.swap is not None
    assert (m.memory.usage, m.memory.usage_limit, m.memory.max_usage) == (
        guest.usage,
        guest.limit,
        guest.peak,
    )
    assert (m.memory.swap_usage, m.memory.swap_limit) == (guest.swap, guest.swap_limit)
    assert m.HasField("memory_events")
    assert m.memory_events.max == guest.failcnt


@pytest.mark.parametrize("guest", [example_v1(), example_v2()], ids=["v1", "v2"])
def test_v2_cpu_in_microseconds_user_and_system_not_swapped(guest: Guest) -> None:
    response = full_response(guest)
    cpu, sent = _v2(response).cpu, response.cgroup_stats.cpu_stats
    u, t = sent.cpu_usage, sent.throttling_data
    assert cpu.usage_usec == u.total_usage // 1000
    assert cpu.user_usec == u.usage_in_usermode // 1000
    assert cpu.system_usec == u.usage_in_kernelmode // 1000
    assert (cpu.nr_periods, cpu.nr_throttled) == (t.periods, t.throttled_periods)
    assert cpu.throttled_usec == t.throttled_time // 1000


@pytest.mark.parametrize("guest", [example_v1(), example_v2()], ids=["v1", "v2"])
def test_v2_io_one_entry_per_device(guest: Guest) -> None:
    """v2 data: rbytes/wbytes/rios/wios from read/write/rios/wios; v1 data: Read and Write of the
    bytes and serviced files."""
    response = full_response(guest)
    blkio = response.cgroup_stats.blkio_stats
    want: dict[tuple[int, int], dict[str, int]] = {}
    if guest.version == "v2":
        names = {"read": "rbytes", "write": "wbytes", "rios": "rios", "wios": "wios"}
        for e in blkio.io_service_bytes_recursive:
            if e.op in names:
                want.setdefault((e.major, e.minor), {})[names[e.op]] = e.value
    else:
        for entries, (r, w) in (
            (blkio.io_service_bytes_recursive, ("rbytes", "wbytes")),
            (blkio.io_serviced_recursive, ("rios", "wios")),
        ):
            for e in entries:
                if e.op in ("read", "write"):
                    want.setdefault((e.major, e.minor), {})[r if e.op == "read" else w] = e.value
    io = _v2(response).io.usage
    assert len(io) == len(DEVICES)
    assert {
        (d.major, d.minor): {k: getattr(d, k) for k in ("rbytes", "wbytes", "rios", "wios")} for d in io
    } == want


@pytest.mark.parametrize("guest", [example_v1(), example_v2()], ids=["v1", "v2"])
def test_v2_pids_hugetlb_network(guest: Guest) -> None:
    response = full_response(guest)
    m, cg = _v2(response), response.cgroup_stats
    assert (m.pids.current, m.pids.limit) == (cg.pids_stats.current, U64_MAX)  # kata's 0 = "max"
    assert {h.pagesize: (h.current, h.failcnt, h.max) for h in m.hugetlb} == {
        size: (h.usage, h.failcnt, 0) for size, h in cg.hugetlb_stats.items()
    }
    assert [n.SerializeToString() for n in m.network] == [
        n.SerializeToString() for n in response.network_stats
    ]


def test_finite_pids_limit_is_kept_in_both_formats() -> None:
    response = full_response(example_v2())
    response.cgroup_stats.pids_stats.limit = 500
    assert _v1(response).pids.limit == _v2(response).pids.limit == 500


# ---------------------------------------------------------------------------------------------- kata-agent


def test_kata_agent_v2_reply_is_reconstructed_from_the_stats_map() -> None:
    guest = example_v2()
    ours, kata = agent_response(guest), kata_agent_v2(agent_response(guest))
    for response in (ours, kata):
        v1m = _v1(response)
        assert v1m.memory.cache == v1m.memory.total_cache == guest.stats["file"]
        assert v1m.memory.kernel.usage == guest.stats["kernel"]
        assert v1m.memory.kernel_tcp.usage == guest.stats["sock"]
    assert not record_from_agent(ours).kata_v2_gaps
    assert record_from_agent(kata).kata_v2_gaps


def test_kernel_before_5_19_is_the_sum_of_its_parts() -> None:
    guest = example_v2()
    stats = {k: v for k, v in guest.stats.items() if k != "kernel"}
    parts = ("kernel_stack", "pagetables", "percpu", "vmalloc", "slab_reclaimable", "slab_unreclaimable")
    response = kata_agent_v2(agent_response(Guest("v2", stats, guest.usage, guest.limit)))
    assert _v1(response).memory.kernel.usage == sum(stats[k] for k in parts)


def test_what_a_kata_agent_v2_reply_cannot_tell_is_sent_as_unknown() -> None:
    """failcnt: unknown (no memory_events, v1 failcnt 0); swap limit 0 and throttled time: 0."""
    guest = example_v2()
    response = kata_agent_v2(full_response(guest))
    record = record_from_agent(response)
    assert record.memory is not None
    assert record.memory.swap is not None
    assert record.cpu is not None
    assert record.cpu.throttling is not None
    assert (record.memory.usage.failcnt, record.memory.swap.limit, record.cpu.throttling.throttled_ns) == (
        None,
        None,
        None,
    )
    m2 = _v2(response)
    assert not m2.HasField("memory_events")
    assert (m2.memory.swap_limit, m2.cpu.throttled_usec) == (0, 0)
    assert (_v1(response).memory.usage.failcnt, _v1(response).memory.swap.limit) == (0, 0)


def test_kata_agent_v2_finite_swap_limit_is_kept() -> None:
    guest = example_v2()
    finite = Guest("v2", guest.stats, guest.usage, guest.limit, swap=PAGE, swap_limit=1 << 28)
    assert _v2(kata_agent_v2(agent_response(finite))).memory.swap_limit == 1 << 28


# ---------------------------------------------------------------------------------------------- API


def test_record_working_set_follows_the_cri_rule() -> None:
    for guest in (example_v1(), example_v2()):
        record = record_from_agent(agent_response(guest))
        assert record.memory is not None
        assert record.memory.working_set == expected_working_set(guest.usage, guest.inactive_file)
        assert to_metrics(record, "v2") == translate(agent_response(guest), "v2")


def test_missing_controllers_stay_unset() -> None:
    empty = agent_pb2.StatsContainerResponse()
    for output in ("v1", "v2"):
        metrics = translate(empty, output)
        assert metrics.ByteSize() == 0
        assert cri.cri_memory(metrics) is None


def test_translate_leaves_the_reply_untouched() -> None:
    response = full_response(example_v1())
    before = response.SerializeToString(deterministic=True)
    translate(response, "v1")
    translate(response, "v2")
    assert response.SerializeToString(deterministic=True) == before


@pytest.mark.parametrize("output", ["", "auto", "V1", "v3"])
def test_translate_refuses_unknown_formats(output: str) -> None:
    with pytest.raises(ValueError, match="output format"):
        translate(agent_response(example_v1()), output)


# ------------------------------------------------------------------------------------------ resolve_format


def test_resolve_format_explicit() -> None:
    assert resolve_format("v1", "/nonexistent") == "v1"
    assert resolve_format("v2", "/nonexistent") == "v2"
    with pytest.raises(ValueError, match="auto, v1, v2"):
        resolve_format("cgroup2")


def test_resolve_format_auto_by_the_hosts_cgroup_mode(tmp_path: Path) -> None:
    unified, hybrid, legacy = tmp_path / "unified", tmp_path / "hybrid", tmp_path / "legacy"
    for d in (unified, hybrid / "unified", legacy / "memory"):
        d.mkdir(parents=True)
    (unified / "cgroup.controllers").write_text("cpu memory io pids\n")
    (hybrid / "unified" / "cgroup.controllers").write_text("\n")
    assert resolve_format("auto", str(unified)) == "v2"
    assert resolve_format("auto", str(hybrid)) == "v1"  # cgroup2 only under unified/: v1 for containerd
    assert resolve_format("auto", str(legacy)) == "v1"


def test_resolve_format_auto_on_this_machine() -> None:
    """Matches the filesystem type mounted at /sys/fs/cgroup (cgroup2 = v2), read from /proc/self/mounts."""
    fstype = None
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == "/sys/fs/cgroup":
                fstype = fields[2]
    if fstype is None or not os.path.isdir("/sys/fs/cgroup"):
        pytest.skip("no cgroup filesystem at /sys/fs/cgroup")
    assert resolve_format("auto") == ("v2" if fstype == "cgroup2" else "v1")


def test_the_translation_core_does_not_load_the_guest_readers_io() -> None:
    """translate shares the agent's names (guest_agent.names), not its reader, which opens cgroup files."""
    probe = "import sys, shimstats.translate; print(sorted(m for m in sys.modules if m.startswith('guest_')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "guest_agent.names" in loaded
    assert "guest_agent.reader" not in loaded

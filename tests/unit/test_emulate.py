"""Regression tests for every shim defect that shows in the Metrics (docs/spec/mapping.md §3):
the emulation of the Kata shim shows it, with the number the defect's rule gives, and translate() does not.

Inputs are the example guests and every real fixture (tests/unit/test_translate_builders.py), replies from
our agent and, for v2 guests, from a real kata-agent. Each test says the defect's rule next to the right one.
The last tests check the other side of "faithful": what the shims get right, the emulations get right too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats._proto.kata import agent_pb2
from shimstats.emulate import kata_go, kata_rs
from shimstats.translate import resolve_format, translate
from tests.unit.test_translate_builders import (
    DEVICES,
    Case,
    Guest,
    all_cases,
    example_v1,
    example_v2,
    expected_working_set,
    full_response,
)

CASES = all_cases()


def cases(version: str, where: Callable[[Case], bool] = lambda c: True) -> list[Case]:
    """The inputs of one guest version on which a defect can show; never none."""
    chosen = [c for c in CASES if c.guest.version == version and where(c)]
    assert chosen, f"no {version} input shows this defect"
    return chosen


def name(case: Case) -> str:
    return case.name


def _cri(metrics: cri.Metrics) -> cri.CriMemory:
    got = cri.cri_memory(cri.decode_metrics(cri.encode_metrics(metrics)))
    assert got is not None
    return got


def _go_v1(response: agent_pb2.StatsContainerResponse) -> v1.Metrics:
    m = kata_go.metrics(response, "v1")
    assert isinstance(m, v1.Metrics)
    return m


def _go_v2(response: agent_pb2.StatsContainerResponse) -> v2.Metrics:
    m = kata_go.metrics(response, "v2")
    assert isinstance(m, v2.Metrics)
    return m


def _ours_v1(response: agent_pb2.StatsContainerResponse) -> v1.Metrics:
    m = translate(response, "v1")
    assert isinstance(m, v1.Metrics)
    return m


def _ours_v2(response: agent_pb2.StatsContainerResponse) -> v2.Metrics:
    m = translate(response, "v2")
    assert isinstance(m, v2.Metrics)
    return m


# ---------------------------------------------------------------------------------------------- Go shim


@pytest.mark.parametrize("case", cases("v2", lambda c: c.guest.inactive_file > 0), ids=name)
def test_g1_go_shim_on_a_v1_host_counts_a_v2_guests_inactive_file(case: Case) -> None:
    """v1 output from v2 keys: no total_inactive_file, so working set = usage (defect) vs usage - inactive."""
    g = case.guest
    go, ours = _cri(_go_v1(case.response)), _cri(_ours_v1(case.response))
    assert go.working_set_bytes == g.usage
    assert ours.working_set_bytes == expected_working_set(g.usage, g.inactive_file)
    assert go.working_set_bytes - ours.working_set_bytes == min(g.inactive_file, g.usage)


@pytest.mark.parametrize("case", cases("v1", lambda c: c.guest.rss > 0), ids=name)
def test_g1_go_shim_on_a_v2_host_loses_a_v1_guests_anon(case: Case) -> None:
    """v2 output from v1 keys: no anon key (rss 0), page faults and inactive_file from the local keys."""
    g, stats = case.guest, case.guest.stats
    go, ours = _cri(_go_v2(case.response)), _cri(_ours_v2(case.response))
    assert (go.rss_bytes, go.page_faults) == (0, stats["pgfault"])
    assert go.working_set_bytes == expected_working_set(g.usage, stats["inactive_file"])
    assert (ours.rss_bytes, ours.page_faults) == (g.rss, g.pgfault)
    assert ours.working_set_bytes == expected_working_set(g.usage, g.inactive_file)


def test_g1_example_with_a_child_cgroup_shows_the_local_key_mistake() -> None:
    g = example_v1()
    go = _cri(_go_v2(full_response(g)))
    assert go.page_faults == g.stats["pgfault"] != g.pgfault  # local, not hierarchical
    assert go.working_set_bytes == g.usage - g.stats["inactive_file"] != g.usage - g.inactive_file


@pytest.mark.parametrize("guest", [example_v1(), example_v2()], ids=["v1", "v2"])
def test_g2_go_shim_v2_swaps_user_and_system(guest: Guest) -> None:
    response = full_response(guest)
    u = response.cgroup_stats.cpu_stats.cpu_usage
    go, ours = _go_v2(response).cpu, _ours_v2(response).cpu
    assert (go.user_usec, go.system_usec) == (u.usage_in_kernelmode // 1000, u.usage_in_usermode // 1000)
    assert (ours.user_usec, ours.system_usec) == (u.usage_in_usermode // 1000, u.usage_in_kernelmode // 1000)


def test_g3_go_shim_v2_merges_all_devices_into_one_entry() -> None:
    """One IOEntry: the last entry's major/minor, per op the last value seen (the last device's)."""
    response = full_response(example_v2())
    entries = response.cgroup_stats.blkio_stats.io_service_bytes_recursive
    last = {e.op: e.value for e in entries}
    go = _go_v2(response).io.usage
    assert len(go) == 1
    assert (go[0].major, go[0].minor) == (entries[-1].major, entries[-1].minor) == DEVICES[-1]
    assert (go[0].rbytes, go[0].wbytes, go[0].rios, go[0].wios) == (
        last["read"],
        last["write"],
        last["rios"],
        last["wios"],
    )
    ours = _ours_v2(response).io.usage
    assert [(e.major, e.minor) for e in ours] == list(DEVICES)


def test_g3_go_shim_v2_sends_a_zero_device_for_no_io() -> None:
    response = full_response(example_v2())
    response.cgroup_stats.blkio_stats.Clear()
    response.cgroup_stats.blkio_stats.SetInParent()
    go = _go_v2(response).io.usage
    assert [e.ByteSize() for e in go] == [0]
    assert len(_ours_v2(response).io.usage) == 0


def test_g4_go_shim_v2_drops_network_events_peaks_and_hugetlb_failcnt() -> None:
    guest = example_v2()
    response = full_response(guest)
    response.cgroup_stats.memory_stats.swap_usage.max_usage = 99 * 4096
    cg = response.cgroup_stats
    go, ours = _go_v2(response), _ours_v2(response)
    assert (len(go.network), go.HasField("memory_events"), go.memory.max_usage, go.memory.swap_max_usage) == (
        0,
        False,
        0,
        0,
    )
    assert {h.pagesize: (h.failcnt, h.max) for h in go.hugetlb} == {
        size: (0, h.max_usage)
        for size, h in cg.hugetlb_stats.items()  # the peak lands in the v2 limit field
    }
    assert len(ours.network) == len(response.network_stats) == 2
    assert (ours.memory_events.max, ours.memory.max_usage) == (guest.failcnt, guest.peak)
    assert ours.memory.swap_max_usage == 99 * 4096
    assert {h.pagesize: h.failcnt for h in ours.hugetlb} == {
        s: h.failcnt for s, h in cg.hugetlb_stats.items()
    }


@pytest.mark.parametrize("case", cases("v1", lambda c: c.guest.rss > 0 and c.guest.pgfault > 0), ids=name)
def test_g5_go_shim_v1_never_sets_the_total_fields_cri_and_ctr_read(case: Case) -> None:
    g = case.guest
    go_m, ours_m = _go_v1(case.response), _ours_v1(case.response)
    go, ours = _cri(go_m), _cri(ours_m)
    assert (go.rss_bytes, go.page_faults, go.major_page_faults, go_m.memory.total_cache) == (0, 0, 0, 0)
    assert (ours.rss_bytes, ours.page_faults, ours.major_page_faults) == (g.rss, g.pgfault, g.pgmajfault)
    assert ours_m.memory.total_cache == g.cache


def test_g6_go_shim_v2_reads_only_the_pre_5_9_workingset_keys() -> None:
    guest = example_v2()  # 5.9+ names
    response = full_response(guest)
    go, ours = _go_v2(response).memory, _ours_v2(response).memory
    split = ("workingset_refault_file", "workingset_refault_anon", "workingset_activate_file")
    assert [getattr(go, k) for k in split] == [0, 0, 0]
    assert go.workingset_refault == go.workingset_activate == 0
    assert [getattr(ours, k) for k in split] == [guest.stats[k] for k in split]


def test_g6_go_shim_v2_would_take_usage_from_a_memory_stat_key() -> None:
    """The lookups of "usage" etc. are dead code on real kernels; the emulation keeps their effect."""
    response = full_response(example_v2())
    response.cgroup_stats.memory_stats.stats["usage"] = 1
    assert _go_v2(response).memory.usage == 1
    assert _ours_v2(response).memory.usage == response.cgroup_stats.memory_stats.usage.usage


def test_g7_go_shim_v1_loses_io_queued_in_the_json_hop() -> None:
    response = full_response(example_v1())
    queued = response.cgroup_stats.blkio_stats.io_queued_recursive
    assert len(_go_v1(response).blkio.io_queued_recursive) == 0
    assert [e.value for e in _ours_v1(response).blkio.io_queued_recursive] == [e.value for e in queued] != []


def test_g8_go_shim_v1_drops_network_and_has_no_kernel_tcp() -> None:
    response = full_response(example_v2())
    go, ours = _go_v1(response), _ours_v1(response)
    assert len(go.network) == 0
    assert go.memory.HasField("kernel_tcp")
    assert go.memory.kernel_tcp.ByteSize() == 0
    assert [n.name for n in ours.network] == [n.name for n in response.network_stats]
    assert ours.memory.kernel_tcp.usage == example_v2().stats["sock"]


# ---------------------------------------------------------------------------------------------- runtime-rs


def test_r1_runtime_rs_sends_v1_on_a_v2_host(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    output = resolve_format("auto", str(tmp_path))
    for case in CASES:
        assert cri.encode_metrics(kata_rs.metrics(case.response)).type_url == cri.V1_TYPE_URL
        assert cri.encode_metrics(translate(case.response, output)).type_url == cri.V2_TYPE_URL


@pytest.mark.parametrize("case", cases("v2", lambda c: c.guest.inactive_file > 0), ids=name)
def test_r1_runtime_rs_counts_a_v2_guests_inactive_file(case: Case) -> None:
    g = case.guest
    rs = _cri(kata_rs.metrics(case.response))
    assert (rs.working_set_bytes, rs.rss_bytes, rs.page_faults) == (g.usage, 0, 0)
    for output in ("v1", "v2"):
        ours = _cri(translate(case.response, output))
        assert ours.working_set_bytes == expected_working_set(g.usage, g.inactive_file)
        assert (ours.rss_bytes, ours.page_faults) == (g.rss, g.pgfault)


@pytest.mark.parametrize("case", cases("v2", lambda c: c.agent == "kata" and c.guest.cache > 0), ids=name)
def test_r1_runtime_rs_cache_is_kata_agents_zero_on_v2(case: Case) -> None:
    assert kata_rs.metrics(case.response).memory.cache == 0
    assert _ours_v1(case.response).memory.cache == case.guest.stats["file"]


MISSPELLED = {
    "pg_fault": "pgfault",
    "pg_maj_fault": "pgmajfault",
    "pg_pg_in": "pgpgin",
    "pg_pg_out": "pgpgout",
    "total_pg_fault": "total_pgfault",
    "total_pg_maj_fault": "total_pgmajfault",
    "total_pg_pg_in": "total_pgpgin",
    "total_pg_pg_out": "total_pgpgout",
    "hierarchical_swap_limit": "hierarchical_memsw_limit",
}
"""v1 proto field runtime-rs looks up by its own name → the kernel key that should have been used."""


@pytest.mark.parametrize("case", cases("v1", lambda c: c.guest.pgfault > 0), ids=name)
def test_r2_runtime_rs_misspelled_keys_leave_counters_at_zero(case: Case) -> None:
    stats = case.guest.stats
    rs_m, ours_m = kata_rs.metrics(case.response), _ours_v1(case.response)
    rs, ours = _cri(rs_m), _cri(ours_m)
    assert (rs.page_faults, rs.major_page_faults) == (0, 0)
    assert (ours.page_faults, ours.major_page_faults) == (stats["total_pgfault"], stats["total_pgmajfault"])
    for field, key in MISSPELLED.items():
        assert getattr(rs_m.memory, field) == 0, field
        assert getattr(ours_m.memory, field) == stats.get(key, 0), field


UNMAPPED = {
    "active_anon": "active_anon",
    "total_rss_huge": "total_rss_huge",
    "total_writeback": "total_writeback",
    "total_active_anon": "total_active_anon",
}


@pytest.mark.parametrize("case", cases("v1", lambda c: c.guest.stats["active_anon"] > 0), ids=name)
def test_r3_runtime_rs_never_maps_some_keys(case: Case) -> None:
    stats = case.guest.stats
    rs_m, ours_m = kata_rs.metrics(case.response), _ours_v1(case.response)
    for field, key in UNMAPPED.items():
        assert (getattr(rs_m.memory, field), getattr(ours_m.memory, field)) == (0, stats[key]), field
    assert not rs_m.memory.HasField("kernel_tcp")


def test_r3_example_has_every_unmapped_key_non_zero() -> None:
    stats = example_v1().stats
    assert all(stats[key] > 0 for key in UNMAPPED.values())


def test_r4_runtime_rs_copies_blkio_as_kata_spells_it() -> None:
    response = full_response(example_v1())
    rs, sent = kata_rs.metrics(response).blkio, response.cgroup_stats.blkio_stats
    for field in rs.DESCRIPTOR.fields:
        got = [(e.op, e.device, e.major, e.minor, e.value) for e in getattr(rs, field.name)]
        assert got == [(e.op, "", e.major, e.minor, e.value) for e in getattr(sent, field.name)]
    ours_ops = {e.op for e in _ours_v1(response).blkio.io_service_bytes_recursive}
    assert ours_ops == {"Read", "Write", "Sync", "Async", "Discard", "Total"}


def test_r4_runtime_rs_mixes_counts_into_bytes_for_a_v2_guest() -> None:
    response = full_response(example_v2())
    rs_ops = {e.op for e in kata_rs.metrics(response).blkio.io_service_bytes_recursive}
    ours_ops = {e.op for e in _ours_v1(response).blkio.io_service_bytes_recursive}
    assert {"rios", "wios", "dios"} <= rs_ops
    assert ours_ops == {"Read", "Write", "Discard", "Total"}


# ---------------------------------------------------------------------------------------------- no more


@pytest.mark.parametrize("case", cases("v1"), ids=name)
def test_shims_get_a_v1_guest_working_set_right_in_v1(case: Case) -> None:
    """Go (v1 host) copies total_inactive_file; runtime-rs maps it and total_rss by their own names."""
    g = case.guest
    want = expected_working_set(g.usage, g.inactive_file)
    go, rs = _cri(_go_v1(case.response)), _cri(kata_rs.metrics(case.response))
    assert go.working_set_bytes == rs.working_set_bytes == want
    assert rs.rss_bytes == g.rss


@pytest.mark.parametrize("case", cases("v2"), ids=name)
def test_go_shim_gets_a_v2_guest_right_on_a_v2_host(case: Case) -> None:
    """Since kata-containers#10280 the v2 path copies inactive_file, anon and the fault counters."""
    g = case.guest
    go = _cri(_go_v2(case.response))
    assert go.working_set_bytes == expected_working_set(g.usage, g.inactive_file)
    assert (go.rss_bytes, go.page_faults, go.major_page_faults) == (g.rss, g.pgfault, g.pgmajfault)
    assert _go_v2(case.response).memory.usage_limit == case.response.cgroup_stats.memory_stats.usage.limit


def test_go_shim_refuses_an_unknown_host_mode() -> None:
    with pytest.raises(ValueError, match="host cgroup version"):
        kata_go.metrics(agent_pb2.StatsContainerResponse(), "hybrid")

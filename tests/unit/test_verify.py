"""verify's judge and ground truth on real-kernel fixtures: good answers pass, each known defect is named.

Ground truth is read from the captured cgroupfs trees with the guest agent's reader; the expected figures
are recomputed here from the fixture's own files by containerd's CRI rules, independently of the module.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from shimstats import translate
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats.commands.verify import format_verification
from shimstats.compare import MAPPING_CPU_TOLERANCE_NS, as_result
from shimstats.emulate import kata_go
from shimstats.ground_truth import CgroupSource, GroundTruth, NoGroundTruth, locate
from shimstats.verify import CPU_TOLERANCE_NS, Check, judge
from tests.integration.harness import Fixture, fixtures

CONTAINERS = [fx for fx in fixtures() if not fx.is_root]
V2_INACTIVE = next(fx for fx in CONTAINERS if fx.name == "v2-6.1.0-56-amd64-container-inactive-file")
V1_PAGECACHE = next(fx for fx in CONTAINERS if fx.name == "v1-6.18.44-fc-v669-container-pagecache")


def read_truth(fx: Fixture) -> GroundTruth:
    """Ground truth for a fixture's container, read like --cgroup reads a live one."""

    async def read() -> GroundTruth:
        source = CgroupSource(str(fx.memory_dir), meminfo=str(fx.path / "meminfo"))
        try:
            return await source.read()
        finally:
            await source.close()

    return asyncio.run(read())


@pytest.mark.parametrize("fx", CONTAINERS, ids=lambda fx: fx.name)
def test_expected_figures_are_cri_rules_on_the_kernel_files(fx: Fixture) -> None:
    stat = fx.keyed("memory", "memory.stat")
    if fx.guest_version == 1:
        usage = int(fx.file("memory", "memory.usage_in_bytes"))
        inactive, rss, faults = stat["total_inactive_file"], stat["total_rss"], stat["total_pgfault"]
    else:
        usage = int(fx.file("memory", "memory.current"))
        inactive, rss, faults = stat["inactive_file"], stat["anon"], stat["pgfault"]
    truth = read_truth(fx)
    assert truth.version == fx.guest_version
    assert truth.figures.usage_bytes == usage
    assert truth.figures.working_set_bytes == max(usage - inactive, 0)
    assert truth.figures.rss_bytes == rss
    assert truth.figures.page_faults == faults


@pytest.mark.parametrize("output", ["v1", "v2"])
@pytest.mark.parametrize("fx", CONTAINERS, ids=lambda fx: fx.name)
def test_our_translation_verifies_on_every_fixture(fx: Fixture, output: str) -> None:
    truth = read_truth(fx)
    result = as_result(fx.request_id, translate.translate(truth.response, output))
    verdict = judge(result, truth, truth, tolerance=0, cpu_tolerance=MAPPING_CPU_TOLERANCE_NS)
    assert verdict.ok, [(c.figure, c.cause) for c in verdict.failures]


def test_kata_go_on_a_v1_host_with_a_v2_guest_fails_naming_inactive_file() -> None:
    truth = read_truth(V2_INACTIVE)
    result = as_result(V2_INACTIVE.request_id, kata_go.metrics(truth.response, "v1"))
    verdict = judge(result, truth, truth, tolerance=0)
    failed = {c.figure: c for c in verdict.failures}
    ws = failed["working_set_bytes"]
    assert ws.reported == truth.figures.usage_bytes  # the Go shim's v1 output: working set = usage
    assert ws.difference == truth.figures.usage_bytes - truth.figures.working_set_bytes
    assert ws.cause.startswith("inactive_file not subtracted: reported working set equals usage")
    assert "total_inactive_file" in ws.cause
    assert "total_rss not set" in failed["rss_bytes"].cause
    assert "total_pg_fault not set" in failed["page_faults"].cause
    assert "inactive_file not subtracted" in format_verification(verdict, "unix:///x")


def test_swapped_user_and_system_time_is_named() -> None:
    truth = read_truth(V2_INACTIVE)
    assert truth.figures.cpu_user_ns != truth.figures.cpu_system_ns  # else a swap would not show
    result = as_result(V2_INACTIVE.request_id, kata_go.metrics(truth.response, "v2"))
    verdict = judge(result, truth, truth, tolerance=0, cpu_tolerance=MAPPING_CPU_TOLERANCE_NS)
    failed = {c.figure: c.cause for c in verdict.failures}
    assert set(failed) == {"cpu_user_ns", "cpu_system_ns"}
    assert all(cause.startswith("user/system swapped") for cause in failed.values())


def test_cache_counted_as_rss_is_named() -> None:
    truth = read_truth(V1_PAGECACHE)
    metrics = translate.translate(truth.response, "v1")
    assert isinstance(metrics, v1.Metrics)
    metrics.memory.total_rss += metrics.memory.total_cache  # the defect: page cache reported as rss
    verdict = judge(as_result(V1_PAGECACHE.request_id, metrics), truth, truth, tolerance=0)
    assert [c.figure for c in verdict.failures] == ["rss_bytes"]
    assert verdict.failures[0].cause.startswith("cache counted as rss")


def test_an_answer_without_memory_fails_every_memory_figure() -> None:
    truth = read_truth(V1_PAGECACHE)
    verdict = judge(as_result("x", v1.Metrics()), truth, truth, tolerance=0)
    memory_checks = [c for c in verdict.checks if not c.figure.startswith("cpu_")]
    assert memory_checks
    assert all(
        not c.ok and c.reported is None and c.cause == "the shim sent no memory block" for c in memory_checks
    )


@pytest.mark.parametrize(
    ("low", "high", "reported", "tolerance", "difference", "ok"),
    [
        (100, 200, 150, 0, 0, True),  # inside the bracket
        (100, 200, 90, 10, -10, True),  # below by exactly the tolerance
        (100, 200, 89, 10, -11, False),
        (100, 200, 211, 10, 11, False),  # above by one more than the tolerance
    ],
)
def test_check_measures_from_the_bracket(
    low: int, high: int, reported: int, tolerance: int, difference: int, ok: bool
) -> None:
    check = Check("usage_bytes", low, high, reported, tolerance)
    assert check.difference == difference
    assert check.ok is ok


def test_counters_moving_during_the_call_pass_inside_the_bracket() -> None:
    before = read_truth(V1_PAGECACHE)
    after_figures = dataclasses.replace(before.figures, page_faults=before.figures.page_faults + 7)
    after = GroundTruth(before.source, before.version, before.response, after_figures)
    metrics = translate.translate(before.response, "v1")
    assert isinstance(metrics, v1.Metrics)
    metrics.memory.total_pg_fault += 3  # the shim read between our two readings
    verdict = judge(as_result("x", metrics), before, after, tolerance=0, cpu_tolerance=CPU_TOLERANCE_NS)
    assert verdict.ok, [(c.figure, c.cause) for c in verdict.failures]


@pytest.mark.parametrize("fx", CONTAINERS, ids=lambda fx: fx.name)
def test_locate_finds_the_root_and_the_cgroup_path(fx: Fixture) -> None:
    root, path = locate(str(fx.memory_dir))
    assert Path(root) == fx.path / "cgroup"
    assert path == fx.meta["container_path"]


def test_locate_refuses_a_directory_that_is_no_cgroup(tmp_path: Path) -> None:
    with pytest.raises(NoGroundTruth, match="not a cgroup"):
        locate(str(tmp_path))
    with pytest.raises(NoGroundTruth, match="does not exist"):
        locate(str(tmp_path / "missing"))

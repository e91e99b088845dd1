"""guest-test's figures beyond CRI's, on real captures: the guest-test fixtures and the older qemu ones.

Every expectation is derived from a fixture's own files by the rule the test names; the defects are made
by changing one field of our own translation the way a real shim gets it wrong.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from shimstats import translate
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats.guest_test import checks
from shimstats.guest_test.evaluate import capture_truth
from shimstats.guest_test.phases import Phase
from tests.unit.guest_test_captures import FIXTURES, GUEST_TEST, container_fixtures, ids


def cgroup_path(fixture: Path) -> str:
    path: str = json.loads((fixture / "meta.json").read_text())["container_path"]
    return path


def test_guest_test_fixtures_are_there() -> None:
    assert {p.name for _, p in GUEST_TEST} >= {
        "pagecache",
        "anon-thp",
        "shmem",
        "pressure",
        "oom",
        "after-kill",
    }


@pytest.mark.parametrize(("fixture", "phase"), GUEST_TEST, ids=ids)
def test_each_capture_shows_what_its_phase_is_for(fixture: Path, phase: Phase) -> None:
    raw = checks.RawCgroup.read(fixture, phase.cgroup_path)
    assert [e.text for e in phase.effects if not e.holds(raw)] == []


@pytest.mark.parametrize("fixture", container_fixtures(), ids=lambda d: d.name)
def test_our_translation_passes_every_figure(fixture: Path) -> None:
    """The oracle (the cgroup's files) and our translation of the agent's reading agree on real kernels."""
    path = cgroup_path(fixture)
    raw = checks.RawCgroup.read(fixture, path)
    response = asyncio.run(capture_truth(fixture, path)).response
    for fmt in ("v1", "v2"):
        found = checks.check(translate.translate(response, fmt), fmt, raw, raw)
        assert [f.figure for f in found if not f.ok] == [], fmt
        assert {"limit", "limit hits"} <= {f.figure for f in found}


def pressure() -> tuple[Path, str]:
    fixture = next(d for d, p in GUEST_TEST if p.name == "pressure" and d.name.split("-")[-2] == "v2")
    return fixture, "/guest-test"


def test_v2_raw_figures_follow_the_files() -> None:
    fixture, path = pressure()
    d = fixture / "cgroup" / path.strip("/")
    raw = checks.RawCgroup.read(fixture, path)
    assert raw.version == 2
    assert raw.limit == int((d / "memory.max").read_text())
    events = dict(line.split() for line in (d / "memory.events").read_text().splitlines())
    assert raw.limit_hits == int(events["max"]) > 0
    assert raw.swap == int((d / "memory.swap.current").read_text()) > 0
    io_lines = (d / "io.stat").read_text().split("\n")
    assert set(raw.io) == {line.split()[0] for line in io_lines if line}
    assert len(raw.io) >= 2, "pressure swaps: the data disk and the swap disk both show"


def test_v1_raw_figures_follow_the_files() -> None:
    fixture = FIXTURES / "v1-6.1.0-56-amd64-qemu-container-anon"
    path = cgroup_path(fixture)
    m = fixture / "cgroup" / "memory" / path.strip("/")
    raw = checks.RawCgroup.read(fixture, path)
    assert raw.version == 1
    usage = int((m / "memory.usage_in_bytes").read_text())
    assert raw.swap == int((m / "memory.memsw.usage_in_bytes").read_text()) - usage
    assert raw.limit == int((m / "memory.limit_in_bytes").read_text())
    assert raw.limit_hits == int((m / "memory.failcnt").read_text())
    expected = raw.expected("v1")
    assert expected["memory+swap"] == usage + (raw.swap or 0)
    assert "swap" not in expected
    assert raw.expected("v2")["swap"] == raw.swap


def ours(fixture: Path, path: str, fmt: str) -> v1.Metrics | v2.Metrics:
    response = asyncio.run(capture_truth(fixture, path)).response
    metrics = translate.translate(response, fmt)
    assert isinstance(metrics, (v1.Metrics, v2.Metrics))
    return metrics


def failed(metrics: v1.Metrics | v2.Metrics, fmt: str, fixture: Path, path: str) -> dict[str, str]:
    raw = checks.RawCgroup.read(fixture, path)
    return {f.figure: f.why for f in checks.check(metrics, fmt, raw, raw) if not f.ok}


def test_swap_only_in_a_v1_swap_entry_is_caught() -> None:
    """v1 Metrics carry memory+swap (memsw) in memory.swap; a shim that sends swap alone is off by usage."""
    fixture, path = pressure()
    metrics = ours(fixture, path, "v1")
    assert isinstance(metrics, v1.Metrics)
    metrics.memory.swap.usage -= metrics.memory.usage.usage
    assert list(failed(metrics, "v1", fixture, path)) == ["memory+swap"]


def test_devices_merged_into_one_entry_are_caught() -> None:
    """One IOEntry for all devices (a Kata Go v2 defect): the second device is not reported."""
    fixture, path = pressure()
    metrics = ours(fixture, path, "v2")
    assert isinstance(metrics, v2.Metrics)
    first, *rest = metrics.io.usage
    for entry in rest:
        first.rbytes += entry.rbytes
        first.wbytes += entry.wbytes
        first.rios += entry.rios
        first.wios += entry.wios
    del metrics.io.usage[1:]
    problems = failed(metrics, "v2", fixture, path)
    merged = {f"io {e.major}:{e.minor}" for e in rest}
    assert problems
    assert {" ".join(figure.split()[:2]) for figure in problems} == {
        f"io {first.major}:{first.minor}"
    } | merged


def test_limit_hits_left_out_and_an_unlimited_pid_limit_sent_as_zero_are_caught() -> None:
    fixture, path = pressure()
    metrics = ours(fixture, path, "v2")
    assert isinstance(metrics, v2.Metrics)
    metrics.ClearField("memory_events")
    metrics.pids.limit = 0
    assert failed(metrics, "v2", fixture, path) == {
        "limit hits": "not reported",
        "pids limit": "reported 0, the guest's files say max",
    }


def test_unlimited_matches_only_unlimited() -> None:
    assert checks.FigureCheck("limit", checks.UNLIMITED, checks.UNLIMITED, checks.UNLIMITED, 0).ok
    assert not checks.FigureCheck("limit", checks.UNLIMITED, checks.UNLIMITED, 1 << 30, 1 << 40).ok
    assert not checks.FigureCheck("limit", 1 << 30, 1 << 30, checks.UNLIMITED, 1 << 40).ok
    assert checks.normalise_limit(9223372036854771712) == checks.UNLIMITED  # v1's "no limit"
    assert checks.show("limit", checks.UNLIMITED) == "max"


def test_a_value_inside_the_bracket_or_the_tolerance_passes() -> None:
    assert checks.FigureCheck("swap", 100, 200, 150, 0).ok
    assert checks.FigureCheck("swap", 100, 200, 210, 10).ok
    assert not checks.FigureCheck("swap", 100, 200, 211, 10).ok
    assert checks.FigureCheck("swap", 100, 200, None, 10).why == "not reported"

"""guest-test's report and saved fixtures, built from real captures."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from shimstats.guest_test import report, session
from shimstats.guest_test.evaluate import PhaseResult, evaluate
from shimstats.guest_test.image import Kernel
from tests.unit.guest_test_captures import GUEST_TEST, our_answers

KERNEL = Kernel(
    Path("/k/vmlinuz"), Path("/k/initrd"), "6.1.0-56-amd64", "linux-image-6.1.0-56-amd64 6.1.192-2", ()
)


def results() -> list[PhaseResult]:
    return [asyncio.run(evaluate(p, d, d, our_answers(d, p))) for d, p in GUEST_TEST if "-v2-" in d.name]


def mode_run(phases: list[PhaseResult], error: str = "") -> session.ModeRun:
    return session.ModeRun(
        mode="v2",
        kernel=KERNEL,
        accel="TCG (...)",
        machine="qemu",
        phases_wanted=tuple(r.phase.name for r in phases),
        console=Path("/tmp/console-v2.log"),
        phases=phases,
        error=error,
    )


def test_a_run_where_every_phase_agrees() -> None:
    phases = results()
    run = mode_run(phases)
    assert run.ok
    text = report.format_report([run])
    for result in phases:
        assert f": {result.phase.name}: {result.phase.title}" in text
    assert text.count("verdict: ours agree with the guest's files") == len(phases)
    assert text.endswith("result: every phase agrees (exit 0)")
    data = json.loads(json.dumps(report.report_json([run])))
    assert data["ok"] is True
    assert [p["phase"] for p in data["runs"][0]["phases"]] == [r.phase.name for r in phases]


def test_the_table_marks_kata_differences_and_leaves_formats_blank_where_they_do_not_apply() -> None:
    pagecache = next(r for r in results() if r.phase.name == "pagecache")
    guest = report.guest_cells(pagecache)
    cells = {c.key: report.column_cells(c) for c in pagecache.columns}
    for key in ("ours_v1", "ours_v2"):
        assert cells[key]["working set"] == guest["working set"] + "  "
    # The Kata Go shim on a v1 host reports usage as the working set: the cell shows it, marked.
    assert cells["kata_go_v1_host"]["working set"] == guest["usage"] + " *"
    # swap is a v2 figure and memory+swap a v1 one: a column of the other format has no cell, not a mark.
    assert "swap" not in cells["ours_v1"]
    assert "memory+swap" not in cells["ours_v2"]
    table = report.phase_table(pagecache)
    swap_row = next(line for line in table.splitlines() if line.startswith("swap "))
    assert "*" not in swap_row, "every column that carries swap agrees on it here"


def test_a_run_that_failed_or_stopped_early_is_a_failure() -> None:
    phases = results()
    assert not mode_run(phases, error="the guest went away").ok
    short = mode_run(phases[:2])
    short.phases_wanted = tuple(r.phase.name for r in phases)
    assert not short.ok
    text = report.format_report([short])
    assert "phases not run: " in text
    assert text.endswith("result: FAILED (exit 1)")


def test_a_saved_fixture_replaces_the_old_one_under_its_own_name(tmp_path: Path) -> None:
    source, _ = GUEST_TEST[0]
    capture = tmp_path / "capture"
    shutil.copytree(source, capture, symlinks=True)
    fixtures = tmp_path / "fixtures"
    (fixtures / source.name).mkdir(parents=True)
    (fixtures / source.name / "stale").write_text("old")
    saved = session.save_fixture(capture, fixtures)
    assert saved == str(fixtures / source.name)
    assert sorted(p.name for p in (fixtures / source.name).iterdir()) == sorted(
        p.name for p in source.iterdir()
    )
    assert [p.name for p in fixtures.iterdir()] == [source.name]


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b"])
def test_a_capture_with_a_bad_name_is_not_saved(tmp_path: Path, name: str) -> None:
    (tmp_path / "capture").mkdir()
    (tmp_path / "capture" / "meta.json").write_text(json.dumps({"name": name}))
    with pytest.raises(session.GuestTestError, match="not a fixture name"):
        session.save_fixture(tmp_path / "capture", tmp_path / "fixtures")

"""compare's CRI column (``--cri``) on real-kernel fixtures: CRI's figures judged against the guest's."""

from __future__ import annotations

import dataclasses
import json

from shimstats.commands.compare import format_comparison
from shimstats.compare import CRI_FIGURES, CRI_LABEL, Comparison, cri_column
from tests.unit.test_verify import V1_PAGECACHE, read_truth


def test_cri_figures_equal_to_the_guests_pass_and_cpu_split_is_not_judged() -> None:
    truth = read_truth(V1_PAGECACHE)
    column = cri_column(truth.figures, truth, truth, tolerance=0)
    assert column.checks is not None
    assert [c.figure for c in column.checks] == list(CRI_FIGURES)
    assert "cpu_user_ns" not in CRI_FIGURES
    assert column.failures == ()
    assert column.to_json()["type_url"] == "CRI stats"


def test_a_working_set_with_the_inactive_cache_in_it_is_marked() -> None:
    truth = read_truth(V1_PAGECACHE)
    wrong = dataclasses.replace(truth.figures, working_set_bytes=truth.figures.usage_bytes)
    column = cri_column(wrong, truth, truth, tolerance=512 * 1024)
    [failure] = column.failures
    assert failure.figure == "working_set_bytes"
    assert "see the containerd column" in failure.cause
    table = format_comparison(Comparison("c1", truth, 512 * 1024, (column,)))
    assert f"* {CRI_LABEL}, working set: CRI's figure is not the guest's" in table


def test_no_memory_figures_fail_every_figure_with_the_kubelets_consequence() -> None:
    truth = read_truth(V1_PAGECACHE)
    column = cri_column(None, truth, truth, tolerance=512 * 1024)
    assert {c.figure for c in column.failures} == set(CRI_FIGURES)
    assert all("the kubelet then shows 0" in c.cause for c in column.failures)
    data = json.loads(json.dumps(column.to_json()))
    assert data["figures"] == dict.fromkeys(CRI_FIGURES)

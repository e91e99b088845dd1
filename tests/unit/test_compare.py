"""compare's computed columns on real-kernel fixtures, and how the table and the JSON show them."""

from __future__ import annotations

import json

import pytest

from shimstats import cri
from shimstats.commands.compare import format_comparison
from shimstats.compare import Column, Comparison, mapped_columns
from shimstats.table import render_right
from tests.integration.harness import Fixture
from tests.unit.fixture_truth import CONTAINERS, V1_PAGECACHE, V2_INACTIVE, read_truth

MAPPING_KEYS = ["ours_v1", "ours_v2", "kata_go_v1_host", "kata_go_v2_host", "kata_rs"]


def columns(fx: Fixture) -> dict[str, Column]:
    truth = read_truth(fx)
    return {c.key: c for c in mapped_columns(fx.request_id, truth)}


def reported(column: Column, figure: str) -> int | None:
    assert column.verification is not None
    return next(c.reported for c in column.verification.checks if c.figure == figure)


def failed(column: Column) -> set[str]:
    assert column.verification is not None
    return {c.figure for c in column.verification.failures}


@pytest.mark.parametrize("fx", CONTAINERS, ids=lambda fx: fx.name)
def test_ours_agrees_with_the_guest_in_both_formats(fx: Fixture) -> None:
    cols = columns(fx)
    assert list(cols) == MAPPING_KEYS
    assert failed(cols["ours_v1"]) == failed(cols["ours_v2"]) == set()
    assert cols["ours_v1"].verification is not None
    assert cols["ours_v2"].verification is not None
    assert cols["ours_v1"].verification.result.type_url == cri.V1_TYPE_URL
    assert cols["ours_v2"].verification.result.type_url == cri.V2_TYPE_URL


def test_the_kata_shims_on_a_v2_guest_with_large_inactive_file() -> None:
    truth = read_truth(V2_INACTIVE)
    cols = columns(V2_INACTIVE)
    usage, ws = truth.figures.usage_bytes, truth.figures.working_set_bytes
    assert usage - ws > 100 << 20  # the fixture's point: a large inactive_file
    # Go shim on a v1 host and runtime-rs: v1 Metrics without total_inactive_file, so working set = usage.
    for key in ("kata_go_v1_host", "kata_rs"):
        assert reported(cols[key], "working_set_bytes") == usage
        assert {"working_set_bytes", "rss_bytes", "page_faults"} <= failed(cols[key])
    # Go shim on a v2 host: the working set is right, user and system time are swapped.
    assert reported(cols["kata_go_v2_host"], "working_set_bytes") == ws
    assert failed(cols["kata_go_v2_host"]) == {"cpu_user_ns", "cpu_system_ns"}


def test_the_kata_shims_on_a_v1_guest_lose_rss_and_page_faults_only() -> None:
    cols = columns(V1_PAGECACHE)
    assert failed(cols["kata_go_v1_host"]) == {"rss_bytes", "page_faults"}
    assert failed(cols["kata_rs"]) == {"page_faults"}  # runtime-rs looks up "total_pg_fault"


def test_table_marks_every_difference_and_lists_its_cause() -> None:
    truth = read_truth(V2_INACTIVE)
    comparison = Comparison(V2_INACTIVE.request_id, truth, 0, mapped_columns(V2_INACTIVE.request_id, truth))
    text = format_comparison(comparison)
    marks = sum(line.count(" *") for line in text.splitlines() if not line.startswith("*"))
    notes = [line for line in text.splitlines() if line.startswith("* ")]
    differences = sum(len(failed(c)) for c in comparison.columns)
    assert marks == differences == len(notes)
    assert any("Kata Go, v1 host, working set: inactive_file not subtracted" in n for n in notes)
    data = json.loads(json.dumps(comparison.to_json()))
    by_key = {c["key"]: c for c in data["columns"]}
    assert by_key["kata_go_v1_host"]["figures"]["working_set_bytes"] == truth.figures.usage_bytes
    assert "working_set_bytes" in by_key["kata_go_v1_host"]["differs"]
    assert by_key["ours_v1"]["differs"] == {}
    assert data["guest"]["figures"]["working_set_bytes"] == truth.figures.working_set_bytes


def test_render_right_aligns_values_and_keeps_text_left() -> None:
    text = render_right(("NAME", "VALUE", "NOTE"), [("a", "1.0 MiB", "x"), ("bb", "10.0 MiB", "longer")], 1)
    lines = text.splitlines()
    assert lines[1].index("1.0 MiB") + len("1.0 MiB") == lines[2].index("10.0 MiB") + len("10.0 MiB")
    assert lines[1].endswith("  x")
    assert lines[2].endswith("  longer")

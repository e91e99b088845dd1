"""The v2 hugetlb read in one go (CgroupReader._hugetlb_v2_plain: cgroup.controllers and each page size's
rsvd.current and events in one read) and pids.current with pids.max in one go, against a reader that reads
them one by one under their own rules.

Trees are written in tmp_path in the kernel's spelling (tests.unit.test_guest_reader's helpers); the one go
is taken from a reader's second read on, once every file is open.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest_agent.files import ABSENT_FOR, FileCache
from guest_agent.layout import Layout
from guest_agent.parse import POSSESSIVE, greedy
from guest_agent.reader import _HUGETLB_V2_SIZES, _PLAIN_PIDS, CgroupReader
from guest_agent.record import CgroupHugetlb, CgroupPids
from tests.unit.test_guest_reader import read_outcome, v2_tree, write

SIZES = {
    "cgroup.controllers": "cpu io memory hugetlb pids",
    "hugetlb.2MB.current": 6 << 20,
    "hugetlb.2MB.rsvd.current": 8 << 20,
    "hugetlb.2MB.events": {"max": 5},
    "hugetlb.1GB.current": 0,
    "hugetlb.1GB.rsvd.current": 1 << 30,
    "hugetlb.1GB.events": {"max": 0},
}
ONE_GO = (
    "cgroup.controllers",
    *(f"hugetlb.{s}.{f}" for s in ("2MB", "1GB") for f in ("rsvd.current", "events")),
)
"""The files the one go reads."""
EXPECTED = {
    "2MB": CgroupHugetlb(usage=8 << 20, max_usage=0, failcnt=5),
    "1GB": CgroupHugetlb(usage=1 << 30, max_usage=0, failcnt=0),
}


def hugetlb_tree(root: Path) -> Layout:
    layout = v2_tree(root)
    write(root / "c1", SIZES)
    return layout


def counting_reader(layout: Layout, root: Path, trusted: bool) -> tuple[CgroupReader, list[int]]:
    """A reader whose one go's outcomes are counted: [taken, fell back]; ``trusted`` takes the tree as kernfs
    (no inode check), as on a mounted hierarchy."""
    files = FileCache(kernfs_devices=[os.stat(root).st_dev] if trusted else (), absent_for=ABSENT_FOR)
    reader = CgroupReader(layout, files=files)
    counts = [0, 0]
    one_go = reader._hugetlb_v2_plain

    def counted(*args: Any) -> Any:
        found = one_go(*args)
        counts[found is None] += 1
        return found

    reader._hugetlb_v2_plain = counted  # type: ignore[method-assign,assignment]
    return reader, counts


def read_twice(layout: Layout, root: Path, trusted: bool) -> tuple[CgroupReader, list[int]]:
    reader, counts = counting_reader(layout, root, trusted)
    assert reader.read("/c1").hugetlb == EXPECTED
    assert reader.read("/c1").hugetlb == EXPECTED
    assert counts[0] == 1  # taken on the second read
    return reader, counts


@pytest.mark.parametrize(
    ("name", "change", "trusted"),
    [(name, "garbled", trusted) for name in ONE_GO for trusted in (False, True)]
    + [(name, change, False) for name in ONE_GO for change in ("removed", "max", "empty")],
)
def test_v2_hugetlb_in_one_go_a_changed_file_costs_what_it_costs_alone(tmp_path, name, change, trusted):
    # Taken from the second read on; then one file garbled, spelled otherwise or removed: the read falls back
    # to each file's own rules, so the record and the read errors are those of a reader that never took it.
    layout = hugetlb_tree(tmp_path)
    reader, counts = read_twice(layout, tmp_path, trusted)
    path = tmp_path / "c1" / name
    original = path.read_bytes()
    if change == "removed":
        path.unlink()
    else:
        path.write_text({"garbled": "garbled line\n", "max": "max\n", "empty": ""}[change])
    fresh = CgroupReader(layout)
    got = read_outcome(reader, "/c1")
    assert got == read_outcome(fresh, "/c1")
    assert reader.errors.snapshot() == fresh.errors.snapshot()
    assert counts[0] == 1 or name == "cgroup.controllers"  # a garbled spelling that lists no hugetlb is {}
    if change != "removed":
        path.write_bytes(original)
        assert reader.read("/c1").hugetlb == EXPECTED


def test_v2_hugetlb_in_one_go_sees_the_controller_disabled_and_enabled_again(tmp_path):
    # cgroup.controllers is read on every Stats: hugetlb dropped from it is no hugetlb on the next read, and
    # listed again (with other controllers changed) it is read again; each change is what a fresh reader sees.
    layout = hugetlb_tree(tmp_path)
    reader, _ = read_twice(layout, tmp_path, trusted=True)
    controllers = tmp_path / "c1" / "cgroup.controllers"
    for spelling, expected in [
        ("cpu io memory pids\n", {}),
        ("hugetlb\n", EXPECTED),
        ("\n", {}),
        ("memory hugetlbfs\n", {}),
        ("memory hugetlb\n", EXPECTED),
    ]:
        controllers.write_text(spelling)
        assert reader.read("/c1").hugetlb == expected == CgroupReader(layout).read("/c1").hugetlb
    assert reader.errors.snapshot() == {}


def test_v2_hugetlb_in_one_go_sees_a_page_size_counter_change(tmp_path):
    # Values are never kept: each read takes the files' current values.
    layout = hugetlb_tree(tmp_path)
    reader, counts = read_twice(layout, tmp_path, trusted=True)
    write(tmp_path / "c1", {"hugetlb.1GB.rsvd.current": 2 << 30, "hugetlb.2MB.events": {"max": 6}})
    assert reader.read("/c1").hugetlb == {
        "2MB": CgroupHugetlb(usage=8 << 20, max_usage=0, failcnt=6),
        "1GB": CgroupHugetlb(usage=2 << 30, max_usage=0, failcnt=0),
    }
    assert counts[0] == 2


VALUE = st.integers(0, 2**64 - 1).map(str)
ODD = st.sampled_from(["max", "", "-1", "18446744073709551616", "1 2", "0x10", "max 1", "fail 1", "\u00e9"])
ONE_VALUE = st.one_of(VALUE, VALUE, ODD).map(lambda v: v + "\n")
EVENTS = st.one_of(
    VALUE.map(lambda v: f"max {v}\n"),
    VALUE.map(lambda v: f"max {v}\n"),
    st.tuples(ODD, VALUE).map(lambda t: f"max {t[0]}\n" if t[0] else f"max {t[1]}\nfail 0\n"),
    st.text(alphabet="max 0123\n", max_size=12),
)
CONTROLLERS = st.one_of(
    st.just("cpu io memory hugetlb pids\n"),
    st.lists(
        st.sampled_from(["cpu", "io", "memory", "hugetlb", "pids", "Hugetlb", "hugetlb\t", "\u00e9"])
    ).map(lambda words: " ".join(words) + "\n"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    controllers=CONTROLLERS,
    values=st.lists(st.tuples(ONE_VALUE, EVENTS), min_size=2, max_size=2),
    trusted=st.booleans(),
)
def test_v2_hugetlb_in_one_go_reads_what_the_files_give_alone(
    controllers: str, values: list[tuple[str, str]], trusted: bool
) -> None:
    # Any content of the five files, kernel-spelled or not, written between a reader's reads: what it reads,
    # in one go or not, is what a reader that reads them one by one reads, record and read errors.
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        layout = hugetlb_tree(root)
        reader, _ = read_twice(layout, root, trusted)
        (root / "c1" / "cgroup.controllers").write_bytes(controllers.encode())
        for size, (rsvd, events) in zip(("2MB", "1GB"), values):
            (root / "c1" / f"hugetlb.{size}.rsvd.current").write_bytes(rsvd.encode())
            (root / "c1" / f"hugetlb.{size}.events").write_bytes(events.encode())
        fresh = CgroupReader(layout)
        assert read_outcome(reader, "/c1") == read_outcome(fresh, "/c1")
        assert reader.errors.snapshot() == fresh.errors.snapshot()


PIDS = ("pids.current", "pids.max")


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize(
    ("name", "change"),
    [(name, change) for name in PIDS for change in ("garbled", "max", "empty", "removed", "negative")],
)
def test_pids_in_one_go_a_changed_file_costs_what_it_costs_alone(tmp_path, name, change, trusted):
    # Read in one go from the second read on; then one file changed between reads: the record and the read
    # errors are those of a reader that never took the one go (removed: only a captured tree's reader, which
    # checks each inode, sees it; kernfs removes a file only with its cgroup).
    layout = v2_tree(tmp_path)
    reader, _ = counting_reader(layout, tmp_path, trusted)
    assert reader.read("/c1").pids == CgroupPids(current=3, limit=100)
    path = tmp_path / "c1" / name
    if change == "removed":
        if trusted:
            return
        path.unlink()
    else:
        path.write_text({"garbled": "3 4\n", "max": "max\n", "empty": "", "negative": "-1\n"}[change])
    fresh = CgroupReader(layout)
    got = reader.read("/c1")
    assert got == fresh.read("/c1")
    assert reader.errors.snapshot() == fresh.errors.snapshot()
    if (name, change) == ("pids.current", "removed"):
        assert got.pids is None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(current=ONE_VALUE, limit=ONE_VALUE, trusted=st.booleans())
def test_pids_in_one_go_reads_what_the_files_give_alone(current: str, limit: str, trusted: bool) -> None:
    # Any content of the two files, kernel-spelled or not, written between a reader's reads.
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        layout = v2_tree(root)
        reader, _ = counting_reader(layout, root, trusted)
        reader.read("/c1")
        (root / "c1" / "pids.current").write_bytes(current.encode())
        (root / "c1" / "pids.max").write_bytes(limit.encode())
        fresh = CgroupReader(layout)
        assert read_outcome(reader, "/c1") == read_outcome(fresh, "/c1")
        assert reader.errors.snapshot() == fresh.errors.snapshot()


@pytest.mark.parametrize("pattern", [_HUGETLB_V2_SIZES, _PLAIN_PIDS], ids=["hugetlb", "pids"])
@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=40)
    | st.lists(st.sampled_from([b"1", b"\n", b"\0", b"max", b" ", b"x"])).map(b"".join)
)
def test_one_go_spellings_match_the_same_greedy(pattern: re.Pattern[bytes], data: bytes) -> None:
    # Python 3.9 and 3.10 compile the greedy form (compile_fast_path): it must match the same bytes.
    assert (pattern.fullmatch(data) is None) == (re.compile(greedy(pattern.pattern)).fullmatch(data) is None)
    assert POSSESSIVE or pattern.pattern == greedy(pattern.pattern)

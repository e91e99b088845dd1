"""memory.stat read by the spelling its last well-formed read had (parse.KeyedSpelling, _Dir._stat), against
parse_flat_keyed and against a reader that never kept a spelling.

A spelling keeps names only (the keys, in their order); every read takes the file's current values, and any
other text (a key added, removed, moved or repeated, a garbled line) goes through parse_flat_keyed as before.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest_agent.files import ABSENT_FOR, FileCache
from guest_agent.layout import Layout
from guest_agent.parse import CgroupFormatError, decode, greedy, keyed_spelling, parse_flat_keyed
from guest_agent.reader import CgroupReader
from tests.unit.test_guest_reader import CLK_TCK, V1_STAT, V2_STAT, read_outcome, v1_tree, v2_tree

KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.", min_size=1, max_size=12)
ODD_KEY = st.sampled_from(["Anon", "a-b", "a\tb", "a\rb", "[x]", "a+", "\x00"])
VALUE = st.integers(0, 2**64 - 1).map(str)
ODD_VALUE = st.sampled_from(
    ["", "-1", "18446744073709551616", "00000000000000000001", "1 2", "0x1", "max", "é"]
)


@st.composite
def stat_files(draw: st.DrawFn) -> tuple[tuple[str, ...], str]:
    """The keys of a well-formed file and a text: that spelling with new values, or with a mistake."""
    keys = tuple(draw(st.lists(st.one_of(KEY, KEY, KEY, ODD_KEY), min_size=1, max_size=8, unique=True)))
    lines = [[key, draw(VALUE)] for key in keys]
    change = draw(st.sampled_from(["none", "none", "value", "drop", "add", "swap", "repeat", "newline"]))
    at = draw(st.integers(0, len(lines) - 1))
    if change == "value":
        lines[at][1] = draw(ODD_VALUE)
    elif change == "drop":
        del lines[at]
    elif change == "add":
        lines.insert(at, [draw(KEY), draw(VALUE)])
    elif change == "swap":
        lines[0], lines[at] = lines[at], lines[0]
    elif change == "repeat":
        lines.insert(at, list(lines[at]))
    text = "".join(f"{key} {value}\n" for key, value in lines)
    return keys, text[:-1] if change == "newline" else text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stat_files())
def test_a_spelling_reads_what_parse_flat_keyed_reads_or_does_not_match(case: tuple[tuple[str, ...], str]):
    keys, text = case
    spelling = keyed_spelling(keys)
    data = text.encode("utf-8")
    found = spelling.parse(data)
    greedy_form = re.compile(greedy(spelling.pattern.pattern)).fullmatch(data)  # Python 3.9 and 3.10's
    assert (greedy_form is None) == (found is None)
    if found is not None:
        skipped: list[CgroupFormatError] = []
        assert found == parse_flat_keyed(decode(data, "f"), "f", skipped)
        assert list(found) == list(keys)
        assert skipped == []
    lines = text.split("\n")
    if lines.pop() == "" and [line.partition(" ")[0] for line in lines] == list(keys):
        values = [line.partition(" ")[2] for line in lines]
        if all(v.isascii() and v.isdigit() and len(v) <= 19 for v in values):
            assert found is not None  # the spelling with any values of at most 19 digits matches


def counted_stat_reader(layout: Layout, root: Path, trusted: bool) -> CgroupReader:
    files = FileCache(kernfs_devices=[os.stat(root).st_dev] if trusted else (), absent_for=ABSENT_FOR)
    return CgroupReader(layout, files=files, clk_tck=CLK_TCK)


CHANGES = {
    "value": lambda text: text.replace(" ", " 1", 1),
    "key added": lambda text: text + "zswapped 4096\n",
    "key removed": lambda text: text.split("\n", 1)[1],
    "keys moved": lambda text: "".join(sorted(text.splitlines(keepends=True))),
    "key repeated": lambda text: text + text.splitlines(keepends=True)[-1],
    "garbled line": lambda text: text.replace(" ", " x", 1),
    "needed key garbled": lambda text: text.replace("inactive_file ", "inactive_file x"),
    "needed key removed": lambda text: "".join(
        line
        for line in text.splitlines(keepends=True)
        if not line.startswith(("inactive_file ", "total_inactive"))
    ),
    "not ascii": lambda text: text.replace(" ", " \u00e9", 1),
    "empty": lambda text: "",
    "removed": None,
}


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("change", list(CHANGES))
def test_memory_stat_changed_between_reads_reads_as_a_fresh_reader_reads_it(
    tmp_path, version, trusted, change
):
    # The spelling is kept from the first read; then memory.stat changes: the record, or the error, and the
    # read errors are those of a reader that never kept one; restored, it reads as before.
    layout = v1_tree(tmp_path) if version == 1 else v2_tree(tmp_path)
    path = tmp_path / ("memory/c1" if version == 1 else "c1") / "memory.stat"
    reader = counted_stat_reader(layout, tmp_path, trusted)
    expected = reader.read("/c1")
    assert expected.memory is not None
    assert dict(expected.memory.stat) == (V1_STAT if version == 1 else V2_STAT)
    assert reader.read("/c1") == expected
    assert reader._where["/c1"].dirs["memory"].stat_spelling is not None  # the second read by its spelling
    original = path.read_bytes()
    rewrite = CHANGES[change]
    if rewrite is None:
        if trusted:  # kernfs removes a file only with its cgroup (tests of the cgroup gone cover that)
            return
        path.unlink()
    else:
        path.write_text(rewrite(original.decode()))
    fresh = CgroupReader(layout, clk_tck=CLK_TCK)
    got = read_outcome(reader, "/c1")
    assert got == read_outcome(fresh, "/c1")
    assert reader.errors.snapshot() == fresh.errors.snapshot()
    if change == "value":
        assert got != expected
    if rewrite is not None:  # (a removed file is taken as absent for ABSENT_FOR seconds)
        path.write_bytes(original)
        assert reader.read("/c1") == expected

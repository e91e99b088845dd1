"""guest_agent.resources: the parsers of settings files, where cpuset lives, and read_resources' edge cases.

The answer for whole captured trees, over a socket, is checked in tests/integration/test_resources_agent.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest_agent.files import FileCache
from guest_agent.layout import detect_layout
from guest_agent.parse import CgroupFormatError
from guest_agent.reader import CgroupGone
from guest_agent.resources import cpuset_hierarchy, parse_cpu_list, parse_setting, parse_value, read_resources
from shimstats._proto.shimstats.agent.v1 import resources_pb2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroupfs"


def _values(setting: resources_pb2.Setting) -> list[object]:
    return ["max" if v.WhichOneof("kind") == "max" else v.number for v in setting.values]


@pytest.mark.parametrize(
    ("text", "raw", "values"),
    [
        ("max\n", "max", ["max"]),
        ("-1\n", "-1", [-1]),  # v1 cpu.cfs_quota_us without a quota keeps its sign
        ("9223372036854771712\n", "9223372036854771712", [9223372036854771712]),
        ("max 100000\n", "max 100000", ["max", 100000]),
        ("50000 100000\n", "50000 100000", [50000, 100000]),
        ("0", "0", [0]),  # a final newline is not required
    ],
)
def test_parse_setting_values(text: str, raw: str, values: list[object]) -> None:
    setting = parse_setting("x", 2, text, "/cg/x")
    assert (setting.file, setting.cgroup_version, setting.raw, _values(setting)) == ("x", 2, raw, values)
    assert list(setting.cpus) == []


@pytest.mark.parametrize(
    "text", ["", "\n", "abc\n", "1 \n", " 1\n", "1  2\n", "1\n2\n", "+5\n", "0x10\n", "9223372036854775808\n"]
)
def test_parse_setting_rejects_garbled_text_naming_the_file(text: str) -> None:
    with pytest.raises(CgroupFormatError, match=r"^/cg/memory\.max:"):
        parse_setting("memory.max", 2, text, "/cg/memory.max")


def test_parse_value_limits() -> None:
    assert parse_value(str(-(2**63)), "f").number == -(2**63)
    assert parse_value(str(2**63 - 1), "f").number == 2**63 - 1
    assert parse_value("max", "f").max
    with pytest.raises(CgroupFormatError):
        parse_value("-", "f")


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("", []), ("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-1,4,6-7", [0, 1, 4, 6, 7]), ("2,1", [1, 2])],
)
def test_cpu_lists(text: str, cpus: list[int]) -> None:
    assert parse_cpu_list(text, "f") == cpus
    setting = parse_setting("cpuset.cpus.effective", 2, text + "\n", "f")
    assert (list(setting.cpus), setting.raw, list(setting.values)) == (cpus, text, [])


@pytest.mark.parametrize("text", ["3-1", "a", "0-", "-1", "0-8192", "0,,1-x"])
def test_cpu_lists_rejected(text: str) -> None:
    with pytest.raises(CgroupFormatError):
        parse_cpu_list(text, "f")


def test_cpuset_hierarchy(tmp_path: Path) -> None:
    # v2: wherever everything else is; v1: root/cpuset; hybrid without a v1 cpuset: unified, if listed there.
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu memory\n")
    found = cpuset_hierarchy(detect_layout(str(v2)))
    assert found is not None
    assert (found.version, found.mount) == (2, str(v2))
    hybrid = tmp_path / "hybrid"
    (hybrid / "memory").mkdir(parents=True)
    (hybrid / "unified").mkdir()
    (hybrid / "unified" / "cgroup.controllers").write_text("cpuset\n")
    found = cpuset_hierarchy(detect_layout(str(hybrid)))
    assert found is not None
    assert (found.version, found.mount) == (2, str(hybrid / "unified"))
    (hybrid / "cpuset").mkdir()
    found = cpuset_hierarchy(detect_layout(str(hybrid)))
    assert found is not None
    assert (found.version, found.mount) == (1, str(hybrid / "cpuset"))
    (hybrid / "unified" / "cgroup.controllers").write_text("memory\n")
    shutil.rmtree(hybrid / "cpuset")
    assert cpuset_hierarchy(detect_layout(str(hybrid))) is None


def _copy(name: str, tmp_path: Path) -> Path:
    source = FIXTURES / name
    if not source.is_dir():
        pytest.skip(f"fixture {name} is missing")
    shutil.copytree(source / "cgroup", tmp_path / "cgroup", symlinks=True)
    return tmp_path / "cgroup"


V2_RESIZED = "v2-6.1.0-56-amd64-container-resized-linear"


def test_populated_follows_cgroup_events(tmp_path: Path) -> None:
    root = _copy(V2_RESIZED, tmp_path)
    events = root / "shimstats-fx-resized-linear" / "cgroup.events"
    files = FileCache()
    try:
        layout = detect_layout(str(root))
        assert read_resources(layout, files, "/shimstats-fx-resized-linear", 4096).populated
        events.write_text(events.read_text().replace("populated 1", "populated 0"))
        assert not read_resources(layout, files, "/shimstats-fx-resized-linear", 4096).populated
        events.unlink()
        assert not read_resources(layout, files, "/shimstats-fx-resized-linear", 4096).populated
    finally:
        files.close()


def test_absent_files_are_listed_and_a_missing_cgroup_is_gone(tmp_path: Path) -> None:
    root = _copy(V2_RESIZED, tmp_path)
    container = root / "shimstats-fx-resized-linear"
    (container / "memory.swap.max").unlink()
    (container / "cpu.max").unlink()
    files = FileCache()
    try:
        layout = detect_layout(str(root))
        answer = read_resources(layout, files, "/shimstats-fx-resized-linear", 4096)
        assert list(answer.absent) == ["cpu.max", "memory.swap.max"]
        assert "cpu.max" not in [s.file for s in answer.settings]
        shutil.rmtree(container)
        with pytest.raises(CgroupGone):
            read_resources(layout, files, "/shimstats-fx-resized-linear", 4096)
        assert len(files) == 0  # nothing of the gone cgroup is kept open
    finally:
        files.close()

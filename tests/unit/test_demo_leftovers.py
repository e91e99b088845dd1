"""Which leftovers the demo removes: only its own names, only real directories it owns, only of dead runs.

tests/integration/test_demo.py SIGKILLs a real demo run and checks the next run cleans up after it; this
checks the rule on names and owners without creating cgroups.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shimstats import demo


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not demo.pid_alive(child.pid)
    return child.pid


def test_only_a_dead_runs_own_directories_are_removed(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    parent = tmp_path / "tmp"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not ours to remove")
    removed = [parent / f"ss-{dead}-abcd1234", parent / f"ss-demo-{dead}-x_9yz0qq"]
    kept = [
        parent / f"ss-{alive}-abcd1234",  # a live run's
        parent / f"ss-demo-{alive}-abcd1234",
        parent / "ss-xo13crd0",  # the test harness's short_tmp, no pid
        parent / f"ss-{dead}-not-mkdtemp",  # not a name we make
        parent / f"shimstats-demo-{dead}",  # a cgroup name, not a directory name of ours
    ]
    for directory in removed + kept:
        directory.mkdir(parents=True)
        (directory / "page-cache.bin").write_bytes(b"x")
    link = parent / f"ss-{dead}-linklink"
    link.symlink_to(elsewhere)  # a look-alike symlink: neither it nor what it points at is touched

    notes = demo.remove_dead_runs(cgroup_root=str(tmp_path / "no-cgroupfs"), work_parents=[str(parent)])

    assert not any(path.exists() for path in removed)
    assert all(path.is_dir() for path in kept)
    assert link.is_symlink()
    assert (elsewhere / "keep").read_text() == "not ours to remove"
    assert len(notes) == 1
    assert notes[0].startswith(f"removed what demo run {dead} (gone) left: ")
    assert all(str(path) in notes[0] for path in removed)
    assert demo.remove_dead_runs(cgroup_root=str(tmp_path), work_parents=[str(parent)]) == []


def test_a_run_pid_that_is_alive_is_never_dead() -> None:
    assert demo.pid_alive(os.getpid())
    assert demo.pid_alive(1)  # init: alive even where we may not signal it

"""`shimstats demo` end to end as a process: the figures it shows, and that it leaves nothing behind.

Run from outside the checkout with the package on PYTHONPATH, as an installed package would run. "Nothing
behind" means: no cgroup named after the demo's pid in any hierarchy, no process whose command line names
its socket directory, cgroup or page-cache file, and neither directory left on disk.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from shimstats import data
from shimstats.demo import PAGE_CACHE_BYTES, REREAD_BYTES
from tests.integration.harness import REPO

FIXTURES = REPO / "tests" / "fixtures" / "cgroupfs"
DEMO_TIMEOUT = 60
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the live demo creates a cgroup: needs root")


def start_demo(cwd: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "shimstats.cli", "demo", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def leftovers(pid: int, *paths: str) -> list[str]:
    """What the demo with this pid left: its cgroups, its directories (named after its pid, see
    shimstats.commands.demo and shimstats.demo), ``paths``, and processes naming any of them."""
    name = f"shimstats-demo-{pid}"
    found = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{name}")]
    found += [str(p) for p in Path(tempfile.gettempdir()).glob(f"ss-demo-{pid}-*")]
    found += [str(p) for p in Path("/tmp").glob(f"ss-{pid}-*")]
    found += [p for p in paths if os.path.exists(p)]
    marks = [name, f"ss-demo-{pid}-", f"/tmp/ss-{pid}-", *paths]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            found.append(f"process {entry.name}: {cmdline.replace(chr(0), ' ')[:200]}")
    return found


def paths_named_in(output: str) -> list[str]:
    """The socket directory and the page-cache directory the demo reported."""
    found = set(re.findall(r"unix://(/tmp/ss-[A-Za-z0-9_-]+)/", output))
    found |= set(re.findall(r"written to (\S+)/page-cache\.bin", output))
    return sorted(found)


def test_the_bundled_capture_is_a_byte_identical_copy() -> None:
    bundled = data.fixture()
    original = FIXTURES / bundled.name
    bundled_files = sorted(p.relative_to(bundled.directory) for p in bundled.directory.rglob("*"))
    original_files = sorted(p.relative_to(original) for p in original.rglob("*"))
    assert bundled_files == original_files
    files = [str(p) for p in original_files if (original / p).is_file()]
    match, mismatch, errors = filecmp.cmpfiles(original, bundled.directory, files, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert len(match) == len(files) > 0


@needs_root
@pytest.mark.live_cgroup
def test_demo_shows_the_figures_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc = start_demo(tmp_path)
    out, err = proc.communicate(timeout=DEMO_TIMEOUT)
    assert proc.returncode == 0, out + err
    for words in (
        "== 1. live: a cgroup v1 container on this machine",
        "real working set (the cgroup's own files): usage",
        "shimstats adapter, v1 output (live)",
        "shimstats adapter, v2 output (live)",
        "Kata Go, v1 host",
        "Kata Go, v2 host",
        "Kata runtime-rs",
        "replayed from a real 6.1 kernel capture",
        "result: our figures verify in every case (exit 0)",
    ):
        assert words in out, words
    paths = paths_named_in(out)
    assert len(paths) == 2, paths  # the socket directory and the page-cache directory
    assert all(f"{proc.pid}-" in path for path in paths)
    assert leftovers(proc.pid, *paths) == []


def _case(report: dict[str, Any], key: str) -> dict[str, Any]:
    return next(c for c in report["cases"] if c["key"] == key)


def _working_set(case: dict[str, Any], column: str) -> int:
    col = next(c for c in case["compare"]["columns"] if c["key"] == column)
    value: int = col["figures"]["working_set_bytes"]
    return value


@needs_root
@pytest.mark.live_cgroup
def test_demo_json_figures_follow_from_the_cgroup(tmp_path: Path) -> None:
    proc = start_demo(tmp_path, "--json")
    out, err = proc.communicate(timeout=DEMO_TIMEOUT)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["ok"] is True

    live = _case(report, "live")
    truth = live["verify"]["v1"]["ground_truth"]
    stat, after = truth["memory_stat"], truth["after"]
    # The workload put (PAGE_CACHE - REREAD) on the inactive list and REREAD on the active one; allow the
    # kernel half of each (it may age or promote pages on its own).
    assert stat["total_inactive_file"] >= (PAGE_CACHE_BYTES - REREAD_BYTES) // 2
    assert stat["total_active_file"] >= REREAD_BYTES // 2
    assert after["working_set_bytes"] == after["usage_bytes"] - stat["total_inactive_file"]
    for fmt in ("v1", "v2"):
        assert live["verify"][fmt]["ok"] is True
        assert live["verify"][fmt]["cri"]["working_set_bytes"] < live["verify"][fmt]["cri"]["usage_bytes"]

    replay = _case(report, "replay")
    guest = replay["compare"]["guest"]["figures"]
    stat = replay["verify"]["v1"]["ground_truth"]["memory_stat"]
    assert guest["working_set_bytes"] == guest["usage_bytes"] - stat["inactive_file"]
    assert _working_set(replay, "ours_v1") == _working_set(replay, "ours_v2") == guest["working_set_bytes"]
    # The Kata Go shim on a v1 host sends v1 Metrics without total_inactive_file: working set = usage.
    assert _working_set(replay, "kata_go_v1_host") == guest["usage_bytes"]
    assert _working_set(replay, "kata_rs") == guest["usage_bytes"]


@needs_root
@pytest.mark.live_cgroup
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_demo_cleans_up_when_interrupted(tmp_path: Path, signum: int) -> None:
    proc = start_demo(tmp_path)
    cgroup = Path(f"/sys/fs/cgroup/memory/shimstats-demo-{proc.pid}")
    deadline = time.monotonic() + DEMO_TIMEOUT
    while not cgroup.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cgroup.exists(), "the demo never created its cgroup"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=DEMO_TIMEOUT)
    assert proc.returncode == 128 + signum, out + err
    assert "interrupted, cleaning up" in err
    assert leftovers(proc.pid) == []


def _user_namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _user_namespaces_work(), reason="needs unshare --user to run the demo as non-root")
def test_demo_without_root_replays_the_bundled_capture(tmp_path: Path) -> None:
    proc = start_demo(tmp_path, prefix=("unshare", "--user"))
    out, err = proc.communicate(timeout=DEMO_TIMEOUT)
    assert proc.returncode == 0, out + err
    assert "note: not root: cannot create a cgroup here" in out
    assert "== 1. replay" in out
    assert "live:" not in out
    assert "replayed from a real 6.1 kernel capture" in out
    assert leftovers(proc.pid, *paths_named_in(out)) == []


@needs_root
@pytest.mark.live_cgroup
def test_the_next_run_removes_what_a_killed_run_left_and_nothing_of_a_live_one(tmp_path: Path) -> None:
    killed = start_demo(tmp_path)
    page_cache = f"ss-demo-{killed.pid}-*/page-cache.bin"
    deadline = time.monotonic() + DEMO_TIMEOUT
    while not [f for d in ("/tmp", "/var/tmp", tmp_path) for f in Path(d).glob(page_cache)]:
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline, "the demo never started its workload"
        time.sleep(0.01)
    killed.kill()  # SIGKILL: no cleanup of its own; its children go with it (PR_SET_PDEATHSIG)
    killed.communicate(timeout=DEMO_TIMEOUT)
    left = leftovers(killed.pid)
    assert any(p.startswith("/sys/fs/cgroup/") for p in left), left
    assert f"/tmp/ss-{killed.pid}-" in " ".join(left), left
    # Look-alikes of a run that is alive (this test's own pid) must survive the next run.
    alive = os.getpid()
    live_dirs = [Path(tempfile.mkdtemp(prefix=p, dir="/tmp")) for p in (f"ss-{alive}-", f"ss-demo-{alive}-")]
    live_cgroup = Path(f"/sys/fs/cgroup/memory/shimstats-demo-{alive}")
    live_cgroup.mkdir()
    try:
        after = start_demo(tmp_path)
        out, err = after.communicate(timeout=DEMO_TIMEOUT)
        assert after.returncode == 0, out + err
        assert f"note: removed what demo run {killed.pid} (gone) left: " in out
        assert leftovers(killed.pid) == []
        assert all(d.is_dir() for d in live_dirs)
        assert live_cgroup.is_dir()
        assert leftovers(after.pid, *paths_named_in(out)) == []
    finally:
        live_cgroup.rmdir()
        for directory in live_dirs:
            directory.rmdir()

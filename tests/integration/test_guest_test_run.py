"""`shimstats guest-test --cgroup v2` end to end: a real kernel under qemu, our agent inside, every phase.

One run for the module (about a minute under TCG, a few with a first download). It skips only where
qemu-system-x86_64 is missing and CI is not set; in CI (hack/ci-install.sh installs qemu-system-x86 and
e2fsprogs) it must run. Fixtures go to a temporary directory, never into the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shimstats.guest_test import checks
from shimstats.guest_test.phases import BY_NAME, PHASES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 900


@dataclass(frozen=True)
class Run:
    code: int
    report: dict[str, Any]
    stderr: str
    fixtures: Path
    pid: int


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    if shutil.which("qemu-system-x86_64") is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("guest-test must run in CI: qemu-system-x86_64 is missing (hack/ci-install.sh)")
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86 e2fsprogs)")
    fixtures = tmp_path_factory.mktemp("guest-test-fixtures")
    argv = [sys.executable, "-m", "shimstats.cli", "guest-test", "--cgroup", "v2", "--json"]
    process = subprocess.Popen(
        [*argv, "--fixtures", str(fixtures)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"guest-test still running after {RUN_TIMEOUT} s; stderr:\n{err[-3000:]}")
    report = json.loads(out) if out.strip() else {}
    return Run(process.returncode, report, err, fixtures, process.pid)


def test_every_phase_agrees_and_the_exit_status_says_so(run: Run) -> None:
    assert run.code == 0, run.stderr[-3000:]
    assert run.report["ok"] is True
    (mode,) = run.report["runs"]
    assert mode["cgroup"] == "v2"
    assert mode["error"] is None
    assert [p["phase"] for p in mode["phases"]] == [p.name for p in PHASES]
    for phase in mode["phases"]:
        assert phase["ok"], phase["phase"]
        assert all(e["ok"] for e in phase["effects"]), phase["effects"]
        live = [c for c in phase["columns"] if c["live"]]
        assert [c["type_url"] for c in live] == [
            "io.containerd.cgroups.v1.Metrics",
            "io.containerd.cgroups.v2.Metrics",
        ]
        for column in live:
            assert all(check["ok"] for check in column["cri"] + column["figures"]), column


def test_the_guest_was_a_real_v2_kernel_with_swap_and_huge_pages(run: Run) -> None:
    (mode,) = run.report["runs"]
    assert mode["kernel"]["release"]
    facts = mode["facts"]
    assert facts["swap"], "the swap disk was not in use"
    assert "[madvise]" in facts["thp"] or "[always]" in facts["thp"]
    for phase in mode["phases"]:
        assert phase["guest"]["cgroup_version"] == 2


def test_the_kata_go_shim_on_a_v1_host_is_shown_wrong_for_the_same_guest_data(run: Run) -> None:
    """Proof the run can tell right from wrong: the v2 guest's page cache counts as used through the Kata Go
    shim's v1 mapping, while ours subtracts it."""
    (mode,) = run.report["runs"]
    pagecache = next(p for p in mode["phases"] if p["phase"] == "pagecache")
    kata = next(c for c in pagecache["columns"] if c["key"] == "kata_go_v1_host")
    working_set = next(c for c in kata["cri"] if c["figure"] == "working_set_bytes")
    assert not working_set["ok"]
    assert "inactive_file not subtracted" in working_set["cause"]
    assert pagecache["guest"]["memory_stat"]["inactive_file"] > 0


def test_each_phase_was_saved_as_a_fixture_with_its_provenance(run: Run) -> None:
    (mode,) = run.report["runs"]
    release = mode["kernel"]["release"]
    saved = sorted(p.name for p in run.fixtures.iterdir())
    assert saved == sorted(f"{release}-v2-{p.name}" for p in PHASES)
    for phase in mode["phases"]:
        directory = run.fixtures / f"{release}-v2-{phase['phase']}"
        assert phase["fixture"] == str(directory)
        meta = json.loads((directory / "meta.json").read_text())
        assert meta["mode"] == "v2"
        assert meta["kernel"] == release
        assert meta["container_path"] == phase["cgroup_path"]
        assert "shimstats guest-test --cgroup v2" in (directory / "README.md").read_text()
        raw = checks.RawCgroup.read(directory, meta["container_path"])
        assert all(e.holds(raw) for e in BY_NAME[phase["phase"]].effects)


def test_nothing_is_left_behind(run: Run) -> None:
    assert not list(Path("/tmp").glob(f"ssgt-{run.pid}-*"))
    mine = f"/tmp/ssgt-{run.pid}-"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert mine.encode() not in cmdline, f"pid {proc.name} still runs: {cmdline!r}"

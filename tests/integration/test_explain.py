"""`shimstats explain` as a process: on a guest agent serving real captures, and on a live container."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.containerd_env import PAGE_CACHE_BYTES, Container
from tests.integration.harness import CLI, REPO, AgentProcess, fixtures, short_tmp

BY_NAME = {fx.name: fx for fx in fixtures()}


def explain_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "explain", *args], capture_output=True, text=True, timeout=30, cwd=REPO, check=False
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "story", "words"),
    [
        ("v2-6.1.0-56-amd64-container-active-file", "active_file", "kubernetes#43916"),
        ("v2-6.1.0-56-amd64-container-inactive-file", "inactive_file", "kata-containers#10280"),
    ],
)
def test_explain_names_the_story_of_a_capture(name: str, story: str, words: str) -> None:
    fx = BY_NAME[name]
    with short_tmp() as tmp, AgentProcess(tmp, fx.agent_args()) as agent:
        table = explain_cli("--id", fx.request_id, "--agent", agent.address)
        data = explain_cli("--id", fx.request_id, "--agent", agent.address, "--json")
    assert table.returncode == 0, table.stderr
    story_line = table.stdout.split("likely story:\n", 1)[1].splitlines()[0]
    assert words in story_line
    assert data.returncode == 0, data.stderr
    out = json.loads(data.stdout)
    assert out["stories"][0]["key"] == story
    assert out["guest"] == "v2"


@pytest.mark.containerd
def test_explain_a_live_container_that_reread_its_file(busybox_container: Container) -> None:
    proc = explain_cli(
        "--id", busybox_container.id, "--cgroup", str(busybox_container.memory_cgroup), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    parts = {p["key"]: p for p in out["parts"]}
    # The container wrote PAGE_CACHE_BYTES and read them back: file cache, nearly all of it active.
    file_cache = parts["active_file"]["bytes"] + parts["inactive_file"]["bytes"]
    assert file_cache >= PAGE_CACHE_BYTES
    assert out["guest"] == "v1"
    assert out["stories"][0]["key"] == (
        "active_file" if parts["active_file"]["bytes"] > file_cache / 2 else "inactive_file"
    )


def test_explain_exit_2_for_a_missing_cgroup(tmp_path: Path) -> None:
    proc = explain_cli("--id", "x", "--cgroup", str(tmp_path / "gone"))
    assert proc.returncode == 2
    assert str(tmp_path / "gone") in proc.stderr

"""explain, compare and verify from just a memory.stat and a usage figure (`--memory-stat FILE|- --usage`).

Every sample is a real kernel's memory.stat from tests/fixtures/cgroupfs, with the usage and limit the same
capture holds (v1 memory.usage_in_bytes / memory.limit_in_bytes, v2 memory.current / memory.max). What
the sample gives must be what the whole cgroup directory gives, read by the agent's reader: the sample
is only less information, never other numbers. Broken samples are derived from real ones by a stated rule
(a line dropped, a line garbled), never written from scratch.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shimstats import cli
from tests.integration.harness import CLI, REPO, AgentProcess, Fixture, ServeProcess, fixtures, short_tmp

CONTAINERS = [fx for fx in fixtures() if not fx.is_root]
V1_PAGECACHE = next(fx for fx in CONTAINERS if fx.name == "v1-6.1.0-56-amd64-qemu-container-pagecache")
V2_INACTIVE = next(fx for fx in CONTAINERS if fx.name == "v2-6.1.0-56-amd64-container-inactive-file")


def sample_flags(fx: Fixture, memory_stat: str | None = None) -> list[str]:
    """--memory-stat, --usage and --limit as the fixture's own files give them."""
    usage = "memory.usage_in_bytes" if fx.guest_version == 1 else "memory.current"
    limit = "memory.limit_in_bytes" if fx.guest_version == 1 else "memory.max"
    return [
        "--memory-stat",
        memory_stat or str(fx.memory_dir / "memory.stat"),
        "--usage",
        fx.file("memory", usage).strip(),
        "--limit",
        fx.file("memory", limit).strip(),
    ]


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out else {}


@pytest.mark.parametrize("fx", CONTAINERS, ids=lambda fx: fx.name)
def test_explain_from_a_sample_matches_explain_from_the_cgroup(
    fx: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    code, whole = run_json(capsys, "explain", "--id", "c", "--cgroup", str(fx.memory_dir), "--json")
    assert code == 0
    code, sample = run_json(capsys, "explain", "--id", "c", *sample_flags(fx), "--json")
    assert code == 0
    assert sample["source"] == f"memory.stat {fx.memory_dir / 'memory.stat'}"
    assert sample["guest"] == f"v{fx.guest_version}"
    stat = fx.keyed("memory", "memory.stat")
    inactive = stat["total_inactive_file" if fx.guest_version == 1 else "inactive_file"]
    usage = int(fx.file("memory", "memory.usage_in_bytes" if fx.guest_version == 1 else "memory.current"))
    assert sample["usage_bytes"] == usage
    assert sample["working_set_bytes"] == max(usage - inactive, 0)
    for key in ("usage_bytes", "working_set_bytes", "limit", "guest"):
        assert sample[key] == whole[key], key
    if fx.guest_version == 2:
        # v2 takes every part from memory.stat: the whole answer is the same.
        assert {**sample, "source": None} == {**whole, "source": None}
    else:
        # v1 takes kernel memory from memory.kmem.usage_in_bytes, which a sample does not have.
        parts = {p["key"]: p["bytes"] for p in sample["parts"]}
        whole_parts = {p["key"]: p["bytes"] for p in whole["parts"]}
        for key in ("anon", "active_file", "shmem", "inactive_file"):
            assert parts[key] == whole_parts[key], key


def test_explain_reads_a_pasted_sample_from_stdin() -> None:
    """A bug report's memory.stat pasted with CRLF, tabs and blank lines reads as the file itself."""
    fx = V2_INACTIVE
    pasted = "\r\n\r\n".join(
        line.replace(" ", "\t ") for line in fx.file("memory", "memory.stat").splitlines()
    )
    flags = sample_flags(fx, memory_stat="-")
    done = subprocess.run(
        [*CLI, "explain", "--id", "web-1", *flags, "--json"],
        input=pasted,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    stat = fx.keyed("memory", "memory.stat")
    assert out["source"] == "memory.stat stdin"
    assert out["working_set_bytes"] == int(fx.file("memory", "memory.current")) - stat["inactive_file"]
    assert out["parts"][-1] == {
        "key": "inactive_file",
        "label": "inactive file cache (not counted)",
        "bytes": stat["inactive_file"],
        "in_working_set": False,
        "share": stat["inactive_file"] / int(fx.file("memory", "memory.current")),
        "detail": {},
    }


@pytest.mark.parametrize("fx", [V1_PAGECACHE, V2_INACTIVE], ids=lambda fx: fx.name)
def test_compare_from_a_sample_shows_what_each_shim_makes_of_it(
    fx: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_json(capsys, "compare", "--id", "c", *sample_flags(fx), "--json")
    assert code == 0
    stat = fx.keyed("memory", "memory.stat")
    usage = int(fx.file("memory", "memory.usage_in_bytes" if fx.guest_version == 1 else "memory.current"))
    inactive = stat["total_inactive_file" if fx.guest_version == 1 else "inactive_file"]
    assert out["guest"]["cgroup_version"] == fx.guest_version
    assert out["guest"]["figures"]["working_set_bytes"] == usage - inactive
    columns = {c["key"]: c for c in out["columns"]}
    assert columns["ours_v1"]["differs"] == columns["ours_v2"]["differs"] == {}
    assert columns["ours_v1"]["figures"]["working_set_bytes"] == usage - inactive
    if fx.guest_version == 2:
        # v1 Metrics from a v2 guest carry no total_inactive_file: Kata's Go shim on a v1 host loses it.
        kata = columns["kata_go_v1_host"]
        assert kata["figures"]["working_set_bytes"] == usage
        assert "working_set_bytes" in kata["differs"]


def test_verify_judges_a_live_shim_against_a_sample() -> None:
    """Our adapter serves the capture (agent on the fixture tree); the sample of the same capture is the
    truth: it passes. The same sample with a usage 100 MiB off fails on usage, exit 1."""
    fx = V2_INACTIVE
    flags = sample_flags(fx)
    usage_at = flags.index("--usage") + 1
    off = [*flags[:usage_at], str(int(flags[usage_at]) + 100 * 2**20), *flags[usage_at + 1 :]]
    with (
        short_tmp() as tmp,
        AgentProcess(tmp, fx.agent_args()) as agent,
        ServeProcess(tmp, agent.address) as serve,
    ):
        base = [*CLI, "verify", "--shim", serve.address, "--id", fx.request_id, "--json"]
        good = subprocess.run([*base, *flags], capture_output=True, text=True, timeout=30, cwd=REPO)
        bad = subprocess.run([*base, *off], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert good.returncode == 0, good.stdout + good.stderr
    assert json.loads(good.stdout)["ok"] is True
    assert bad.returncode == 1, bad.stdout + bad.stderr
    failed = {c["figure"] for c in json.loads(bad.stdout)["checks"] if not c["ok"]}
    assert "usage_bytes" in failed


def _without(fx: Fixture, key: str, directory: Path) -> Path:
    """The fixture's memory.stat with the line for ``key`` dropped."""
    lines = fx.file("memory", "memory.stat").splitlines(keepends=True)
    kept = [line for line in lines if line.split()[0] != key]
    assert len(kept) == len(lines) - 1
    path = directory / "memory.stat"
    path.write_text("".join(kept))
    return path


@pytest.mark.parametrize(
    ("fx", "key"), [(V1_PAGECACHE, "total_inactive_file"), (V2_INACTIVE, "inactive_file")], ids=("v1", "v2")
)
def test_a_sample_without_the_inactive_key_is_refused(
    fx: Fixture, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _without(fx, key, tmp_path)
    for command in ("explain", "compare"):
        assert cli.main([command, "--id", "c", *sample_flags(fx, str(path))]) == 2
        err = capsys.readouterr().err
        assert f"{path}: cgroup v{fx.guest_version} memory.stat without {key}" in err
        assert len(err.strip().splitlines()) == 1


def test_a_garbled_line_names_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = V2_INACTIVE.file("memory", "memory.stat").splitlines()
    lines[2] = lines[2].split()[0] + " twelve"
    path = tmp_path / "memory.stat"
    path.write_text("\n".join(lines) + "\n")
    assert cli.main(["explain", "--id", "c", *sample_flags(V2_INACTIVE, str(path))]) == 2
    assert f"{path}:3: expected an integer, got 'twelve'" in capsys.readouterr().err


def test_a_sample_of_neither_version_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Keys of both versions (a v1 file, then the v2 file's lines with keys v1 lacks) cannot be told apart."""
    v1 = V1_PAGECACHE.file("memory", "memory.stat")
    v1_keys = set(V1_PAGECACHE.keyed("memory", "memory.stat"))
    v2_lines = V2_INACTIVE.file("memory", "memory.stat").splitlines(keepends=True)
    path = tmp_path / "memory.stat"
    path.write_text(v1 + "".join(line for line in v2_lines if line.split()[0] not in v1_keys))
    assert cli.main(["explain", "--id", "c", "--memory-stat", str(path), "--usage", "1Mi"]) == 2
    assert "neither cgroup v1 nor v2 keys" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--memory-stat", "/nonexistent/memory.stat"], "--memory-stat needs --usage"),
        (["--agent", "unix:///nowhere.sock", "--usage", "1"], "--usage and --limit go with --memory-stat"),
        (["--memory-stat", "-", "--usage", "lots"], "argument --usage"),
        (["--memory-stat", "-", "--usage", "-1"], "argument --usage"),
        (["--memory-stat", "-", "--usage", "1", "--limit", "none"], "argument --limit"),
        (["--memory-stat", "-", "--usage", "1", "--limit", "0"], "a limit of 0 bytes leaves no room"),
    ],
)
def test_sample_flags_misused_are_usage_errors(
    flags: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explain", "--id", "c", *flags])
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("path", ["/nonexistent/memory.stat", "/", "/bin/sh"])
def test_an_unreadable_sample_exits_2_naming_it(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", "--id", "c", "--memory-stat", path, "--usage", "1"]) == 2
    err = capsys.readouterr().err
    assert path in err
    assert len(err.strip().splitlines()) == 1

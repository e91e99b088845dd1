"""The wheel `pip install .` builds carries everything the commands need at run time.

The README's first command is `pip install . && shimstats demo`: the demo replays a bundled capture,
the proxy shim and the agent are console scripts, and the generated protobuf modules need their stubs
for typed users. A missing package-data line would only show on a fresh install, so build the wheel.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_has_the_bundled_capture_the_stubs_and_the_console_scripts(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("shimstats-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    data_dirs = (REPO / "shimstats" / "data", REPO / "shimstats" / "guest_test" / "guest")
    bundled = {p.relative_to(REPO).as_posix() for d in data_dirs for p in d.rglob("*") if p.is_file()}
    bundled = {n for n in bundled if "__pycache__" not in n}
    assert any(n.endswith("/meta.json") for n in bundled)
    assert "shimstats/guest_test/guest/capture-cgroup.sh" in bundled  # a symlink: its content ships
    assert bundled <= names, sorted(bundled - names)

    for module in (
        "shimstats/_proto/cgroups/v1/metrics_pb2.pyi",
        "shimstats/py.typed",
        "guest_agent/py.typed",
        "guest_agent/__main__.py",
        "shimstats/proxy/cli.py",
    ):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)

    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    assert scripts == {
        "shimstats": "shimstats.cli:main",
        "shimstats-agent": "guest_agent.__main__:main",
        "containerd-shim-kata-stats-v2": "shimstats.proxy.cli:run",
    }

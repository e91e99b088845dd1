"""Data shipped with the package: a real cgroup v2 capture for `shimstats demo` to replay.

``fixtures/<name>/`` is a byte-for-byte copy of ``tests/fixtures/cgroupfs/<name>/`` (a test checks that they
stay identical; its README.md says how, where and from which kernel it was captured). The demo replays it
because the machines it usually runs on are cgroup v1 hosts, and the v2-guest case is the one the Kata shims
get wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

V2_FIXTURE = "v2-6.1.0-56-amd64-container-inactive-file"
"""200 MiB written to ext4 and never read back, on Debian's 6.1 kernel under qemu: large inactive_file."""


@dataclass(frozen=True)
class Fixture:
    """A bundled capture: where its files are and what its meta.json says."""

    name: str
    directory: Path
    kernel: str
    container_id: str
    container_path: str
    workload: str

    @property
    def cgroupfs_root(self) -> Path:
        return self.directory / "cgroup"

    @property
    def meminfo(self) -> Path:
        return self.directory / "meminfo"

    @property
    def container_dir(self) -> Path:
        """The container's cgroup directory (v2: one tree for every controller)."""
        return self.cgroupfs_root / self.container_path.lstrip("/")


def fixture(name: str = V2_FIXTURE) -> Fixture:
    """A bundled fixture by name (files on disk next to this module: the package is installed unzipped)."""
    directory = Path(__file__).resolve().parent / "fixtures" / name
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    return Fixture(
        name=name,
        directory=directory,
        kernel=meta["kernel"],
        container_id=meta["container_id"],
        container_path=meta["container_path"],
        workload=meta["workload"],
    )

"""Where each controller lives under a cgroupfs root: pure v1, pure v2 (unified) or hybrid.

Detection looks only at directories and files under the root (never at /proc/self/mountinfo), so the same code
reads the live /sys/fs/cgroup and a captured tree given by ``--cgroupfs-root``. The rules, under a root R:

- ``R/cgroup.controllers`` exists → **v2**: the controllers it lists live at R. cpu always does, because v2's
  ``cpu.stat`` (usage) is a core file present in every cgroup; throttling keys appear only when the cpu
  controller is enabled.
- otherwise each v1 controller is a directory ``R/<name>`` (``R/cpu`` may be a symlink to ``R/cpu,cpuacct``);
  if ``R/unified/cgroup.controllers`` also exists the layout is **hybrid** and a controller that no v1
  directory claims but ``R/unified`` lists lives there (cpu usage too, for the reason above);
- with neither, there is no cgroup hierarchy under R: LayoutError.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Controller = Literal["memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb"]
CONTROLLERS: tuple[Controller, ...] = ("memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb")
"""The controllers the agent reads, by their v1 names (cpuacct is v1-only: v2 folds it into cpu.stat)."""

_V2_NAME: Mapping[Controller, str] = {"memory": "memory", "pids": "pids", "blkio": "io", "hugetlb": "hugetlb"}
"""The v2 name of each controller that must be listed in cgroup.controllers to be usable on v2."""

Mode = Literal["v1", "v2", "hybrid"]


class LayoutError(RuntimeError):
    """No cgroup hierarchy under the given root."""


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy: its cgroup version and the directory of its root cgroup."""

    version: Literal[1, 2]
    mount: str

    def dir_for(self, cgroup_path: str) -> str:
        """The directory of ``cgroup_path`` (as /proc/PID/cgroup shows it, ``/`` = root) in this hierarchy."""
        return self.mount if cgroup_path == "/" else self.mount + cgroup_path


@dataclass(frozen=True)
class Layout:
    """The controllers found under ``root`` and where each one lives."""

    root: str
    mode: Mode
    controllers: Mapping[Controller, Hierarchy]

    @property
    def primary(self) -> Hierarchy:
        """The hierarchy used to find containers: memory's, else the first controller found."""
        for name in CONTROLLERS:
            if name in self.controllers:
                return self.controllers[name]
        raise LayoutError(f"no controller under {self.root}")  # detect_layout never builds such a Layout

    def describe(self) -> str:
        """A one-line summary for logs: ``hybrid: memory=v1 cpu=v1 ...``."""
        parts = " ".join(f"{name}=v{h.version}" for name, h in self.controllers.items())
        return f"{self.mode}: {parts}"


def _v2_controllers(mount: str) -> set[str] | None:
    """The names in ``mount/cgroup.controllers``, or None when mount is not a cgroup2 root."""
    try:
        with open(os.path.join(mount, "cgroup.controllers"), encoding="ascii") as f:
            return set(f.read().split())
    except FileNotFoundError:
        return None


def _v2_claims(mount: str, listed: set[str], wanted: tuple[Controller, ...]) -> dict[Controller, Hierarchy]:
    """The controllers among ``wanted`` that a cgroup2 root listing ``listed`` provides."""
    here = Hierarchy(2, mount)
    return {name: here for name in wanted if name == "cpu" or _V2_NAME.get(name) in listed}


def detect_layout(root: str = "/sys/fs/cgroup") -> Layout:
    """Find every controller the agent reads under ``root`` (rules in the module docstring)."""
    root = os.path.abspath(root)
    listed = _v2_controllers(root)
    if listed is not None:
        return Layout(root, "v2", _v2_claims(root, listed, CONTROLLERS))
    found: dict[Controller, Hierarchy] = {}
    for name in CONTROLLERS:
        mount = os.path.join(root, name)
        if os.path.isdir(mount):
            found[name] = Hierarchy(1, mount)
    unified = os.path.join(root, "unified")
    unified_listed = _v2_controllers(unified)
    if unified_listed is not None:
        # cpu moves to v2 only when v1 has neither half of it (cpu for throttling, cpuacct for usage).
        v1_cpu = "cpu" in found or "cpuacct" in found
        missing = tuple(
            n for n in CONTROLLERS if n not in found and n != "cpuacct" and (n != "cpu" or not v1_cpu)
        )
        found.update(_v2_claims(unified, unified_listed, missing))
        return Layout(root, "hybrid", found)
    if not found:
        raise LayoutError(f"no cgroup hierarchy under {root}: neither cgroup.controllers nor v1 controllers")
    return Layout(root, "v1", found)

"""Where each controller lives under a cgroupfs root: pure v1, pure v2 (unified) or hybrid.

Two sources, tried in this order:

1. ``/proc/self/mountinfo``, as runc (opencontainers/cgroups ``utils.go`` FindCgroupMountpoint) and cAdvisor
   read it: every ``cgroup`` mount at or under the root is a v1 hierarchy whose super options name its
   controllers (``rw,cpu,cpuacct`` is one hierarchy serving both, whatever its directory is called, with or
   without the ``cpu``/``cpuacct`` symlinks); a ``cgroup2`` mount is the unified hierarchy. The first mount
   of a controller wins, preferring one that shows the whole hierarchy (mountinfo root ``/``). Such a layout
   is ``mounted``: its files are kernfs files (guest_agent.files relies on that).
2. when mountinfo lists no cgroup mount under the root (a captured tree given by ``--cgroupfs-root``, or no
   /proc), names under the root R:

   - ``R/cgroup.controllers`` exists → **v2**: the controllers it lists live at R. cpu always does, because
     v2's ``cpu.stat`` (usage) is a core file present in every cgroup; throttling keys appear only when the
     cpu controller is enabled.
   - otherwise each v1 controller is a directory ``R/<name>``, or else a directory whose comma-joined name
     includes it (``R/cpu,cpuacct``, ``R/net_cls,net_prio``);

Either way, if a cgroup2 hierarchy also exists under R (``R/unified``) the layout is **hybrid** and a
controller that no v1 hierarchy claims but the cgroup2 one lists lives there (cpu usage too, for the reason
above); with no hierarchy at all, LayoutError.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    mounted_devices: frozenset[int] = field(default=frozenset())
    """st_dev of every hierarchy found in mountinfo (live cgroupfs); empty for a tree found by names."""

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
    """The names in ``mount/cgroup.controllers``, or None when mount is not a cgroup2 root (no such file,
    or ``mount`` is not a directory at all: a --cgroupfs-root naming a file)."""
    try:
        with open(os.path.join(mount, "cgroup.controllers"), encoding="ascii") as f:
            return set(f.read().split())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _v2_claims(mount: str, listed: set[str], wanted: tuple[Controller, ...]) -> dict[Controller, Hierarchy]:
    """The controllers among ``wanted`` that a cgroup2 root listing ``listed`` provides."""
    here = Hierarchy(2, mount)
    return {name: here for name in wanted if name == "cpu" or _V2_NAME.get(name) in listed}


@dataclass(frozen=True)
class CgroupMount:
    """One cgroup or cgroup2 line of mountinfo."""

    device: int
    root: str
    mount_point: str
    version: Literal[1, 2]
    options: frozenset[str]
    """v1: the super options (controller names among them); v2: empty."""


def _unescape(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash in paths as ``\ooo`` octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts of a mountinfo text (proc(5)), in file order; other lines are skipped.

    A line: ``ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS``.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < dash + 4 or fields[dash + 1] not in ("cgroup", "cgroup2"):
            continue
        major, _, minor = fields[2].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        version: Literal[1, 2] = 1 if fields[dash + 1] == "cgroup" else 2
        options = frozenset(fields[dash + 3].split(",")) if version == 1 else frozenset()
        device = os.makedev(int(major), int(minor))
        mounts.append(CgroupMount(device, _unescape(fields[3]), _unescape(fields[4]), version, options))
    return mounts


def _read_mountinfo(path: str) -> list[CgroupMount]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []


def _from_mounts(root: str, mounts: list[CgroupMount]) -> Layout | None:
    """The layout of the cgroup mounts at or under ``root``; None when there is none."""
    under = [m for m in mounts if m.mount_point == root or m.mount_point.startswith(root.rstrip("/") + "/")]
    if not under:
        return None
    under.sort(key=lambda m: m.root != "/")  # stable: whole-hierarchy mounts first, else mountinfo order
    devices = frozenset(m.device for m in under)
    found: dict[Controller, Hierarchy] = {}
    for name in CONTROLLERS:
        v1 = next((m for m in under if m.version == 1 and name in m.options), None)
        if v1 is not None:
            found[name] = Hierarchy(1, v1.mount_point)
    unified = next((m for m in under if m.version == 2), None)
    if unified is None:
        return Layout(root, "v1", found, devices) if found else None
    listed = _v2_controllers(unified.mount_point) or set()
    if not found:
        return Layout(root, "v2", _v2_claims(unified.mount_point, listed, CONTROLLERS), devices)
    found.update(_v2_claims(unified.mount_point, listed, _unclaimed(found)))
    return Layout(root, "hybrid", found, devices)


def _unclaimed(found: Mapping[Controller, Hierarchy]) -> tuple[Controller, ...]:
    """The controllers a hybrid's cgroup2 part may serve: those no v1 hierarchy has.

    cpu moves to v2 only when v1 has neither half of it (cpu for throttling, cpuacct for usage).
    """
    v1_cpu = "cpu" in found or "cpuacct" in found
    return tuple(n for n in CONTROLLERS if n not in found and n != "cpuacct" and (n != "cpu" or not v1_cpu))


def _v1_by_name(root: str) -> dict[Controller, Hierarchy]:
    """v1 hierarchies of a tree without mountinfo: ``root/<name>``, else a comma-joined ``root/a,b``."""
    found: dict[Controller, Hierarchy] = {}
    for name in CONTROLLERS:
        mount = os.path.join(root, name)
        if os.path.isdir(mount):
            found[name] = Hierarchy(1, mount)
    try:
        joined = sorted(n for n in os.listdir(root) if "," in n)
    except OSError:
        joined = []
    for dirname in joined:
        mount = os.path.join(root, dirname)
        if not os.path.isdir(mount):
            continue
        for name in CONTROLLERS:
            if name in dirname.split(",") and name not in found:
                found[name] = Hierarchy(1, mount)
    return found


def detect_layout(root: str = "/sys/fs/cgroup", mountinfo: str = "/proc/self/mountinfo") -> Layout:
    """Find every controller the agent reads under ``root`` (rules in the module docstring)."""
    root = os.path.abspath(root)
    mounted = _from_mounts(root, _read_mountinfo(mountinfo))
    if mounted is not None:
        return mounted
    listed = _v2_controllers(root)
    if listed is not None:
        return Layout(root, "v2", _v2_claims(root, listed, CONTROLLERS))
    found = _v1_by_name(root)
    unified = os.path.join(root, "unified")
    unified_listed = _v2_controllers(unified)
    if unified_listed is not None:
        found.update(_v2_claims(unified, unified_listed, _unclaimed(found)))
        return Layout(root, "hybrid", found)
    if not found:
        raise LayoutError(f"no cgroup hierarchy under {root}: neither cgroup.controllers nor v1 controllers")
    return Layout(root, "v1", found)

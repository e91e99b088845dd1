"""The figures guest-test checks beyond CRI's: memory limit, limit hits, swap, block I/O per device, pids.

``shimstats.verify`` judges what CRI and the kubelet read (usage, working set, rss, page faults, CPU). A
guest kernel change can break the rest too, so each of these is read straight from a captured cgroup's own
files (``RawCgroup``) and compared with what a Metrics message says (``reported``), by the rules below. They
are written from the kernel's files and containerd's field meanings (docs/spec/formulas.md §2,
docs/spec/mapping.md §1, docs/spec/metrics.md §5), never from our translation, so they judge ours and the Kata
shims' alike.

=============  ===============================  ===========================  ==============================
figure         cgroup v2 file                   cgroup v1 file               Metrics field (v1 | v2)
=============  ===============================  ===========================  ==============================
limit          memory.max                       memory.limit_in_bytes        memory.usage.limit | usage_limit
limit hits     memory.events ``max``            memory.failcnt               memory.usage.failcnt |
                                                                             memory_events.max
swap           memory.swap.current (swap only)  memsw - usage                v1: memory.swap.usage is
                                                                             memory + swap | swap_usage
io per device  io.stat rbytes wbytes rios wios  blkio.throttle.io_service_   blkio Read/Write lines per
                                                bytes/serviced_recursive     device | io.usage per device
pids           pids.current, pids.max           same                         pids.current, pids.limit
=============  ===============================  ===========================  ==============================

Unlimited is any value above 2**62 (containerd's and the kubelet's rule) and shows as ``max``; in v1 Metrics a
pids limit of 0 means no limit (containerd's reading of ``max``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from guest_agent.parse import parse_blkio, parse_flat_keyed, parse_nested_keyed, parse_single
from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats.table import human_bytes

UNLIMITED = 2**64 - 1
"""How a limit that means "none" is held here, whatever spelling it came in."""
_UNLIMITED_ABOVE = 1 << 62
BYTE_TOLERANCE = 512 * 1024
"""Bytes a swap figure may be off by (the same allowance verify gives usage: per-cpu charge batches)."""

IO_FIELDS = (("rbytes", "read bytes"), ("wbytes", "write bytes"), ("rios", "reads"), ("wios", "writes"))
"""io.stat keys and how the report names them; v1 gives the same four as Read/Write lines of two files."""


def normalise_limit(value: int) -> int:
    return UNLIMITED if value > _UNLIMITED_ABOVE else value


def show(figure: str, value: int | None) -> str:
    """A value for people: ``max`` for no limit, binary units for bytes, counts as they are."""
    if value is None:
        return "-"
    if value == UNLIMITED:
        return "max"
    if figure in ("limit", "swap", "memory+swap") or figure.endswith("bytes"):
        return human_bytes(value)
    return str(value)


@dataclass(frozen=True)
class RawCgroup:
    """One captured cgroup's figures, straight from its files (``version`` 1 or 2)."""

    version: Literal[1, 2]
    usage: int
    limit: int
    limit_hits: int
    swap: int | None
    """Swap only; None when the kernel keeps no swap accounting for the cgroup."""
    io: Mapping[str, Mapping[str, int]]
    """``"MAJ:MIN"`` → {rbytes, wbytes, rios, wios}."""
    pids: int | None
    pids_limit: int | None
    stat: Mapping[str, int]
    events: Mapping[str, int]
    """v2 memory.events (low, high, max, oom, oom_kill); v1: memory.oom_control's oom_kill."""

    @classmethod
    def read(cls, capture: Path, cgroup_path: str) -> RawCgroup:
        """Read ``capture`` (a fixture directory: ``cgroup/`` mirrors /sys/fs/cgroup) for ``cgroup_path``."""
        root = capture / "cgroup"
        rel = cgroup_path.strip("/")
        if (root / "cgroup.controllers").exists():
            return cls._read_v2(root / rel if rel else root)
        return cls._read_v1(root, rel)

    @classmethod
    def _read_v2(cls, d: Path) -> RawCgroup:
        usage = _single(d / "memory.current")
        swap = _single(d / "memory.swap.current") if (d / "memory.swap.current").exists() else None
        return cls(
            version=2,
            usage=usage,
            limit=normalise_limit(_single(d / "memory.max")),
            limit_hits=_keyed(d / "memory.events").get("max", 0),
            swap=swap,
            io=_io_v2(d / "io.stat"),
            pids=_single(d / "pids.current") if (d / "pids.current").exists() else None,
            pids_limit=normalise_limit(_single(d / "pids.max")) if (d / "pids.max").exists() else None,
            stat=_keyed(d / "memory.stat"),
            events=_keyed(d / "memory.events"),
        )

    @classmethod
    def _read_v1(cls, root: Path, rel: str) -> RawCgroup:
        m = root / "memory" / rel
        usage = _single(m / "memory.usage_in_bytes")
        memsw = m / "memory.memsw.usage_in_bytes"
        pids = root / "pids" / rel
        oom = _keyed(m / "memory.oom_control", numbers_only=True)
        return cls(
            version=1,
            usage=usage,
            limit=normalise_limit(_single(m / "memory.limit_in_bytes")),
            limit_hits=_single(m / "memory.failcnt"),
            swap=_single(memsw) - usage if memsw.exists() else None,
            io=_io_v1(root / "blkio" / rel),
            pids=_single(pids / "pids.current") if (pids / "pids.current").exists() else None,
            pids_limit=normalise_limit(_single(pids / "pids.max")) if (pids / "pids.max").exists() else None,
            stat=_keyed(m / "memory.stat"),
            events={"oom_kill": oom["oom_kill"]} if "oom_kill" in oom else {},
        )

    def expected(self, metrics_format: str) -> dict[str, int | None]:
        """Every figure as a Metrics message of ``metrics_format`` should carry it."""
        out: dict[str, int | None] = {"limit": self.limit, "limit hits": self.limit_hits}
        if self.swap is not None:
            if metrics_format == "v1":
                out["memory+swap"] = self.usage + self.swap
            else:
                out["swap"] = self.swap
        for device, counts in sorted(self.io.items()):
            for key, label in IO_FIELDS:
                out[f"io {device} {label}"] = counts.get(key, 0)
        if self.pids is not None:
            out["pids"] = self.pids
            out["pids limit"] = self.pids_limit
        return out


def _single(path: Path) -> int:
    return parse_single(path.read_text(encoding="ascii"), str(path))


def _keyed(path: Path, numbers_only: bool = False) -> dict[str, int]:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return {}
    if numbers_only:  # memory.oom_control mixes flags and counters; keep the "key number" lines
        text = "".join(line + "\n" for line in text.splitlines() if line.rpartition(" ")[2].isdigit())
    return parse_flat_keyed(text, str(path))


def _io_v2(path: Path) -> dict[str, dict[str, int]]:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return {}
    return {f"{line.major}:{line.minor}": dict(line.stats) for line in parse_nested_keyed(text, str(path))}


def _io_v1(directory: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, unit in (("io_service_bytes_recursive", "bytes"), ("io_serviced_recursive", "ios")):
        path = directory / f"blkio.throttle.{name}"
        if not path.exists():
            continue
        for line in parse_blkio(path.read_text(encoding="ascii"), str(path)):
            if line.op in ("Read", "Write"):
                key = ("r" if line.op == "Read" else "w") + unit
                out.setdefault(f"{line.major}:{line.minor}", {})[key] = line.value
    return out


def reported(metrics: cri.Metrics) -> dict[str, int | None]:
    """The same figures as a Metrics message carries them; a figure it does not carry is left out."""
    if isinstance(metrics, v1.Metrics):
        return _reported_v1(metrics)
    out: dict[str, int | None] = {}
    if metrics.HasField("memory"):
        out["limit"] = normalise_limit(metrics.memory.usage_limit)
        out["swap"] = metrics.memory.swap_usage
    if metrics.HasField("memory_events"):
        out["limit hits"] = metrics.memory_events.max
    for entry in metrics.io.usage:
        device = f"{entry.major}:{entry.minor}"
        for key, label in IO_FIELDS:
            out[f"io {device} {label}"] = getattr(entry, key)
    if metrics.HasField("pids"):
        out["pids"] = metrics.pids.current
        out["pids limit"] = normalise_limit(metrics.pids.limit)
    return out


def _reported_v1(metrics: v1.Metrics) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    if metrics.HasField("memory"):
        usage = metrics.memory.usage
        out["limit"] = normalise_limit(usage.limit)
        out["limit hits"] = usage.failcnt
        if metrics.memory.HasField("swap"):
            out["memory+swap"] = metrics.memory.swap.usage
    for name, unit in (("io_service_bytes_recursive", "bytes"), ("io_serviced_recursive", "ios")):
        for entry in getattr(metrics.blkio, name):
            if entry.op in ("Read", "Write"):
                label = dict(IO_FIELDS)[("r" if entry.op == "Read" else "w") + unit]
                out[f"io {entry.major}:{entry.minor} {label}"] = entry.value
    if metrics.HasField("pids"):
        out["pids"] = metrics.pids.current
        out["pids limit"] = UNLIMITED if metrics.pids.limit == 0 else normalise_limit(metrics.pids.limit)
    return out


@dataclass(frozen=True)
class FigureCheck:
    """One figure: the range the raw files allow (read before and after the Stats call) and the answer."""

    figure: str
    expected_min: int
    expected_max: int
    reported: int | None
    tolerance: int

    @property
    def ok(self) -> bool:
        if self.reported is None:
            return False
        if UNLIMITED in (self.expected_min, self.expected_max) or self.reported == UNLIMITED:
            return self.expected_min == self.expected_max == self.reported
        return self.expected_min - self.tolerance <= self.reported <= self.expected_max + self.tolerance

    @property
    def why(self) -> str:
        """Empty when ok; else what is wrong, in words."""
        if self.ok:
            return ""
        if self.reported is None:
            return "not reported"
        want = show(self.figure, self.expected_min)
        if self.expected_max != self.expected_min:
            want += f"..{show(self.figure, self.expected_max)}"
        return f"reported {show(self.figure, self.reported)}, the guest's files say {want}"

    def to_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "expected_min": self.expected_min,
            "expected_max": self.expected_max,
            "reported": self.reported,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "why": self.why or None,
        }


def check(
    metrics: cri.Metrics, metrics_format: str, before: RawCgroup, after: RawCgroup
) -> list[FigureCheck]:
    """Every figure of ``expected`` for one answer, judged against the bracket of two raw readings."""
    low, high = before.expected(metrics_format), after.expected(metrics_format)
    got = reported(metrics)
    checks = []
    for figure in ordered([*low, *high]):
        values = [v for v in (low.get(figure), high.get(figure)) if v is not None]
        if not values:
            continue
        tolerance = BYTE_TOLERANCE if figure in ("swap", "memory+swap") else 0
        checks.append(FigureCheck(figure, min(values), max(values), got.get(figure), tolerance))
    return checks


_FIRST = ("limit", "limit hits", "swap", "memory+swap", "pids", "pids limit")


def _order(figure: str) -> tuple[int, int, int, int]:
    if figure in _FIRST:
        return _FIRST.index(figure), 0, 0, 0
    _, device, label = figure.split(" ", 2)  # "io MAJ:MIN label"
    major, _, minor = device.partition(":")
    return len(_FIRST), int(major), int(minor), [name for _, name in IO_FIELDS].index(label)


def ordered(figures: Iterable[str]) -> list[str]:
    """Figures in report order: the single ones first, then block I/O by device."""
    return sorted(set(figures), key=_order)

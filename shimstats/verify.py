"""Judge a shim's Stats answer against ground truth: each figure, expected vs reported, and why it is off.

Ground truth is read just before and just after the Stats call; a reported figure passes when it lies in
[min(before, after) − tolerance, max(before, after) + tolerance]. The bracket absorbs what moves during the
call (counters, the kernel's per-cpu charge batches); the tolerance absorbs a shim that reads its files a
moment apart from ours. CPU times have their own tolerance, one clock tick, because cgroup v1 reports
user/system time in USER_HZ ticks.

For a failing figure, the likely cause is named from the numbers themselves (the reported Metrics and the
raw memory.stat): an unsubtracted inactive_file, cache counted as rss, unset total_* fields, swapped
user/system time. The causes come from the known bugs in docs/spec/mapping.md §3-§4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats.fake_containerd import StatsResult, call_stats, message_to_dict
from shimstats.ground_truth import FIGURE_NAMES, KERNEL_KEYS, Figures, GroundTruth, Source
from shimstats.table import human_bytes
from shimstats.ttrpc import Client

DEFAULT_TOLERANCE = 512 * 1024
"""Bytes. v1 usage is per-cpu batched (up to 64 pages per cpu); a few hundred KiB move between reads."""
CPU_TOLERANCE_NS = 10_000_000
"""One USER_HZ tick (100 Hz): v1 user/system time is counted in ticks."""

LABELS: dict[str, tuple[str, str]] = {
    "usage_bytes": ("usage", "usageBytes"),
    "working_set_bytes": ("working set", "workingSetBytes"),
    "available_bytes": ("available", "availableBytes"),
    "rss_bytes": ("rss", "rssBytes"),
    "page_faults": ("page faults", "pageFaults"),
    "major_page_faults": ("major page faults", "majorPageFaults"),
    "cpu_total_ns": ("cpu total", "usageCoreNanoSeconds"),
    "cpu_user_ns": ("cpu user", ""),
    "cpu_system_ns": ("cpu system", ""),
}
"""Each figure: its name for people, and the kubelet summary API field it becomes ('' if none)."""

BYTE_FIGURES = frozenset({"usage_bytes", "working_set_bytes", "available_bytes", "rss_bytes"})
CPU_FIGURES = frozenset({"cpu_total_ns", "cpu_user_ns", "cpu_system_ns"})


def show_figure(figure: str, value: int | None) -> str:
    """A figure for people: bytes in binary units, CPU time in seconds, counts as they are."""
    if value is None:
        return "-"
    if figure in BYTE_FIGURES:
        return human_bytes(value)
    if figure in CPU_FIGURES:
        return f"{value / 1e9:.3f} s"
    return str(value)


def reported_figures(metrics: cri.Metrics) -> Figures | None:
    """What containerd and the kubelet make of a Metrics message; None without a memory block."""
    memory = cri.cri_memory(metrics)
    if memory is None:
        return None
    user = system = None
    if metrics.HasField("cpu"):
        if isinstance(metrics, v1.Metrics):
            user, system = metrics.cpu.usage.user, metrics.cpu.usage.kernel
        else:
            user, system = metrics.cpu.user_usec * 1000, metrics.cpu.system_usec * 1000
    return Figures(
        **memory.to_dict(),
        cpu_total_ns=cri.cri_cpu_usage_nanos(metrics),
        cpu_user_ns=user,
        cpu_system_ns=system,
    )


def kubelet_view(figures: Figures) -> dict[str, int]:
    """The kubelet summary API's container memory (its CRI stats provider copies CRI's figures)."""
    out = figures.to_dict()
    return {LABELS[name][1]: value for name, value in out.items() if LABELS[name][1] and value is not None}


@dataclass(frozen=True)
class Check:
    """One figure: the expected range, what the shim reported, and the verdict."""

    figure: str
    expected_min: int
    expected_max: int
    reported: int | None
    tolerance: int
    cause: str = ""

    @property
    def difference(self) -> int | None:
        """Signed distance from the expected range (0 inside it); None if the shim reported nothing."""
        if self.reported is None:
            return None
        if self.reported < self.expected_min:
            return self.reported - self.expected_min
        if self.reported > self.expected_max:
            return self.reported - self.expected_max
        return 0

    @property
    def ok(self) -> bool:
        diff = self.difference
        return diff is not None and abs(diff) <= self.tolerance

    def to_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "kubelet": LABELS[self.figure][1] or None,
            "expected_min": self.expected_min,
            "expected_max": self.expected_max,
            "reported": self.reported,
            "difference": self.difference,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "cause": self.cause or None,
        }


@dataclass(frozen=True)
class Verification:
    """The verdict on one Stats answer."""

    result: StatsResult
    before: GroundTruth
    after: GroundTruth
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def to_json(self) -> dict[str, Any]:
        reported = reported_figures(self.result.metrics)
        return {
            "id": self.result.id,
            "ok": self.ok,
            "type_url": self.result.type_url,
            "ground_truth": {
                "source": self.after.source,
                "cgroup_version": self.after.version,
                "before": self.before.figures.to_dict(),
                "after": self.after.figures.to_dict(),
                "memory_stat": self.after.stat,
            },
            "checks": [c.to_json() for c in self.checks],
            "cri": self.result.memory.to_dict() if self.result.memory else None,
            "kubelet": kubelet_view(reported) if reported else None,
            "metrics": message_to_dict(self.result.metrics),
        }


def bracket_checks(
    reported: Figures | None,
    before: GroundTruth,
    after: GroundTruth,
    tolerance: int,
    cpu_tolerance: int = CPU_TOLERANCE_NS,
    figures: tuple[str, ...] = FIGURE_NAMES,
) -> list[Check]:
    """One Check per figure that both readings have, without causes: the bracket and the tolerance."""
    draft: list[Check] = []
    for name in figures:
        low, high = getattr(before.figures, name), getattr(after.figures, name)
        if low is None or high is None:
            continue  # the source has no such figure (e.g. no cpu controller): nothing to check against
        allowed = cpu_tolerance if name in CPU_FIGURES else (tolerance if name in BYTE_FIGURES else 0)
        value = getattr(reported, name) if reported is not None else None
        draft.append(Check(name, min(low, high), max(low, high), value, allowed))
    return draft


def judge(
    result: StatsResult,
    before: GroundTruth,
    after: GroundTruth,
    tolerance: int,
    cpu_tolerance: int = CPU_TOLERANCE_NS,
) -> Verification:
    """Check every figure of ``result`` against the bracket of two ground-truth readings."""
    reported = reported_figures(result.metrics)
    draft = bracket_checks(reported, before, after, tolerance, cpu_tolerance)
    failed = {c.figure for c in draft if not c.ok}
    context = _Context(result, after, reported, failed, tolerance)
    checks = tuple(
        c
        if c.ok
        else Check(c.figure, c.expected_min, c.expected_max, c.reported, c.tolerance, context.cause(c))
        for c in draft
    )
    return Verification(result, before, after, checks)


@dataclass(frozen=True)
class _Context:
    """What the cause finders look at: the answer, the truth after it, and which figures failed."""

    result: StatsResult
    truth: GroundTruth
    reported: Figures | None
    failed: set[str]
    tolerance: int

    def near(self, a: int | None, b: int | None, tolerance: int | None = None) -> bool:
        return (
            a is not None
            and b is not None
            and abs(a - b) <= (self.tolerance if tolerance is None else tolerance)
        )

    @property
    def is_v1(self) -> bool:
        return isinstance(self.result.metrics, v1.Metrics)

    def stat(self, key: str) -> int:
        return self.truth.stat.get(key, 0)

    def cause(self, check: Check) -> str:
        if self.reported is None:
            return "the shim sent no memory block"
        finder: Callable[[Check], str] = getattr(self, f"_why_{check.figure}", self._why_generic)
        return finder(check)

    def _why_generic(self, check: Check) -> str:
        return f"{LABELS[check.figure][0]} differs from the cgroup's own figure"

    def _why_usage_bytes(self, check: Check) -> str:
        swap = self.truth.response.cgroup_stats.memory_stats.swap_usage.usage
        if self.truth.version == 1 and swap and self.near(check.reported, swap):
            return "swap counted in usage: the shim sent memory+swap (memory.memsw) as usage"
        return "usage differs: another cgroup, or a reading taken long before or after ours"

    def _why_working_set_bytes(self, check: Check) -> str:
        assert self.reported is not None
        inactive_key = KERNEL_KEYS[self.truth.version].inactive_file
        inactive = self.stat(inactive_key)
        if "usage_bytes" in self.failed:
            return "follows from usage, which is already off"
        if inactive > self.tolerance and self.near(
            self.reported.working_set_bytes, self.reported.usage_bytes
        ):
            field = "total_inactive_file" if self.is_v1 else "inactive_file"
            where = f"the shim's {'v1' if self.is_v1 else 'v2'} Metrics carry no {field}"
            if self.is_v1 and self.truth.version == 2:
                where += " (v1 Metrics for a cgroup v2 guest, whose memory.stat has only inactive_file)"
            elif not self.is_v1:
                where += " (kata-containers#10280)"
            return (
                f"inactive_file not subtracted: reported working set equals usage; {where}, so "
                f"{human_bytes(inactive)} of inactive file cache count as used"
            )
        shown = human_bytes(inactive)
        return f"the inactive file figure the shim sent is not the cgroup's {inactive_key} ({shown})"

    def _why_available_bytes(self, check: Check) -> str:
        if "working_set_bytes" in self.failed or "usage_bytes" in self.failed:
            return "follows from the working set, which is already off"
        return "limit differs: the shim's memory limit is not the cgroup's"

    def _why_rss_bytes(self, check: Check) -> str:
        key = KERNEL_KEYS[self.truth.version].rss
        cache = self.stat("total_cache" if self.truth.version == 1 else "file")
        expected = check.expected_max
        if cache > self.tolerance and self.near(check.reported, expected + cache):
            return "cache counted as rss: reported rss equals rss + page cache"
        if check.reported == 0 and expected > 0:
            field = "total_rss" if self.is_v1 else "anon"
            shown = human_bytes(expected)
            return f"{field} not set: CRI reads {field}, the shim left it 0 (the cgroup's {key} is {shown})"
        return f"rss differs from the cgroup's {key}"

    def _why_page_faults(self, check: Check) -> str:
        return self._why_faults(check, "total_pg_fault" if self.is_v1 else "pgfault")

    def _why_major_page_faults(self, check: Check) -> str:
        return self._why_faults(check, "total_pg_maj_fault" if self.is_v1 else "pgmajfault")

    def _why_faults(self, check: Check, field: str) -> str:
        if check.reported == 0 and check.expected_max > 0:
            return f"{field} not set: CRI reads {field}, the shim left it 0"
        return f"{field} differs from the cgroup's counter"

    def _why_cpu_user_ns(self, check: Check) -> str:
        return self._why_cpu_split(check)

    def _why_cpu_system_ns(self, check: Check) -> str:
        return self._why_cpu_split(check)

    def _why_cpu_split(self, check: Check) -> str:
        assert self.reported is not None
        truth = self.truth.figures
        swapped = self.near(self.reported.cpu_user_ns, truth.cpu_system_ns, CPU_TOLERANCE_NS) and self.near(
            self.reported.cpu_system_ns, truth.cpu_user_ns, CPU_TOLERANCE_NS
        )
        if swapped:
            return "user/system swapped: reported user time is the cgroup's system time and vice versa"
        return f"{LABELS[check.figure][0]} time differs from the cgroup's"


async def verify(
    shim: str, container_id: str, source: Source, *, namespace: str, tolerance: int, timeout: float
) -> Verification:
    """Read ground truth, call Stats as containerd does, read ground truth again, and judge.

    The shim connection is made first so that the three reads follow each other closely. Raises
    TtrpcError (the shim or agent refused), TransportError/OSError (unreachable), MetricsDecodeError,
    NoGroundTruth.
    """
    client = await Client.connect(shim, timeout=timeout)
    try:
        before = await source.read()
        result = await call_stats(client, container_id, namespace=namespace, timeout=timeout)
        after = await source.read()
    finally:
        await client.close()
    return judge(result, before, after, tolerance)

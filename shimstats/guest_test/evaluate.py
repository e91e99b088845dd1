"""The verdict on one phase: each answer against the guest's own files, captured around it.

The guest captured the frozen cgroup before and after the host's Stats calls. Each column is one Metrics
message judged against that bracket: CRI's figures and CPU by ``shimstats.verify.judge`` (the same oracle
``verify`` uses), the rest by ``checks``. Columns:

* ``ours_v1``, ``ours_v2``: live, our adapter's Task/Stats answers through the fake containerd client;
* ``kata_go_v1_host``, ``kata_go_v2_host``, ``kata_rs``: what the Kata Go shim and runtime-rs would answer
  for the same guest data (``shimstats.compare``'s mappings of the agent reply read from the first
  capture), shown for comparison and never part of the verdict.

A phase agrees when both live columns pass every check and the phase did what it is for (``phases``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats.compare import mapped_columns
from shimstats.fake_containerd import StatsResult
from shimstats.ground_truth import CgroupSource, GroundTruth
from shimstats.guest_test import checks
from shimstats.guest_test.phases import Phase
from shimstats.verify import DEFAULT_TOLERANCE, Verification, judge

LIVE = (("ours_v1", "ours v1 (live)", "v1"), ("ours_v2", "ours v2 (live)", "v2"))
"""The live columns: key, label and the adapter's --metrics-format."""


@dataclass(frozen=True)
class Column:
    """One answer and its verdict, or why there is none (``error``)."""

    key: str
    label: str
    live: bool
    verification: Verification | None = None
    figures: tuple[checks.FigureCheck, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.verification is not None
            and self.verification.ok
            and all(f.ok for f in self.figures)
        )

    def to_json(self) -> dict[str, Any]:
        v = self.verification
        return {
            "key": self.key,
            "label": self.label,
            "live": self.live,
            "ok": self.ok,
            "error": self.error or None,
            "type_url": v.result.type_url if v else None,
            "cri": [c.to_json() for c in v.checks] if v else [],
            "figures": [f.to_json() for f in self.figures],
        }


@dataclass(frozen=True)
class PhaseResult:
    """One phase: what ran, what the guest's files say, every column, and whether the phase did its job."""

    phase: Phase
    truth: GroundTruth
    raw: checks.RawCgroup
    columns: tuple[Column, ...]
    effects: tuple[tuple[str, bool], ...]
    notes: Mapping[str, Any] = field(default_factory=dict)
    step_seconds: float = 0.0
    fixture: str = ""

    @property
    def live(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.live)

    @property
    def ok(self) -> bool:
        return (
            len(self.live) == len(LIVE) and all(c.ok for c in self.live) and all(ok for _, ok in self.effects)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase.name,
            "title": self.phase.title,
            "container_id": self.phase.container_id,
            "cgroup_path": self.phase.cgroup_path,
            "workload": self.phase.workload,
            "ok": self.ok,
            "effects": [{"effect": text, "ok": ok} for text, ok in self.effects],
            "notes": dict(self.notes),
            "step_seconds": self.step_seconds,
            "fixture": self.fixture or None,
            "guest": {
                "cgroup_version": self.truth.version,
                "figures": self.truth.figures.to_dict(),
                "memory_stat": self.truth.stat,
                "events": dict(self.raw.events),
            },
            "columns": [c.to_json() for c in self.columns],
        }


def container_dir(capture: Path, cgroup_path: str) -> Path:
    """The container's memory directory inside a capture (v2: its one directory; v1: under memory/)."""
    root = capture / "cgroup"
    rel = cgroup_path.strip("/")
    return root / rel if (root / "cgroup.controllers").exists() else root / "memory" / rel


async def capture_truth(capture: Path, cgroup_path: str) -> GroundTruth:
    """The guest agent's reading of a captured cgroup, as verify's ground truth."""
    source = CgroupSource(str(container_dir(capture, cgroup_path)), meminfo=str(capture / "meminfo"))
    try:
        return await source.read()
    finally:
        await source.close()


def _format(result: StatsResult) -> str:
    return "v1" if isinstance(result.metrics, v1.Metrics) else "v2"


async def evaluate(
    phase: Phase,
    before: Path,
    after: Path,
    live: Mapping[str, StatsResult | str],
    tolerance: int = DEFAULT_TOLERANCE,
) -> PhaseResult:
    """Judge the live answers (by column key; a string is the error asking failed with) and the Kata
    mappings against the two captures of ``phase``'s cgroup."""
    path = phase.cgroup_path
    truth_before, truth_after = await capture_truth(before, path), await capture_truth(after, path)
    raw_before, raw_after = checks.RawCgroup.read(before, path), checks.RawCgroup.read(after, path)
    columns: list[Column] = []
    for key, label, fmt in LIVE:
        answer = live.get(key, "not asked")
        if isinstance(answer, str):
            columns.append(Column(key, label, live=True, error=answer))
            continue
        if _format(answer) != fmt:
            error = f"asked for {fmt} Metrics, got {answer.type_url}"
            columns.append(Column(key, label, live=True, error=error))
            continue
        verdict = judge(answer, truth_before, truth_after, tolerance)
        figures = checks.check(answer.metrics, fmt, raw_before, raw_after)
        columns.append(Column(key, label, live=True, verification=verdict, figures=tuple(figures)))
    for mapped in mapped_columns(phase.container_id, truth_before):
        if mapped.key.startswith("ours_") or mapped.verification is None:
            continue  # our translation is shown live, through the adapter
        result = mapped.verification.result
        figures = checks.check(result.metrics, _format(result), raw_before, raw_before)
        columns.append(Column(mapped.key, mapped.label, False, mapped.verification, tuple(figures)))
    effects = tuple((e.text, bool(e.holds(raw_before))) for e in phase.effects)
    return PhaseResult(phase, truth_before, raw_before, tuple(columns), effects)

"""Side by side for one container: the guest's own figures and what each shim makes of them.

Columns, each judged against the guest's own figures (shimstats.verify.judge, so a difference comes with
its likely cause):

* computed from ONE agent answer, so any difference is the shim's mapping, never timing: our translation
  (v1 and v2 output), the Kata Go shim on a v1 host and on a v2 host, Kata runtime-rs (shimstats.emulate);
  compared exactly, but for CPU time at v2's 1 µs resolution;
* live, asked between two agent readings like verify does: a shim at ``--shim`` (Task/Stats over ttrpc),
  containerd's Tasks.Metrics at ``--containerd`` (gRPC) and containerd's CRI ContainerStats at ``--cri``
  (the kubelet's own input, after containerd's formulas); compared within the byte tolerance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shimstats import cri, translate
from shimstats._proto.kata import agent_pb2
from shimstats.emulate import kata_go, kata_rs
from shimstats.fake_containerd import StatsResult, call_stats
from shimstats.ground_truth import FIGURE_NAMES, Figures, GroundTruth, Source
from shimstats.ttrpc import Client, TtrpcError
from shimstats.verify import CPU_FIGURES, Check, Verification, bracket_checks, judge

MAPPING_CPU_TOLERANCE_NS = 1000
"""v2 Metrics carry CPU time in µs: a translation to v2 may drop up to 999 ns, never more."""

MAPPINGS: tuple[tuple[str, str, Callable[[agent_pb2.StatsContainerResponse], cri.Metrics]], ...] = (
    ("ours_v1", "ours v1", lambda r: translate.translate(r, "v1")),
    ("ours_v2", "ours v2", lambda r: translate.translate(r, "v2")),
    ("kata_go_v1_host", "Kata Go, v1 host", lambda r: kata_go.metrics(r, "v1")),
    ("kata_go_v2_host", "Kata Go, v2 host", lambda r: kata_go.metrics(r, "v2")),
    ("kata_rs", "Kata runtime-rs", kata_rs.metrics),
)
"""The computed columns: key, label, and the function from an agent answer to Metrics."""


CRI_FIGURES = tuple(name for name in FIGURE_NAMES if name not in CPU_FIGURES or name == "cpu_total_ns")
"""What CRI's ContainerStats carries: the memory figures and total CPU time (no user/system split)."""
CRI_TYPE = "CRI stats"
CRI_LABEL = "containerd CRI"
NO_METRICS = "unexpected metrics response: []"
"""containerd 1.6's ContainerStats error when Tasks.Metrics returned nothing for the container."""


@dataclass(frozen=True)
class Column:
    """One source's answer and its verdict; ``error`` instead when a live source could not be asked.

    A shim or containerd answer comes as ``verification`` (the Metrics and their checks); CRI's answer has
    no Metrics, only figures, so it comes as ``cri_checks``.
    """

    key: str
    label: str
    live: bool
    verification: Verification | None = None
    error: str = ""
    cri_checks: tuple[Check, ...] | None = None

    @property
    def checks(self) -> tuple[Check, ...] | None:
        if self.verification is not None:
            return self.verification.checks
        return self.cri_checks

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks or () if not c.ok)

    def to_json(self) -> dict[str, Any]:
        v, checks = self.verification, self.checks
        return {
            "key": self.key,
            "label": self.label,
            "live": self.live,
            "type_url": v.result.type_url if v else (CRI_TYPE if self.cri_checks is not None else None),
            "figures": {c.figure: c.reported for c in checks} if checks is not None else None,
            "differs": {c.figure: c.cause for c in self.failures} if checks is not None else None,
            "error": self.error or None,
        }


@dataclass(frozen=True)
class Comparison:
    """The guest's own figures (the reading the computed columns come from) and every column."""

    container_id: str
    guest: GroundTruth
    tolerance: int
    columns: tuple[Column, ...]

    @property
    def failed_sources(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.error)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.container_id,
            "tolerance_bytes": self.tolerance,
            "guest": {
                "source": self.guest.source,
                "cgroup_version": self.guest.version,
                "figures": self.guest.figures.to_dict(),
            },
            "columns": [c.to_json() for c in self.columns],
        }


def as_result(container_id: str, metrics: cri.Metrics) -> StatsResult:
    """Metrics as if a shim had answered Stats with them (type URL as containerd's typeurl writes it)."""
    return StatsResult(
        id=container_id,
        type_url=cri.encode_metrics(metrics).type_url,
        metrics=metrics,
        memory=cri.cri_memory(metrics),
    )


def mapped_columns(container_id: str, guest: GroundTruth) -> tuple[Column, ...]:
    """The computed columns for one agent answer (pure: no I/O)."""
    columns = []
    for key, label, mapping in MAPPINGS:
        result = as_result(container_id, mapping(guest.response))
        verdict = judge(result, guest, guest, tolerance=0, cpu_tolerance=MAPPING_CPU_TOLERANCE_NS)
        columns.append(Column(key, label, live=False, verification=verdict))
    return tuple(columns)


async def _shim_stats(address: str, container_id: str, namespace: str, timeout: float) -> StatsResult:
    async with await Client.connect(address, timeout=timeout) as client:
        return await call_stats(client, container_id, namespace=namespace, timeout=timeout)


def cri_figures(container_id: str, address: str, timeout: float) -> Figures | None:
    """CRI ContainerStats for the container as Figures; None when CRI sent no complete memory block."""
    # Imported here: grpcio costs ~80 ms to import, which every other shimstats command would pay.
    from shimstats.cri_client import CriClient, CriError

    with CriClient(address, timeout=timeout) as client:
        try:
            stats = client.container_stats(container_id)
        except CriError as exc:
            if NO_METRICS in str(exc):
                raise CriError(
                    f"{exc}: containerd got no Stats answer from the container's shim (its log says why); "
                    "the kubelet, which lists stats instead, shows this container's working set as 0",
                    exc.code,
                ) from None
            raise
    memory = stats.memory.complete() if stats.memory is not None else None
    if memory is None:
        return None
    return Figures(**memory.to_dict(), cpu_total_ns=stats.cpu_usage_core_nanos)


def cri_column(reported: Figures | None, before: GroundTruth, after: GroundTruth, tolerance: int) -> Column:
    """The CRI column: each figure CRI carries, bracketed like the other live columns, with its cause."""
    checks = []
    for check in bracket_checks(reported, before, after, tolerance, figures=CRI_FIGURES):
        if check.ok:
            checks.append(check)
            continue
        if reported is None:
            cause = (
                "CRI sent no memory figures: the shim's Stats failed (containerd lists the container "
                "without figures; the kubelet then shows 0)"
            )
        else:
            cause = "CRI's figure is not the guest's: see the containerd column for the shim's own answer"
        checks.append(
            Check(
                check.figure, check.expected_min, check.expected_max, check.reported, check.tolerance, cause
            )
        )
    return Column("cri", CRI_LABEL, live=True, cri_checks=tuple(checks))


async def compare(
    container_id: str,
    source: Source,
    *,
    shim: str | None = None,
    containerd: str | None = None,
    cri_address: str | None = None,
    namespace: str,
    tolerance: int,
    timeout: float,
) -> Comparison:
    """Read the guest, ask the live sources, read the guest again; build every column.

    The guest reading's own errors propagate (nothing can be compared without it); a live source's
    error becomes that column's ``error``.
    """
    before = await source.read()
    live: list[tuple[str, str, StatsResult | str]] = []
    if shim is not None:
        try:
            live.append(("shim", "live shim", await _shim_stats(shim, container_id, namespace, timeout)))
        except (TtrpcError, OSError, EOFError, cri.MetricsDecodeError) as exc:
            live.append(("shim", "live shim", f"{type(exc).__name__}: {exc}"))
    if containerd is not None:
        # Imported here: grpcio costs ~80 ms to import, which every other shimstats command would pay.
        from shimstats import containerd_grpc

        try:
            answer: StatsResult | str = await asyncio.to_thread(
                containerd_grpc.task_metrics, containerd, container_id, namespace=namespace, timeout=timeout
            )
        except (containerd_grpc.ContainerdError, cri.MetricsDecodeError) as exc:
            answer = str(exc)
        live.append(("containerd", "containerd", answer))
    cri_reported: Figures | None = None
    cri_error: str | None = None
    if cri_address is not None:
        from shimstats.cri_client import CriError

        try:
            cri_reported = await asyncio.to_thread(cri_figures, container_id, cri_address, timeout)
        except CriError as exc:
            cri_error = str(exc)
    after = await source.read() if live or cri_address is not None else before
    columns = list(mapped_columns(container_id, after))
    for key, label, outcome in live:
        if isinstance(outcome, str):
            columns.append(Column(key, label, live=True, error=outcome))
        else:
            columns.append(
                Column(key, label, live=True, verification=judge(outcome, before, after, tolerance))
            )
    if cri_error is not None:
        columns.append(Column("cri", CRI_LABEL, live=True, error=cri_error))
    elif cri_address is not None:
        columns.append(cri_column(cri_reported, before, after, tolerance))
    return Comparison(container_id, after, tolerance, tuple(columns))

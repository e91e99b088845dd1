"""Side by side for one container: the guest's own figures and what each shim makes of them.

Columns, each judged against the guest's own figures (shimstats.verify.judge, so a difference comes with
its likely cause):

* computed from ONE agent answer, so any difference is the shim's mapping, never timing: our translation
  (v1 and v2 output), the Kata Go shim on a v1 host and on a v2 host, Kata runtime-rs (shimstats.emulate);
  compared exactly, but for CPU time at v2's 1 µs resolution;
* live, asked between two agent readings like verify does: a shim at ``--shim`` (Task/Stats over ttrpc)
  and containerd's Tasks.Metrics at ``--containerd`` (gRPC); compared within the byte tolerance.
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
from shimstats.ground_truth import GroundTruth, Source
from shimstats.ttrpc import Client, TtrpcError
from shimstats.verify import Verification, judge

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


@dataclass(frozen=True)
class Column:
    """One source's answer and its verdict; ``error`` instead when a live source could not be asked."""

    key: str
    label: str
    live: bool
    verification: Verification | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        v = self.verification
        return {
            "key": self.key,
            "label": self.label,
            "live": self.live,
            "type_url": v.result.type_url if v else None,
            "figures": {c.figure: c.reported for c in v.checks} if v else None,
            "differs": {c.figure: c.cause for c in v.failures} if v else None,
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


async def compare(
    container_id: str,
    source: Source,
    *,
    shim: str | None = None,
    containerd: str | None = None,
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
    after = await source.read() if live else before
    columns = list(mapped_columns(container_id, after))
    for key, label, outcome in live:
        if isinstance(outcome, str):
            columns.append(Column(key, label, live=True, error=outcome))
        else:
            columns.append(
                Column(key, label, live=True, verification=judge(outcome, before, after, tolerance))
            )
    return Comparison(container_id, after, tolerance, tuple(columns))

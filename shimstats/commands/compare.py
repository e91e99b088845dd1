"""`shimstats compare`: one container as the guest, our adapter, the Kata shims and containerd see it.

One row per figure, one column per source; a figure that differs from the guest's own is marked with *
and its likely cause is listed under the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from shimstats import cri
from shimstats.commands import _args
from shimstats.compare import CRI_TYPE, Column, Comparison, compare
from shimstats.fake_containerd import DEFAULT_NAMESPACE
from shimstats.ground_truth import FIGURE_NAMES, NoGroundTruth, SampleSource
from shimstats.table import render_right
from shimstats.ttrpc import TtrpcError
from shimstats.verify import DEFAULT_TOLERANCE, LABELS, show_figure

EXIT_OK, EXIT_SOURCE_FAILED, EXIT_NO_GUEST = 0, 1, 2

EPILOG = """\
examples:
  # a Kata container: the guest agent's answer through every mapping, and what our adapter serves
  shimstats compare --id web-1 --agent vsock://3:2048 --shim unix:///run/shimstats/kata-1.sock

  # a runc container on this host, next to containerd's own Tasks.Metrics (our agent reads the host cgroup)
  shimstats-agent --listen unix:///tmp/a.sock --container web-1=/k8s.io/web-1 &
  shimstats compare --id web-1 --agent unix:///tmp/a.sock \\
      --containerd /run/containerd/containerd.sock --namespace k8s.io

  # a pod's container as the kubelet sees it: CRI's figures (CRI listens on containerd's own socket)
  shimstats compare --id 3f2a... --agent vsock://3:2048 --cri unix:///run/containerd/containerd.sock

  # a guest memory.stat from a bug report: what each Kata shim would have made of it
  shimstats compare --id web-1 --memory-stat memory.stat --usage 218103808

columns:
  guest files        CRI's figures computed from the guest cgroup's own memory.stat (the truth)
  ours v1, ours v2   our translation of the same agent answer, in each Metrics format
  Kata Go, v1 host   what containerd-shim-kata-v2 answers on a cgroup v1 host (v1 Metrics, whatever the guest)
  Kata Go, v2 host   the same on a cgroup v2 host (v2 Metrics; user and system time swapped)
  Kata runtime-rs    what runtime-rs answers (always v1 Metrics, misspelled page-fault keys)
  live shim          Task/Stats of the shim at --shim, read between two agent readings
  containerd         containerd's Tasks.Metrics over gRPC at --containerd
  containerd CRI     CRI ContainerStats at --cri: the kubelet's own input, after containerd's formulas
The computed columns come from one agent answer, so their differences are mappings, never timing.

exit codes: 0 every source answered; 1 a live source (--shim, --containerd, --cri) failed (the table is still
printed, with the error); 2 no guest figures (agent unreachable, unknown id, no such cgroup, a malformed
memory.stat)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="the guest's figures next to ours, the Kata shims' and containerd's, differences marked",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--id", required=True, help="container (task) id")
    _args.add_guest_source(
        p,
        agent_help="the guest agent (ours or kata-agent)",
        cgroup_help="or a cgroup directory on this machine, read directly",
    )
    for flag, check, what in (
        ("--shim", _args.address, "this shim's Task/Stats (ours, runc, kata)"),
        ("--containerd", _args.grpc_address, "containerd's Tasks.Metrics (gRPC socket)"),
        ("--cri", _args.grpc_address, "the CRI's ContainerStats (the kubelet's view)"),
    ):
        p.add_argument(flag, type=check, metavar="ADDR", help=f"also ask {what}")
    p.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="containerd namespace for --shim and --containerd"
    )
    _args.add_tolerance(p, DEFAULT_TOLERANCE, "the live columns' byte figures")
    _args.add_timeout_and_json(p)
    p.set_defaults(run=run)


async def _compare(args: argparse.Namespace, sample: SampleSource | None) -> Comparison:
    source = _args.open_guest_source(args, sample)
    try:
        return await compare(
            args.id,
            source,
            shim=args.shim,
            containerd=args.containerd,
            cri_address=args.cri,
            namespace=args.namespace,
            tolerance=args.tolerance,
            timeout=args.timeout,
        )
    finally:
        await source.close()


def run(args: argparse.Namespace) -> int:
    try:
        comparison = asyncio.run(_compare(args, _args.read_sample(args)))
    except TtrpcError as exc:
        print(f"shimstats compare: container {args.id!r}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return EXIT_NO_GUEST
    except NoGroundTruth as exc:
        print(f"shimstats compare: container {args.id!r}: {exc}", file=sys.stderr)
        return EXIT_NO_GUEST
    if args.json:
        print(json.dumps(comparison.to_json(), indent=2))
    else:
        print(format_comparison(comparison))
    for column in comparison.failed_sources:
        print(f"shimstats compare: {column.label}: {column.error}", file=sys.stderr)
    return EXIT_SOURCE_FAILED if comparison.failed_sources else EXIT_OK


def _type(column: Column) -> str:
    if column.cri_checks is not None:
        return CRI_TYPE
    if column.verification is None:
        return "error"
    url = column.verification.result.type_url
    return {cri.V1_TYPE_URL: "v1 Metrics", cri.V2_TYPE_URL: "v2 Metrics"}.get(url, url)


def _cell(column: Column, figure: str) -> str:
    checks = column.checks
    if checks is None:
        return "-  "
    check = next((c for c in checks if c.figure == figure), None)
    if check is None:
        return "-  "
    return show_figure(figure, check.reported) + ("  " if check.ok else " *")


def format_comparison(comparison: Comparison) -> str:
    """The people-table, then the cause of every marked cell and the error of every failed source."""
    guest = comparison.guest
    columns = comparison.columns
    # Every value cell ends in two characters, " *" for a difference, so that the digits line up.
    header = ("FIGURE", "guest files  ", *(f"{c.label}  " for c in columns))
    rows: list[tuple[str, ...]] = [
        ("type", f"cgroup v{guest.version}  ", *(f"{_type(c)}  " for c in columns))
    ]
    for figure in FIGURE_NAMES:
        truth = getattr(guest.figures, figure)
        if truth is None:
            continue
        rows.append(
            (LABELS[figure][0], show_figure(figure, truth) + "  ", *(_cell(c, figure) for c in columns))
        )
    lines = [
        f"container {comparison.container_id}: guest figures from {guest.source} (cgroup v{guest.version})",
        render_right(header, rows),
    ]
    notes = [
        f"* {c.label}, {LABELS[check.figure][0]}: {check.cause}" for c in columns for check in c.failures
    ]
    notes += [f"! {c.label}: {c.error}" for c in columns if c.error]
    if notes:
        lines.append("")
        lines.extend(notes)
    else:
        lines.append("every source agrees with the guest's own figures")
    return "\n".join(lines)

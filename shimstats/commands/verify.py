"""`shimstats verify`: call a shim's Task/Stats as containerd would; check each figure against ground truth.

Ground truth is the container's own cgroup files (--cgroup, read on this machine right before and right
after the call) or a guest agent's raw answer (--agent). Each figure CRI and the kubelet show is compared;
a mismatch is named with its likely cause.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from shimstats import cri
from shimstats.commands import _args
from shimstats.commands.compare import render_right
from shimstats.fake_containerd import DEFAULT_NAMESPACE
from shimstats.ground_truth import NoGroundTruth, SampleSource
from shimstats.ttrpc import TtrpcError
from shimstats.verify import DEFAULT_TOLERANCE, LABELS, Check, Verification, show_figure, verify

EXIT_OK, EXIT_MISMATCH, EXIT_UNVERIFIED = 0, 1, 2

EPILOG = f"""\
examples:
  # a runc container on a cgroup v1 host: its memory cgroup is the ground truth
  shimstats verify --shim unix:///run/containerd/s/3f2a... --id web-1 --namespace k8s.io \\
      --cgroup /sys/fs/cgroup/memory/k8s.io/web-1

  # a Kata container behind our adapter: the guest agent's raw answer is the ground truth
  shimstats verify --shim unix:///run/shimstats/kata-1.sock --id web-1 --agent vsock://3:2048 --json

  # a shim serving a known state (a capture): its memory.stat and usage, given by hand, are the truth
  shimstats verify --shim unix:///tmp/adapter.sock --id web-1 --memory-stat memory.stat --usage 108486656

figures: usage, working set, available, rss, page faults (CRI ContainerStats; the kubelet's summary API
copies them as usageBytes, workingSetBytes, availableBytes, rssBytes) and CPU time (total, user, system).
The expected value is computed from the cgroup's own memory.stat by containerd's CRI formulas (working set
= usage - inactive_file, 0 when the cache is larger). A figure passes when it lies within --tolerance of
the range spanned by the readings before and after the call (CPU: within one clock tick).

exit codes: 0 every figure agrees; 1 a mismatch (each is named with its likely cause); 2 could not verify
(shim or agent unreachable or refusing, unknown id, no such cgroup, undecodable answer).
default tolerance: {DEFAULT_TOLERANCE} bytes."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="check a shim's Stats answer against the cgroup's own files (exit 1 on a mismatch)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shim",
        required=True,
        type=_args.address,
        metavar="ADDR",
        help="shim address: unix:///path or vsock://CID:PORT",
    )
    p.add_argument("--id", required=True, help="container (task) id")
    _args.add_guest_source(
        p,
        agent_help="a guest agent whose raw StatsContainer answer is the truth",
        cgroup_help="the container's cgroup: v1 memory directory or v2 directory",
    )
    p.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="containerd namespace (default: %(default)s)"
    )
    _args.add_tolerance(p, DEFAULT_TOLERANCE, "byte figures")
    _args.add_timeout_and_json(p)
    p.set_defaults(run=run)


async def _verify(args: argparse.Namespace, sample: SampleSource | None) -> Verification:
    source = _args.open_guest_source(args, sample)
    try:
        return await verify(
            args.shim,
            args.id,
            source,
            namespace=args.namespace,
            tolerance=args.tolerance,
            timeout=args.timeout,
        )
    finally:
        await source.close()


def run(args: argparse.Namespace) -> int:
    try:
        verification = asyncio.run(_verify(args, _args.read_sample(args)))
    except TtrpcError as exc:
        print(f"shimstats verify: container {args.id!r}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return EXIT_UNVERIFIED
    except (OSError, EOFError) as exc:
        print(f"shimstats verify: cannot reach shim at {args.shim}: {exc}", file=sys.stderr)
        return EXIT_UNVERIFIED
    except (cri.MetricsDecodeError, NoGroundTruth) as exc:
        print(f"shimstats verify: container {args.id!r}: {exc}", file=sys.stderr)
        return EXIT_UNVERIFIED
    if args.json:
        print(json.dumps(verification.to_json(), indent=2))
    else:
        print(format_verification(verification, args.shim))
    return EXIT_OK if verification.ok else EXIT_MISMATCH


def _signed(figure: str, value: int | None) -> str:
    if value is None:
        return "-"
    text = show_figure(figure, abs(value))
    return text if value == 0 else ("+" if value > 0 else "-") + text


def _expected(check: Check) -> str:
    low, high = show_figure(check.figure, check.expected_min), show_figure(check.figure, check.expected_max)
    return low if low == high else f"{low}..{high}"


def format_verification(v: Verification, shim: str) -> str:
    """The people-table: one row per figure, then the cause of each failure."""
    head = (
        f"container {v.result.id} at {shim}: {v.result.type_url}\n"
        f"ground truth: {v.after.source} (cgroup v{v.after.version}), read before and after the call"
    )
    rows = [
        (
            LABELS[c.figure][0],
            LABELS[c.figure][1] or "-",
            _expected(c),
            show_figure(c.figure, c.reported),
            _signed(c.figure, c.difference),
            "ok" if c.ok else "FAIL",
        )
        for c in v.checks
    ]
    table = render_right(("FIGURE", "KUBELET", "EXPECTED", "REPORTED", "DIFFERENCE", "VERDICT"), rows)
    lines = [head, table]
    for c in v.failures:
        lines.append(f"FAIL {LABELS[c.figure][0]}: {c.cause}")
    lines.append("verdict: " + ("every figure agrees" if v.ok else f"{len(v.failures)} figure(s) disagree"))
    return "\n".join(lines)

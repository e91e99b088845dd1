"""`shimstats explain`: what the working set is made of, and the likely story behind it.

"kubectl top says 800Mi but my app uses 50": the working set the kubelet judges a container by is
usage − inactive_file, so page cache the application re-reads, tmpfs files and kernel caches count too.
This breaks it down from the container's own memory.stat and names the part that dominates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from shimstats.commands._args import add_guest_source, add_timeout_and_json, open_guest_source, read_sample
from shimstats.commands.compare import render_right
from shimstats.explain import EVICTION_HARD_DEFAULT, Explanation, explain
from shimstats.ground_truth import NoGroundTruth, SampleSource
from shimstats.table import human_bytes
from shimstats.ttrpc import TtrpcError

EXIT_OK, EXIT_UNREADABLE = 0, 2

EPILOG = """\
examples:
  shimstats explain --id web-1 --agent vsock://3:2048
  shimstats explain --id web-1 --cgroup /sys/fs/cgroup/memory/k8s.io/web-1 --json
  # a memory.stat from a bug report, with the usage it came with (v1 or v2, told by the keys)
  pbpaste | shimstats explain --id web-1 --memory-stat - --usage 800Mi --limit 1Gi

parts of the working set: anon (heap, stacks), active file cache (files re-read recently: counted as used,
kubernetes#43916), shmem/tmpfs, kernel (slab, stacks, page tables), socket buffers (cgroup v2), other.
inactive file cache is shown apart: the kubelet does not count it, a shim that forgets to subtract it does.

exit codes: 0 explained; 2 the agent, cgroup or memory.stat could not be read (unreachable, unknown id, no
such cgroup, a malformed memory.stat)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        help="break a container's working set down (anon, file cache, kernel...) and name the likely cause",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--id", required=True, help="container id (for --agent; a label otherwise)")
    add_guest_source(
        p,
        agent_help="the guest agent (ours or kata-agent)",
        cgroup_help="a cgroup directory on this machine (v1 memory or v2)",
    )
    add_timeout_and_json(p)
    p.set_defaults(run=run)


async def _explain(args: argparse.Namespace, sample: SampleSource | None) -> Explanation:
    source = open_guest_source(args, sample)
    try:
        return explain(await source.read(), args.id)
    finally:
        await source.close()


def run(args: argparse.Namespace) -> int:
    try:
        explanation = asyncio.run(_explain(args, read_sample(args)))
    except TtrpcError as exc:
        print(f"shimstats explain: container {args.id!r}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (NoGroundTruth, ValueError) as exc:
        print(f"shimstats explain: container {args.id!r}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(json.dumps(explanation.to_json(), indent=2) if args.json else format_explanation(explanation))
    return EXIT_OK


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


def format_explanation(e: Explanation) -> str:
    """The breakdown table, the limit headroom and the stories."""
    rows: list[tuple[str, str, str]] = []
    for part in e.parts:
        if not part.in_working_set:
            continue
        rows.append((part.label, human_bytes(part.bytes), _pct(e.share(part))))
        rows.extend((f"  {name}", human_bytes(value), "") for name, value in part.detail)
    rows.append(("= working set", human_bytes(e.working_set), "100%"))
    outside = [p for p in e.parts if not p.in_working_set]
    rows.extend((p.label, human_bytes(p.bytes), f"{_pct(e.share(p))} of usage") for p in outside)
    lines = [
        f"container {e.container_id}: cgroup {e.guest} guest, read from {e.source}",
        f"usage {human_bytes(e.usage)}, working set {human_bytes(e.working_set)} (usage - inactive_file: "
        "what the kubelet and `kubectl top` count)",
        "",
        render_right(("PART", "BYTES", "OF WORKING SET"), rows),
        "",
    ]
    lines.extend(_limit_lines(e))
    lines.append("likely story:")
    lines.extend(f"  - {story.text}" for story in e.stories)
    return "\n".join(lines)


def _limit_lines(e: Explanation) -> list[str]:
    if e.limit is None or e.available is None:
        return ["no memory limit: the working set only matters to the node's memory.available signal", ""]
    headroom = e.available
    over = e.working_set > e.limit
    lines = [
        f"limit {human_bytes(e.limit)}: the working set is "
        + (f"{_pct(e.working_set / e.limit)} of it, " if e.limit else "all over it, ")
        + ("OVER the limit" if over else f"{human_bytes(headroom)} left (CRI availableBytes)"),
    ]
    if not over:
        to_signal = headroom - EVICTION_HARD_DEFAULT
        lines.append(
            "the kubelet's eviction signal memory.available (capacity - working set, default hard threshold "
            f"{human_bytes(EVICTION_HARD_DEFAULT)}) applied to this limit: "
            + (f"{human_bytes(to_signal)} to go" if to_signal > 0 else "already below the threshold")
        )
    lines.append("")
    return lines

"""`shimstats stats`: call Task/Stats on a shim as containerd would and show what CRI sees."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from shimstats import cri
from shimstats.commands._args import add_timeout_and_json, address
from shimstats.fake_containerd import DEFAULT_NAMESPACE, StatsResult, call_stats
from shimstats.table import human_bytes, render
from shimstats.ttrpc import Client, TtrpcError

EXIT_OK, EXIT_STATUS, EXIT_UNREACHABLE = 0, 1, 2

EPILOG = """\
examples:
  shimstats stats --shim unix:///run/containerd/s/3f2a... --id web-1 --namespace k8s.io
  shimstats stats --shim unix:///tmp/adapter.sock --id web-1 --json | jq .cri.working_set_bytes

The shim's ttrpc socket of a running task is /run/containerd/s/<sha256 of "<containerd address>/<ns>/<id>">.
The "cri" figures follow containerd's CRI formulas: working set = usage - inactive file (0 when the
cache is larger), available = limit - working set (0 when unlimited), rss = total_rss (v1) or anon (v2).

exit codes: 0 ok; 1 the shim answered with an error status; 2 the shim could not be reached
or its answer could not be decoded."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stats",
        help="call containerd.task.v2.Task/Stats on a shim and show CRI's view",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shim",
        required=True,
        type=address,
        metavar="ADDR",
        help="shim address: unix:///path or vsock://CID:PORT",
    )
    p.add_argument("--id", required=True, help="container (task) id")
    p.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="containerd namespace (default: %(default)s)"
    )
    add_timeout_and_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_fetch(args.shim, args.id, args.namespace, args.timeout))
    except TtrpcError as exc:
        print(f"shimstats: Stats {args.id!r} at {args.shim}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return EXIT_STATUS
    except (OSError, EOFError) as exc:
        print(f"shimstats: cannot reach shim at {args.shim}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except cri.MetricsDecodeError as exc:
        print(f"shimstats: Stats {args.id!r} at {args.shim}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=False))
    else:
        print(format_table(result))
    return EXIT_OK


async def _fetch(address: str, container_id: str, namespace: str, timeout: float) -> StatsResult:
    client = await Client.connect(address, timeout=timeout)
    try:
        return await call_stats(client, container_id, namespace=namespace, timeout=timeout)
    finally:
        await client.close()


def format_table(result: StatsResult) -> str:
    head = f"container {result.id}: {result.type_url}"
    if result.memory is None:
        return head + "\n(no memory block in the metrics)"
    m = result.memory
    rows = [
        ("usage", m.usage_bytes, human_bytes(m.usage_bytes)),
        ("working set", m.working_set_bytes, human_bytes(m.working_set_bytes)),
        ("available", m.available_bytes, human_bytes(m.available_bytes)),
        ("rss", m.rss_bytes, human_bytes(m.rss_bytes)),
        ("page faults", m.page_faults, ""),
        ("major page faults", m.major_page_faults, ""),
    ]
    cpu = cri.cri_cpu_usage_nanos(result.metrics)
    if cpu is not None:
        rows.append(("cpu usage (ns)", cpu, f"{cpu / 1e9:.3f} s"))
    return head + "\n" + render(("CRI FIGURE", "VALUE", ""), rows)

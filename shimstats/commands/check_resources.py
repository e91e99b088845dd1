"""`shimstats check-resources`: does the guest's cgroup show the resources Kubernetes asked for?

After an in-place pod resize, CRI's ContainerStatus only echoes the spec. This command computes what the
kubelet sends for the given requests and limits and what the guest kernel should then show on its cgroup
version (shimstats.resources), reads what it does show from our guest agent's shimstats.agent.v1.Resources
service, and judges each setting. It never judges a container that is not running: a missing container
(NOT_FOUND), an unreachable or slow agent (UNAVAILABLE, DEADLINE_EXCEEDED) and an empty cgroup are retried
with backoff until --wait runs out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

from google.protobuf.message import DecodeError

from shimstats import resources as rs
from shimstats._proto.shimstats.agent.v1 import resources_pb2
from shimstats.agent_client import RESOURCES_SERVICE, Backoff, service_unsupported
from shimstats.commands._args import DEFAULT_TIMEOUT, address, seconds
from shimstats.table import render
from shimstats.ttrpc import Client, Code, TtrpcError

EXIT_MATCH, EXIT_MISMATCH, EXIT_CANNOT_CHECK = 0, 1, 2
RETRIED = (Code.NOT_FOUND, Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
BACKOFF = Backoff(initial=0.05, maximum=1.0)
CANNOT_REPORT = "this agent cannot report applied resources"

EPILOG = """\
examples:
  # after resizing web-1 to cpu 500m/1 and memory 256Mi/512Mi, wait up to a minute for it to run again
  shimstats check-resources --agent vsock://3:1026 --id web-1 --cpu-request 500m --cpu-limit 1 \\
      --memory-request 256Mi --memory-limit 512Mi --wait 60s

  # a script: one JSON object, exit code for the verdict
  shimstats check-resources --agent unix:///run/shimstats/agent.sock --id web-1 --cpu-request 2 --json

what is expected: the kubelet's CRI values (cpu_shares = request*1024/1000 in [2, 262144], from the limit
when there is no request; cpu_quota = limit*100000/1000, at least 1000, 0 without a limit; cpu_period
100000; memory limit; swap per QoS and --swap-behavior), then per cgroup version: v1 cpu.shares,
cpu.cfs_quota_us (-1 for none), cpu.cfs_period_us, memory.limit_in_bytes and memory.memsw.limit_in_bytes
(whole pages); v2 cpu.weight (--cpu-weight-rule: linear = Kata agent and kubelet, quadratic = runc >= 1.3.2
and crun), cpu.max, memory.max, memory.swap.max. A cpu.weight that is the other rule's value is reported
as "other rule" (the request arrived; another writer converted it) and does not fail the check.

exit codes: 0 every checked setting matches; 1 a mismatch (named); 2 could not check (agent unreachable,
container missing or not running when --wait ran out, an agent without the Resources service such as
kata-agent, or an answer that does not decode)."""


def duration(text: str) -> float:
    """argparse type: seconds (``30``) or a Go duration (``500ms``, ``30s``, ``2m``, ``1m30s``, ``1h``)."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    if re.fullmatch(r"[0-9]+(\.[0-9]*)?", text):
        return float(text)
    parts = re.findall(r"([0-9]+(?:\.[0-9]*)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 500ms, 2m, 1m30s)")
    return sum(float(n) * units[u] for n, u in parts)


def quantity(text: str) -> Fraction:
    """argparse type: a Kubernetes quantity (500m, 2, 256Mi, 1G)."""
    try:
        return rs.parse_quantity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check-resources",
        help="check a container's applied cgroup resources in the guest against Kubernetes requests",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--agent", required=True, type=address, metavar="ADDR", help="guest agent: vsock://CID:PORT, unix://"
    )
    p.add_argument("--id", required=True, help="container id")
    for name, example in (
        ("cpu-request", "500m"),
        ("cpu-limit", "2"),
        ("memory-request", "256Mi"),
        ("memory-limit", "1G"),
    ):
        p.add_argument(f"--{name}", type=quantity, metavar="Q", help=f"Kubernetes quantity, e.g. {example}")
    p.add_argument(
        "--wait",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="retry a missing, unreachable or not running container this long (default: 0, one try)",
    )
    p.add_argument(
        "--cpu-weight-rule",
        choices=(rs.LINEAR, rs.QUADRATIC),
        default=rs.LINEAR,
        help="who writes v2 cpu.weight: linear (Kata agent; default) or quadratic (runc >= 1.3.2, crun)",
    )
    p.add_argument(
        "--node-cgroup",
        choices=("v1", "v2"),
        default="v2",
        help="the node's cgroup version, which decides how the kubelet sends swap (default: %(default)s)",
    )
    p.add_argument("--swap-behavior", choices=("NoSwap", "LimitedSwap"), default="NoSwap")
    p.add_argument("--node-memory", type=quantity, metavar="Q", help="node memory capacity (LimitedSwap)")
    p.add_argument("--node-swap", type=quantity, metavar="Q", help="node swap capacity (LimitedSwap)")
    p.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"deadline of each call (default: {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run, parser=p)


class CannotCheck(Exception):
    """The settings could not be read: the message says why, and how long we waited."""


@dataclass(frozen=True)
class Fetched:
    """The agent's answer for a running container, and what it took to get it."""

    response: resources_pb2.GetResponse
    attempts: int
    waited: float


def cannot_report(error: TtrpcError) -> bool:
    """The agent serves no Resources service: kata-agent (ttrpc-rust) or a Go ttrpc server."""
    return service_unsupported(error, RESOURCES_SERVICE, "Get")


async def fetch(address: str, container_id: str, wait: float, timeout: float) -> Fetched:
    """Resources/Get for a running container, retried (RETRIED, unreachable, empty cgroup) for ``wait`` s."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    request = resources_pb2.GetRequest(container_id=container_id).SerializeToString()
    client: Client | None = None
    attempts = 0
    try:
        while True:
            attempts += 1
            try:
                if client is None or client.closed:
                    client = await Client.connect(address, timeout=timeout)
                payload = await client.call(RESOURCES_SERVICE, "Get", request, timeout=timeout)
                response = resources_pb2.GetResponse.FromString(payload)
                if response.populated:
                    return Fetched(response, attempts, loop.time() - start)
                reason = f"container {container_id!r} is not running: its cgroup has no processes"
            except TtrpcError as exc:
                if cannot_report(exc):
                    raise CannotCheck(f"{CANNOT_REPORT} ({exc})") from None
                if exc.code not in RETRIED:
                    raise CannotCheck(str(exc)) from None
                reason = str(exc)
            except DecodeError as exc:
                raise CannotCheck(f"the GetResponse from {address} does not decode: {exc}") from None
            except OSError as exc:  # TransportError: the agent cannot be dialled
                reason = str(exc)
            elapsed = loop.time() - start
            if elapsed >= wait:
                raise CannotCheck(f"{reason}; gave up after {elapsed:.1f} s and {attempts} attempts")
            await asyncio.sleep(min(BACKOFF.delay(attempts), wait - elapsed))
    finally:
        if client is not None:
            await client.close()


def inputs(args: argparse.Namespace) -> tuple[rs.ContainerResources, rs.Node]:
    """The container's requests and the node from the flags; a usage error (exit 2) when they conflict."""

    def milli(q: Fraction | None) -> int | None:
        return None if q is None else rs.milli_value(q)

    def size(q: Fraction | None) -> int | None:
        return None if q is None else rs.byte_value(q)

    pod = rs.ContainerResources(
        milli(args.cpu_request), milli(args.cpu_limit), size(args.memory_request), size(args.memory_limit)
    )
    try:
        node = rs.Node(
            cgroup_version=1 if args.node_cgroup == "v1" else 2,
            swap_behavior=args.swap_behavior,
            memory_capacity=size(args.node_memory) or 0,
            swap_capacity=size(args.node_swap) or 0,
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    return pod, node


def run(args: argparse.Namespace) -> int:
    pod, node = inputs(args)
    cri = rs.kubelet_cri(pod, node)
    report: dict[str, object] = {
        "id": args.id,
        "agent": args.agent,
        "pod": pod_json(pod),
        "node": {"cgroup_version": node.cgroup_version, "swap_behavior": node.swap_behavior},
        "cri": cri.to_json(),
    }
    try:
        fetched = asyncio.run(fetch(args.agent, args.id, args.wait, args.timeout))
    except CannotCheck as exc:
        report.update(verdict="could not check", error=str(exc))
        if args.json:
            print(json.dumps(report, indent=2))
        print(f"shimstats: could not check {args.id!r} at {args.agent}: {exc}", file=sys.stderr)
        return EXIT_CANNOT_CHECK
    response = fetched.response
    rule = cast(rs.WeightRule, args.cpu_weight_rule)
    expected = rs.expected_settings(cri, node, response.page_size or 4096, rule)
    rows = rs.compare(expected, rs.applied_settings(response), response.absent)
    failed = [r.file for r in rows if r.fails]
    report.update(
        cgroup_path=response.cgroup_path,
        page_size=response.page_size,
        attempts=fetched.attempts,
        waited_seconds=round(fetched.waited, 3),
        rows=[r.to_json() for r in rows],
        absent=list(response.absent),
        verdict="mismatch" if failed else "match",
        mismatches=failed,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(args.id, args.agent, pod, node, cri, fetched, rows))
    return EXIT_MISMATCH if failed else EXIT_MATCH


def pod_json(pod: rs.ContainerResources) -> dict[str, object]:
    return {
        "cpu_request_millicores": pod.cpu_request,
        "cpu_limit_millicores": pod.cpu_limit,
        "memory_request_bytes": pod.memory_request,
        "memory_limit_bytes": pod.memory_limit,
        "qos_class": pod.qos_class(),
    }


def format_report(
    container_id: str,
    agent: str,
    pod: rs.ContainerResources,
    node: rs.Node,
    cri: rs.CriResources,
    fetched: Fetched,
    rows: Sequence[rs.Row],
) -> str:
    """The table for people: the request's path to CRI, one row per setting, notes and the verdict."""
    r = fetched.response
    waited = (
        f"; waited {fetched.waited:.1f} s over {fetched.attempts} attempts" if fetched.attempts > 1 else ""
    )
    asked = ", ".join(
        f"{label} {value}"
        for label, value in (
            ("cpu request", _milli(pod.cpu_request)),
            ("cpu limit", _milli(pod.cpu_limit)),
            ("memory request", pod.memory_request),
            ("memory limit", pod.memory_limit),
        )
        if value is not None
    )
    unified = "".join(f", unified {k}={v}" for k, v in cri.unified.items())
    lines = [
        f"container {container_id} at {agent}: cgroup {r.cgroup_path}, running{waited}",
        f"pod spec: {asked or 'no requests or limits'} ({cri.qos_class})",
        f"kubelet's CRI values (node cgroup v{node.cgroup_version}, {node.swap_behavior}): "
        f"cpu_shares {cri.cpu_shares}, cpu_quota {cri.cpu_quota}, cpu_period {cri.cpu_period}, "
        f"memory_limit_in_bytes {cri.memory_limit_in_bytes}, "
        f"memory_swap_limit_in_bytes {cri.memory_swap_limit_in_bytes}{unified}",
        "",
        render(
            ("SETTING", "REQUESTED", "EXPECTED", "BY", "APPLIED", "VERDICT"),
            [
                (
                    f"{row.file} (v{row.version})",
                    row.requested,
                    None if row.expected is None else rs.fields_text(row.expected),
                    row.rule or None,
                    row.applied,
                    row.verdict,
                )
                for row in rows
            ],
        ),
    ]
    notes = [f"  {row.file}: {row.note}" for row in rows if row.note and row.verdict != rs.NOT_CHECKED]
    if notes:
        lines += ["", "notes:", *notes]
    failed = [row.file for row in rows if row.fails]
    checked = [row for row in rows if row.verdict != rs.NOT_CHECKED]
    if failed:
        lines += ["", f"verdict: MISMATCH in {', '.join(failed)}"]
    else:
        other = [row.file for row in rows if row.verdict == rs.OTHER_RULE]
        by_other = f" ({', '.join(other)} by the other rule)" if other else ""
        lines += ["", f"verdict: all {len(checked)} checked settings as expected{by_other}"]
    return "\n".join(lines)


def _milli(value: int | None) -> str | None:
    return None if value is None else f"{value}m"

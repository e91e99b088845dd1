"""`shimstats discover`: every Kata sandbox on this node, where its agent is, whether it answers, and the
Kubernetes names of its containers. What an operator runs first on a node.

Each sandbox's Kata shim is asked for its agent's URL (GET /agent-url on <root>/<id>/shim-monitor.sock,
as kata-monitor does); we dial the same CID or hybrid-vsock socket on our agent's port and ask
grpc.Health/Check there, and on Kata's own port for kata-agent. Pod, namespace, container and image come
from the CRI (ListPodSandbox, ListContainers), else from containerd's containers API, else are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shimstats.agent_client import AgentClient
from shimstats.commands._args import NO_CRI, add_timeout, cri_address
from shimstats.discovery import (
    DEFAULT_ROOTS,
    DEFAULT_TIMEOUT,
    KATA_AGENT,
    SHIMSTATS_AGENT_PORT,
    DiscoveryError,
    Sandbox,
    dial_address,
    list_sandboxes,
    parse_agent_port,
    read_agent_url,
)
from shimstats.kube_names import DEFAULT_ADDRESS, NamedContainer, Names, list_names
from shimstats.table import render
from shimstats.ttrpc import Address, TtrpcError

if TYPE_CHECKING:
    from shimstats.kata_spec import AgentPort

EXIT_OK, EXIT_UNHEALTHY, EXIT_UNLISTED = 0, 1, 2

EPILOG = f"""\
examples:
  shimstats discover                                 both roots, port {SHIMSTATS_AGENT_PORT}, CRI names
  shimstats discover --agent-port kata-agent --json  the stock kata-agent (no guest image change)
  shimstats discover --kata-root /run/kata --cri unix:///run/crio/crio.sock

columns: AGENT URL is what Kata's shim reports (Kata's own port); WE DIAL is the same CID or socket on
--agent-port; OURS and KATA-AGENT say whether grpc.Health/Check answers SERVING on each port.

exit codes: 0 every sandbox's agent answers on --agent-port; 1 some does not (or its shim could not say
where it is); 2 nothing could be listed (no sandbox root exists or can be read)."""


def _agent_port(text: str) -> AgentPort:
    try:
        return parse_agent_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "discover",
        help="list this node's Kata sandboxes, their agents' addresses and health, and their pods' names",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--kata-root",
        action="append",
        metavar="DIR",
        help=f"a directory of sandbox directories (repeatable; default: {' and '.join(DEFAULT_ROOTS)})",
    )
    p.add_argument(
        "--cri",
        type=cri_address,
        default=DEFAULT_ADDRESS,
        metavar="ADDR|none",
        help="the CRI socket for pod and container names (default: %(default)s; containerd's containers "
        "API on the same socket when no CRI answers); 'none' asks neither and lists sandboxes by id",
    )
    p.add_argument(
        "--agent-port",
        type=_agent_port,
        default=SHIMSTATS_AGENT_PORT,
        metavar="N|kata-agent",
        help=f"the guest port we dial (default: %(default)s, shimstats-agent); {KATA_AGENT} keeps Kata's",
    )
    add_timeout(
        p, DEFAULT_TIMEOUT, "deadline per shim question, per health check and per CRI call (kata-monitor's)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(run=run)


@dataclass
class SandboxReport:
    """What we found out about one sandbox."""

    sandbox: Sandbox
    agent_url: str | None = None
    address: Address | None = None
    agent_ok: bool = False
    kata_agent_ok: bool | None = None
    errors: list[str] = field(default_factory=list)
    pod: str = ""
    namespace: str = ""
    containers: list[NamedContainer] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.sandbox.id,
            "socket": self.sandbox.socket,
            "agent_url": self.agent_url,
            "address": str(self.address) if self.address is not None else None,
            "agent_ok": self.agent_ok,
            "kata_agent_ok": self.kata_agent_ok,
            "pod": self.pod,
            "namespace": self.namespace,
            "errors": self.errors,
            "containers": [c.to_json() for c in self.containers],
        }


async def _healthy(address: Address, timeout: float) -> tuple[bool, str]:
    """grpc.Health/Check at ``address``: (serving, why not)."""
    client = AgentClient(address, connect_timeout=timeout, default_timeout=timeout)
    try:
        serving = await client.check(timeout)
    except TtrpcError as exc:
        return False, f"{exc.code.name}: {exc.message}"
    except OSError as exc:
        return False, f"{address}: {exc}"
    finally:
        await client.close()
    return serving, "" if serving else f"{address}: Health/Check answered NOT_SERVING"


async def _probe(sandbox: Sandbox, port: AgentPort, timeout: float) -> SandboxReport:
    report = SandboxReport(sandbox)
    try:
        report.agent_url = await read_agent_url(sandbox.socket, timeout)
        report.address = dial_address(report.agent_url, port, socket=sandbox.socket)
    except DiscoveryError as exc:
        report.errors.append(str(exc))
        return report
    kata_address = dial_address(report.agent_url, KATA_AGENT, socket=sandbox.socket)
    if report.address == kata_address:
        report.agent_ok, why = await _healthy(report.address, timeout)
        report.kata_agent_ok = report.agent_ok
        report.errors += [f"agent: {why}"] if why else []
        return report
    (ours, why_ours), (kata, why_kata) = await asyncio.gather(
        _healthy(report.address, timeout), _healthy(kata_address, timeout)
    )
    report.agent_ok, report.kata_agent_ok = ours, kata
    report.errors += [f"our agent: {why_ours}"] if why_ours else []
    report.errors += [f"kata-agent: {why_kata}"] if why_kata else []
    return report


async def _survey(
    sandboxes: list[Sandbox], port: AgentPort, timeout: float, cri: str
) -> tuple[list[SandboxReport], Names]:
    names_job = None
    if cri != NO_CRI:
        loop = asyncio.get_running_loop()
        names_job = loop.run_in_executor(None, lambda: list_names(cri, timeout=timeout))
    reports = await asyncio.gather(*(_probe(s, port, timeout) for s in sandboxes))
    names = Names("none", notes=("--cri none: no names asked for",)) if names_job is None else await names_job
    by_sandbox, pods = names.by_sandbox(), names.pods()
    for report in reports:
        report.containers = by_sandbox.get(report.sandbox.id, [])
        pod = pods.get(report.sandbox.id)
        if pod is not None:
            report.pod, report.namespace = pod.pod, pod.namespace
    return list(reports), names


def _readable_roots(roots: list[str]) -> tuple[list[Sandbox], list[str]]:
    """The sandboxes, and one line per root that exists but cannot be read (DiscoveryError per root)."""
    found: list[Sandbox] = []
    problems: list[str] = []
    for root in roots:
        try:
            found += list_sandboxes([root])
        except DiscoveryError as exc:
            problems.append(str(exc))
    unique = {s.id: s for s in reversed(found)}  # the first root wins, as in list_sandboxes
    return [unique[k] for k in sorted(unique)], problems


def run(args: argparse.Namespace) -> int:
    roots: list[str] = args.kata_root or list(DEFAULT_ROOTS)
    sandboxes, problems = _readable_roots(roots)
    present = [r for r in roots if os.path.isdir(r)]
    for line in problems:
        print(f"shimstats discover: {line}", file=sys.stderr)
    if not present or len(problems) == len(present):
        print(
            f"shimstats discover: no Kata sandbox directory to list ({', '.join(roots)}): "
            "is Kata running on this node? (--kata-root DIR names another)",
            file=sys.stderr,
        )
        return EXIT_UNLISTED
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Each sandbox's report says why its agent did not answer; the agent client's own warning would say
        # it a second time, on stderr.
        logging.getLogger("shimstats.agent").setLevel(logging.ERROR)
    reports, names = asyncio.run(_survey(sandboxes, args.agent_port, args.timeout, args.cri))
    if args.json:
        print(json.dumps(_to_json(roots, args.agent_port, reports, names), indent=2))
    else:
        print(_format(roots, args.agent_port, reports, names))
    return EXIT_OK if all(r.agent_ok for r in reports) else EXIT_UNHEALTHY


def _to_json(roots: list[str], port: AgentPort, reports: list[SandboxReport], names: Names) -> dict[str, Any]:
    return {
        "roots": roots,
        "agent_port": port,
        "names_from": names.source,
        "names_notes": list(names.notes),
        "sandboxes": [r.to_json() for r in reports],
    }


def _format(roots: list[str], port: AgentPort, reports: list[SandboxReport], names: Names) -> str:
    if not reports:
        return f"no Kata sandbox under {', '.join(roots)}"
    port_text = "Kata's own port (kata-agent)" if port == KATA_AGENT else f"port {port}"
    rows = [
        (
            r.sandbox.id[:12],
            f"{r.namespace}/{r.pod}" if r.pod else "-",
            r.agent_url or "-",
            str(r.address) if r.address else "-",
            r.agent_ok,
            r.kata_agent_ok,
        )
        for r in reports
    ]
    lines = [
        f"{len(reports)} Kata sandbox(es) under {', '.join(roots)}; we dial {port_text}",
        "",
        render(("SANDBOX", "POD", "AGENT URL", "WE DIAL", "OURS", "KATA-AGENT"), rows),
    ]
    problems = [(r.sandbox.id[:12], e) for r in reports for e in r.errors]
    if problems:
        lines += ["", "problems:"] + [f"  {sid}  {error}" for sid, error in problems]
    container_rows = [
        (r.sandbox.id[:12], c.id[:12], c.namespace or "-", c.pod or "-", c.container or "-", c.image or "-")
        for r in reports
        for c in r.containers
    ]
    lines.append("")
    if container_rows:
        lines += [
            f"containers (names from {names.source}):",
            render(("SANDBOX", "CONTAINER", "NAMESPACE", "POD", "NAME", "IMAGE"), container_rows),
        ]
    else:
        lines.append(f"no container names (from {names.source})")
    lines += [f"  note: {note}" for note in names.notes]
    return "\n".join(lines)

"""``shimstats-agent``, ``python -m guest_agent``: serve kata-agent's StatsContainer from the guest's cgroups.

Imports stay lean (no grpcio, no psutil) so the agent answers its first call well under 300 ms after start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from guest_agent import logs
from guest_agent.layout import LayoutError, detect_layout
from guest_agent.lookup import ContainerLocator, parse_mapping, validate_id
from guest_agent.reader import CgroupReader
from guest_agent.service import AGENT_VERSION, AgentService
from shimstats.ttrpc import Server, TransportError, parse_address

log = logging.getLogger("guest_agent")

EXAMPLES = """\
examples:
  # inside a Kata VM, next to kata-agent (which owns vsock port 1024): any CID, port 2048
  shimstats-agent --listen vsock://-1:2048

  # on a host or in tests: a unix socket (mode 0600), containers found by their cgroup directory names
  shimstats-agent --listen unix:///run/shimstats/agent.sock

  # name cgroups explicitly (the path as /proc/PID/cgroup shows it); "pod1" asks for the whole guest
  shimstats-agent --listen unix:///tmp/a.sock \\
      --container abc123=/kubepods/burstable/pod1/abc123 --sandbox pod1

  # serve a captured cgroupfs tree instead of the live one (tests, bug reports)
  shimstats-agent --listen unix:///tmp/a.sock \\
      --cgroupfs-root tests/fixtures/cgroupfs/NAME/cgroup --meminfo tests/fixtures/cgroupfs/NAME/meminfo

container lookup: --container flags first; the empty id and --sandbox ids mean the root cgroup; otherwise the
cgroup tree is searched for a directory named ID, cri-containerd-ID.scope, crio-ID.scope, docker-ID.scope or
kata_ID (cached after the first hit).
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line (exposed for tests and for documentation)."""
    parser = argparse.ArgumentParser(
        prog="shimstats-agent",
        description="Answer kata-agent's grpc.AgentService/StatsContainer (and grpc.Health) over ttrpc, "
        "reading cgroup v1, v2 or hybrid stat files the way the kernel means them.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        metavar="ADDR",
        help="address to serve on, repeatable: vsock://-1:PORT (any CID) or unix:///path",
    )
    parser.add_argument(
        "--cgroupfs-root",
        default="/sys/fs/cgroup",
        metavar="PATH",
        help="where the cgroup hierarchies are mounted (default: %(default)s); hierarchies are found from "
        "/proc/self/mountinfo below it, or by directory names for a captured tree",
    )
    parser.add_argument(
        "--meminfo",
        default="/proc/meminfo",
        metavar="PATH",
        help="meminfo file for the v2 root's swap usage (default: %(default)s)",
    )
    parser.add_argument(
        "--container",
        action="append",
        default=[],
        metavar="ID=PATH",
        help="map a container id to its cgroup path, repeatable (e.g. abc=/kubepods/pod1/abc; / = root)",
    )
    parser.add_argument(
        "--sandbox",
        action="append",
        default=[],
        metavar="ID",
        help="an id that means the whole guest (root cgroup), repeatable; the empty id always does",
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="default: %(default)s")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="default: %(default)s",
    )
    parser.add_argument("--version", action="version", version=AGENT_VERSION)
    return parser


async def serve(service: AgentService, addresses: Sequence[str]) -> None:
    """Listen on every address and serve until SIGTERM or SIGINT."""
    server = Server()
    service.register(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        for address in addresses:
            await server.start(address)
            log.info("listening", extra={"address": address})
        await stop.wait()
        log.info("stopping")
    finally:
        await server.close(grace=1.0)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments, 1 when serving fails)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        for address in args.listen:
            parse_address(address)
        explicit = dict(parse_mapping(text) for text in args.container)
        for sandbox in args.sandbox:
            validate_id(sandbox)
    except ValueError as exc:  # AddressError and InvalidId are ValueErrors too
        parser.error(str(exc))
    try:
        layout = detect_layout(args.cgroupfs_root)
    except LayoutError as exc:
        log.error("%s", exc)
        return 1
    except (OSError, UnicodeDecodeError) as exc:  # a cgroup.controllers that cannot be read as text
        log.error("cannot read the cgroup hierarchies under %s: %s", args.cgroupfs_root, exc)
        return 1
    log.info("cgroup layout detected", extra={"layout": layout.describe()})
    reader = CgroupReader(layout, meminfo=args.meminfo)
    service = AgentService(reader, ContainerLocator(layout, explicit, args.sandbox))
    try:
        asyncio.run(serve(service, args.listen))
    except TransportError as exc:
        log.error("%s", exc)
        return 1
    finally:
        reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

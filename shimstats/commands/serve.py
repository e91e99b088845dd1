"""`shimstats serve`: answer containerd.task.v2.Task/Stats for a Kata VM from its guest agent.

Serves ttrpc on --listen until SIGTERM or SIGINT, then finishes the calls in flight, closes and removes
its socket. Each Stats(id) asks the guest agent (ours, or kata-agent itself) for StatsContainer(id) and
answers with cgroup Metrics whose working set is the guest's usage - inactive_file, whatever the guest's
and the host's cgroup versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from guest_agent import logs
from shimstats import event_loop
from shimstats.adapter import StatsHandler, TaskService
from shimstats.agent_client import AgentClient
from shimstats.commands._args import add_timeout, address
from shimstats.translate import OutputFormat, resolve_format
from shimstats.ttrpc import Server, TransportError, TtrpcError
from shimstats.wire import TASK_SERVICE

EXIT_OK, EXIT_FAILED = 0, 1
SHUTDOWN_GRACE = 2.0
"""Seconds the calls in flight get to answer after SIGTERM before they are cancelled."""
PROBE_TIMEOUT = 2.0

log = logging.getLogger("shimstats.serve")

EPILOG = """\
examples:
  # the guest agent on its vsock port, metrics in the host's own cgroup format
  shimstats --log-level info serve --listen unix:///run/shimstats/kata-1.sock --agent vsock://3:2048

  # Firecracker / Cloud Hypervisor (hybrid vsock), v2 metrics, JSON logs for a collector
  shimstats serve --listen unix:///run/shimstats/kata-1.sock \\
      --agent hvsock:///run/vc/firecracker/ID/root/kata.hvsock:2048 --metrics-format v2 --log-format json

  # then ask it as containerd would
  shimstats stats --shim unix:///run/shimstats/kata-1.sock --id CONTAINER_ID

--metrics-format: containerd decodes a task's metrics by the HOST's cgroup mode (its task-metrics
collector) while CRI accepts both types, so "auto" (the default) answers io.containerd.cgroups.v2.Metrics
on a cgroup v2 host and v1 otherwise. The guest's own cgroup version never matters: it is read from the
agent's answer.

statuses containerd sees: NOT_FOUND for an id the agent does not know (containerd skips it quietly),
INVALID_ARGUMENT for an id containerd could never send, UNAVAILABLE naming the agent's address when the
agent cannot be reached, DEADLINE_EXCEEDED when it does not answer in time.
Task methods other than Stats and Connect answer UNIMPLEMENTED.

deadlines: the agent gets the caller's deadline less up to 0.1 s, so that a silent agent is reported by
serve, naming the agent and the caller's deadline, before the caller gives up on its own (a caller's own
"no answer from <serve's address>" then means serve itself did not answer). A call without a deadline
gets --timeout. serve logs each expiry with the container id.

The agent connection is dialled on the first call and shared; after it drops (agent restart) it is
dialled again, backing off up to 2 s between failed dials.

exit codes: 0 stopped by SIGTERM or SIGINT (calls in flight finished, socket removed); 1 could not serve
(the address is taken or cannot be bound); 2 bad flags."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve containerd.task.v2.Task/Stats from a guest agent (the host adapter)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen",
        required=True,
        type=address,
        metavar="ADDR",
        help="where to serve: unix:///path (created mode 0600, removed on exit) or vsock://-1:PORT",
    )
    p.add_argument(
        "--agent",
        required=True,
        type=address,
        metavar="ADDR",
        help="the guest agent: vsock://CID:PORT, hvsock:///path/kata.hvsock:PORT or unix:///path",
    )
    p.add_argument(
        "--metrics-format",
        choices=("auto", "v1", "v2"),
        default="auto",
        help="cgroup Metrics type to answer with (default: %(default)s = the host's cgroup mode)",
    )
    p.add_argument(
        "--namespace",
        default="",
        metavar="NS",
        help="containerd namespace to name in logs when a call carries none in its metadata",
    )
    add_timeout(p, 10.0, "deadline for a Stats call whose caller set none")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text for people, json (one object per line) for log collectors; the level is shimstats "
        "--log-level (default: %(default)s)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    output = resolve_format(args.metrics_format)
    try:
        event_loop.run(serve(args.listen, args.agent, output, args.namespace, args.timeout))
    except TransportError as exc:
        log.error("cannot serve: %s", exc, extra={"address": args.listen})
        return EXIT_FAILED
    return EXIT_OK


async def serve(
    listen: str, agent_address: str, output: OutputFormat, namespace: str, timeout: float
) -> None:
    """Serve until SIGTERM or SIGINT; always closes the server (removing its socket) and the agent client."""
    agent = AgentClient(agent_address, default_timeout=timeout)
    server = Server()
    stats = StatsHandler(agent, output, default_namespace=namespace, timeout_name="serve's --timeout")
    TaskService(stats).register(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    probe: asyncio.Task[None] | None = None
    try:
        await server.start(listen)
        log.info(
            "serving %s (metrics %s, guest agent %s)",
            TASK_SERVICE,
            output,
            agent.address,
            extra={"address": listen},
        )
        probe = loop.create_task(_probe(agent))
        await stop.wait()
        log.info("stopping", extra={"address": listen})
    finally:
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        await server.close(grace=SHUTDOWN_GRACE)
        await agent.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _probe(agent: AgentClient) -> None:
    """Say at start whether the agent answers; serving does not depend on it (calls dial on their own)."""
    try:
        serving = await agent.check(PROBE_TIMEOUT)
    except TtrpcError as exc:
        log.warning("guest agent not answering yet: %s", exc.message, extra={"address": str(agent.address)})
        return
    state = "serving" if serving else "not serving"
    log.info("guest agent health: %s", state, extra={"address": str(agent.address)})

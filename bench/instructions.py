"""Instructions per call of one process on the Stats path, counted by callgrind (load does not change them).

``python -m bench.instructions {agent,client,adapter} [--calls N] [--callers C] [--path /CGROUP]`` (needs
valgrind)

One process runs under ``valgrind --tool=callgrind``, the others run plainly: ``agent`` counts the guest
agent answering StatsContainer (ttrpc server, cgroup read, encode), ``client`` the blocking SyncClient that
calls it, ``adapter`` ``shimstats serve`` answering Task/Stats (ttrpc server, agent client, translate,
encode) to an async fake-containerd client. Each is run twice, with 0 and with N calls after 5 warm-up
calls, and the difference divided by N: start-up and shut-down cancel out. With ``--callers C`` (C > 1) the
calls come from C concurrent callers on one connection of the asyncio ``Client`` (as containerd multiplexes
its Stats calls), so that what batching saves shows; ``client`` then counts that asyncio client. On this
machine one run takes a minute or two; the counts repeat to within a fraction of a percent, where
wall-clock times on a shared machine move by tens of percent.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from shimstats._proto.kata import agent_pb2
from shimstats.fake_containerd import call_stats
from shimstats.ttrpc import Client, SyncClient
from shimstats.ttrpc.probe import listening
from tests.integration.harness import CLI

WARM_UP = 5
CALLGRIND = ["valgrind", "--tool=callgrind", "-q"]


def _total(out: Path) -> int:
    """The instruction total of a callgrind output file."""
    found = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"{out}: no instruction total")
    return int(found.group(1))


def _agent_argv(address: str, path: str) -> list[str]:
    container = f"bench={path}"
    return [
        sys.executable,
        "-m",
        "guest_agent",
        "--listen",
        address,
        "--container",
        container,
        "--log-level",
        "warning",
    ]


def _wait_for(path: Path, process: subprocess.Popen[bytes]) -> None:
    """Until ``process`` listens on ``path`` (the file appears at bind, before listen: a connect then is
    refused, which under valgrind's slow start is a window of seconds)."""
    while not listening(str(path)):
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


def _client_script(address: str, calls: int, callers: int) -> str:
    if callers > 1:
        return (
            "import asyncio\n"
            "from bench.instructions import agent_calls\n"
            f"asyncio.run(agent_calls({address!r}, {WARM_UP + calls}, {callers}))\n"
        )
    return (
        "from shimstats.ttrpc import SyncClient\n"
        "from shimstats._proto.kata import agent_pb2\n"
        "p = agent_pb2.StatsContainerRequest(container_id='bench').SerializeToString()\n"
        f"c = SyncClient({address!r}, timeout=60)\n"
        f"for _ in range({WARM_UP + calls}): c.call('grpc.AgentService', 'StatsContainer', p)\n"
        "c.close()\n"
    )


async def concurrently(calls: int, callers: int, call: Callable[[], Awaitable[object]]) -> None:
    """``calls`` awaits of ``call()`` shared out among ``callers`` concurrent callers."""
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(caller() for _ in range(callers)))


async def agent_calls(address: str, calls: int, callers: int) -> None:
    """StatsContainer ``calls`` times from ``callers`` concurrent callers on one asyncio connection."""
    payload = agent_pb2.StatsContainerRequest(container_id="bench").SerializeToString()
    client = await Client.connect(address, timeout=60)
    try:
        await concurrently(
            calls, callers, lambda: client.call("grpc.AgentService", "StatsContainer", payload, timeout=60)
        )
    finally:
        await client.close()


def count(side: str, calls: int, path: str, callers: int = 1) -> int:
    """Total instructions of the process ``side`` over a run of ``calls`` calls (plus the warm-up)."""
    with tempfile.TemporaryDirectory(prefix="bench-ir-", dir="/tmp") as directory:
        root = Path(directory)
        out = root / "callgrind.out"
        valgrind = [*CALLGRIND, f"--callgrind-out-file={out}"]
        agent_address = f"unix://{root}/agent.sock"
        agent_cmd = _agent_argv(agent_address, path)
        agent = subprocess.Popen([*valgrind, *agent_cmd] if side == "agent" else agent_cmd)
        try:
            _wait_for(root / "agent.sock", agent)
            if side == "client":
                script = _client_script(agent_address, calls, callers)
                subprocess.run([*valgrind, sys.executable, "-c", script], check=True)
            elif side == "agent" and callers > 1:
                asyncio.run(agent_calls(agent_address, WARM_UP + calls, callers))
            elif side == "agent":
                payload = agent_pb2.StatsContainerRequest(container_id="bench").SerializeToString()
                with SyncClient(agent_address, timeout=60) as client:
                    for _ in range(WARM_UP + calls):
                        client.call("grpc.AgentService", "StatsContainer", payload)
            else:
                _adapter_calls(valgrind, root, agent_address, calls, callers)
        finally:
            _stop(agent)
        return _total(out)


def _adapter_calls(valgrind: list[str], root: Path, agent_address: str, calls: int, callers: int) -> None:
    address = f"unix://{root}/adapter.sock"
    argv = [*CLI, "--log-level", "warning", "serve", "--listen", address, "--agent", agent_address]
    adapter = subprocess.Popen([*valgrind, *argv])
    try:
        _wait_for(root / "adapter.sock", adapter)

        async def run() -> None:
            client = await Client.connect(address, timeout=60)
            try:
                await concurrently(
                    WARM_UP + calls,
                    callers,
                    lambda: call_stats(client, "bench", namespace="k8s.io", timeout=60),
                )
            finally:
                await client.close()

        asyncio.run(run())
    finally:
        _stop(adapter)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("side", choices=("agent", "client", "adapter"))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--callers", type=int, default=1, help="concurrent callers on one connection")
    parser.add_argument("--path", default="/", help="cgroup the agent reads (default: the root, /)")
    args = parser.parse_args(argv)
    if args.callers < 1:
        parser.error("--callers must be at least 1")
    idle = count(args.side, 0, args.path, args.callers)
    busy = count(args.side, args.calls, args.path, args.callers)
    print(
        f"{args.side}: {(busy - idle) / args.calls:,.0f} instructions per call "
        f"({args.calls} calls, {args.callers} caller{'s' if args.callers > 1 else ''})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

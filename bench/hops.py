"""Per-hop cost of one Stats answer, in process, without sockets: where the microseconds of a call go.

``python -m bench.hops [--path /CGROUP] [--cgroupfs-root PATH] [--batches N]``

Hops, each timed alone on the live cgroup ``--path`` (the fastest of N batches of 200 calls, the figure that
stays put on a shared machine): the agent's read of the cgroup files (CgroupReader.read), its kata spelling
and serialisation (to_response + SerializeToString), the adapter's decode of that answer, and its
translation into containerd's Metrics wrapped in a StatsResponse and serialised. The sockets, event loops
and ttrpc framing in between are what bench.e2e's total has beyond the sum of these.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from guest_agent.bench import min_batch_us
from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader
from shimstats import cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from shimstats.translate import translate


def hop_calls(reader: CgroupReader, path: str) -> list[tuple[str, Callable[[], object]]]:
    """The four in-process hops of one Stats answer for the cgroup ``path``, each as a call to time."""
    record = reader.read(path)
    wire = to_response(record).SerializeToString()
    answer = agent_pb2.StatsContainerResponse.FromString(wire)

    def translate_and_encode() -> bytes:
        metrics = cri.encode_metrics(translate(answer, "v1"))
        return shim_pb2.StatsResponse(stats=metrics).SerializeToString()

    return [
        ("agent: read cgroup files", lambda: reader.read(path)),
        ("agent: kata spelling + serialise", lambda: to_response(record).SerializeToString()),
        ("adapter: decode agent answer", lambda: agent_pb2.StatsContainerResponse.FromString(wire)),
        ("adapter: translate + serialise", translate_and_encode),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cgroupfs-root", default="/sys/fs/cgroup")
    parser.add_argument("--path", default="/", help="cgroup to read (default: the root, /)")
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args(argv)
    reader = CgroupReader(detect_layout(args.cgroupfs_root))
    hops = hop_calls(reader, args.path)
    total = 0.0
    print(f"{'hop':36} {'µs':>8}")
    for name, fn in hops:
        us = min_batch_us(fn, args.batches)
        total += us
        print(f"{name:36} {us:8.1f}")
    print(f"{'sum':36} {total:8.1f}")
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

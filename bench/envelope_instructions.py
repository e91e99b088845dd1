"""Instructions one ttrpc envelope operation costs, counted by callgrind (issue 16).

``python -m bench.envelope_instructions [--calls N] [--before DIR ...]`` (needs valgrind; ~1 min a tree)

The four envelope operations of one Stats call through the adapter, as the hot path sees them: decode
containerd's Request (a 66-byte StatsRequest, a 60 s deadline, the namespace pair), encode the Request to
the agent (the same payload and deadline, no metadata), decode the agent's Response (a 900-byte payload)
and encode the Response to containerd; the decoded records' fields are read, as callers read them. Each is
run ``N`` times and 0 times in ``python -S`` (``bench.proxy_instructions.count_code``: the tree first on
the module path), and the difference divided by ``N``: imports and start-up cancel out. Every tree since
the protobuf envelope offers the same functions in ``shimstats.ttrpc.framing``, so ``DIR`` can be ``git
archive main | tar -x -C DIR``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.proxy_instructions import count_code
from tests.integration.harness import REPO

__all__ = ["main"]

SETUP = (
    "from shimstats.ttrpc.framing import decode_request, decode_response, encode_request, encode_response, "
    "metadata_pairs\n"
    "PAYLOAD = b'\\n@' + b'c' * 64\n"
    "PAIRS = metadata_pairs({'containerd-namespace-ttrpc': 'k8s.io'})\n"
    "DEADLINE = 59_999_123_456\n"
    "REQUEST = encode_request('containerd.task.v2.Task', 'Stats', PAYLOAD, timeout_nano=DEADLINE, "
    "metadata=PAIRS)\n"
    "ANSWER = b'x' * 900\n"
    "RESPONSE = encode_response(ANSWER)\n"
    "def read_request(r):\n"
    "    r.service, r.method, r.payload, r.timeout_nano, [(p.key, p.value) for p in r.metadata]\n"
)
OPERATIONS = {
    "decode containerd's Request": "read_request(decode_request(REQUEST))",
    "encode the agent's Request": (
        "encode_request('grpc.AgentService', 'StatsContainer', PAYLOAD, timeout_nano=DEADLINE)"
    ),
    "decode the agent's Response": "r = decode_response(RESPONSE); r.status, r.payload",
    "encode the Response": "encode_response(ANSWER)",
}


def per_call(tree: Path, operation: str, calls: int) -> float:
    def run(times: int) -> int:
        return count_code(tree, f"{SETUP}for _ in range({times}):\n    {operation}\npass")

    return (run(calls) - run(0)) / calls


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.envelope_instructions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--before", type=Path, action="append", default=[], help="another tree; repeatable")
    args = parser.parse_args(argv)
    trees = {"this checkout": REPO, **{str(tree.name): tree.resolve() for tree in args.before}}
    print(f"{'instructions per operation, thousands':<40}" + "".join(f"{n[:15]:>16}" for n in trees))
    totals = dict.fromkeys(trees, 0.0)
    for name, operation in OPERATIONS.items():
        counts = {tree: per_call(path, operation, args.calls) for tree, path in trees.items()}
        for tree, value in counts.items():
            totals[tree] += value
        print(f"{name:<40}" + "".join(f"{value / 1e3:>16.1f}" for value in counts.values()))
    print(f"{'the four, one adapter Stats call':<40}" + "".join(f"{v / 1e3:>16.1f}" for v in totals.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

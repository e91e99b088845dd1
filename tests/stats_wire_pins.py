"""The bytes both Stats hops put on the wire for fixed inputs, pinned so that speed work cannot change them.

``python -m tests.stats_wire_pins --write`` records them in tests/fixtures/stats-wire/pinned.json (the rule is
in that directory's README); tests/unit/test_stats_wire_pinned.py compares every case with today's code.

Cases, each named in the file:
* ``agent/<fixture>``: the guest agent's StatsContainerResponse bytes for every captured cgroupfs fixture,
  read by its own reader (guest_agent.reader → guest_agent.kata), as the service sends them;
* ``adapter/<case>/<v1|v2>``: the adapter's StatsResponse bytes (shimstats.stats_answer) for each agent
  answer of tests.translate_builders' fixture and example cases (ours and a real kata-agent's v2 spelling),
  the same answers with every other controller added (cpu, pids, v1 or v2 blkio, hugetlb, network), and an
  answer whose memory.stat map names no cgroup version.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from shimstats._proto.kata import agent_pb2
from shimstats.stats_answer import stats_response
from tests.translate_builders import (
    FIXTURES,
    add_controllers,
    example_cases,
    fixture_cases,
    fixture_names,
)

PINNED = Path(__file__).resolve().parent / "fixtures" / "stats-wire" / "pinned.json"


def _agent_bytes(name: str) -> bytes:
    """What guest_agent.service sends for a fixture's container (to_response(...).SerializeToString())."""
    from guest_agent.kata import to_response
    from guest_agent.layout import detect_layout
    from guest_agent.reader import CgroupReader

    root = FIXTURES / name
    meta = json.loads((root / "meta.json").read_text())
    reader = CgroupReader(detect_layout(str(root / "cgroup")), meminfo=str(root / "meminfo"), clk_tck=100)
    try:
        return to_response(reader.read(meta["container_path"])).SerializeToString()
    finally:
        reader.close()


def _adapter_inputs() -> Iterator[tuple[str, agent_pb2.StatsContainerResponse]]:
    for case in [*fixture_cases(), *example_cases()]:
        yield case.name, case.response
        full = agent_pb2.StatsContainerResponse()
        full.CopyFrom(case.response)
        add_controllers(full, case.guest.version)
        yield case.name + "+controllers", full
    unknown = agent_pb2.StatsContainerResponse()
    unknown.cgroup_stats.memory_stats.usage.usage = 4096
    unknown.cgroup_stats.memory_stats.stats["not_a_kernel_key"] = 1
    yield "unknown-version", unknown


def cases() -> dict[str, bytes]:
    """Every pinned case's bytes, by name, as the code in this tree produces them."""
    out = {f"agent/{name}": _agent_bytes(name) for name in fixture_names()}
    for name, answer in _adapter_inputs():
        received = agent_pb2.StatsContainerResponse.FromString(answer.SerializeToString())  # as decoded
        for output in ("v1", "v2"):
            out[f"adapter/{name}/{output}"] = stats_response("c1", received, output).SerializeToString()
    return out


def load() -> dict[str, bytes]:
    """The pinned bytes, by case name."""
    return {name: base64.b64decode(text) for name, text in json.loads(PINNED.read_text()).items()}


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m tests.stats_wire_pins"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"record today's bytes in {PINNED}")
    args = parser.parse_args(argv)
    found = cases()
    if args.write:
        encoded = {name: base64.b64encode(data).decode("ascii") for name, data in found.items()}
        PINNED.write_text(json.dumps(encoded, indent=0, sort_keys=True) + "\n")
    print(f"{len(found)} cases, {sum(map(len, found.values()))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-step CPU cost of one Stats answer, in µs, on captured kernels (no sockets, no processes).

``python -m bench.costs [--seconds S]``

Steps, each measured alone on a v1 and a v2 capture of a container:
- parse memory.stat (guest_agent.parse.parse_flat_keyed);
- read: every stat file of the cgroup read and parsed into a record (guest_agent CgroupReader, files cached
  open as the running agent keeps them);
- kata encode: that record as kata-agent's StatsContainerResponse, serialised (the agent's reply bytes);
- decode: those bytes parsed back (what the adapter does first);
- translate: the translation core to v1 and to v2 Metrics (shimstats.translate.translate);
- encode: Metrics packed in an Any inside a StatsResponse, serialised (the adapter's reply bytes).

And the read of one container while cycling over 100 (the v1 capture copied 100 times), as containerd's
collector asks: with the open-file cache at the old 512 files (smaller than the cycle: every read reopens
its files) and at its default now (guest_agent.files.MAX_OPEN, bounded by the fd limit).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import PAGECACHE_V1, many_containers, print_rows
from guest_agent.files import default_max_open
from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.parse import parse_flat_keyed
from guest_agent.reader import CgroupReader
from shimstats import cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from shimstats.translate import translate
from tests.integration.harness import Fixture, fixtures

CAPTURES = ("v1-6.18.44-fc-v669-container-pagecache", "v2-6.1.0-56-amd64-container-inactive-file")


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Median over 5 batches of the mean µs per call (each batch about ``seconds``/5 long)."""
    fn()
    batches = []
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 5:
            for _ in range(50):
                fn()
            calls += 50
        batches.append(elapsed / calls * 1e6)
    return sorted(batches)[2]


def costs(fixture: Fixture, seconds: float) -> list[list[object]]:
    layout = detect_layout(str(fixture.path / "cgroup"))
    reader = CgroupReader(layout, meminfo=str(fixture.path / "meminfo"))
    path = str(fixture.meta["container_path"])
    memory_dir = layout.controllers["memory"].dir_for(path)
    stat_path = os.path.join(memory_dir, "memory.stat")
    stat_text = Path(stat_path).read_text()
    record = reader.read(path)
    reply = to_response(record).SerializeToString()
    decoded = agent_pb2.StatsContainerResponse.FromString(reply)
    metrics = {fmt: translate(decoded, fmt) for fmt in ("v1", "v2")}
    steps: list[tuple[str, Callable[[], object]]] = [
        (
            f"parse memory.stat ({stat_text.count(chr(10))} lines)",
            lambda: parse_flat_keyed(stat_text, stat_path),
        ),
        ("read all stat files → record", lambda: reader.read(path)),
        ("record → kata reply bytes", lambda: to_response(record).SerializeToString()),
        ("decode kata reply", lambda: agent_pb2.StatsContainerResponse.FromString(reply)),
        ("translate → v1 Metrics", lambda: translate(decoded, "v1")),
        ("translate → v2 Metrics", lambda: translate(decoded, "v2")),
        (
            "v1 Metrics → StatsResponse bytes",
            lambda: shim_pb2.StatsResponse(stats=cri.encode_metrics(metrics["v1"])).SerializeToString(),
        ),
        (
            "v2 Metrics → StatsResponse bytes",
            lambda: shim_pb2.StatsResponse(stats=cri.encode_metrics(metrics["v2"])).SerializeToString(),
        ),
    ]
    try:
        return [[fixture.meta["mode"], name, per_call_us(fn, seconds)] for name, fn in steps]
    finally:
        reader.close()


def _cycling(reader: CgroupReader, ids: Sequence[str]) -> Callable[[], object]:
    """A call that reads the next container of the cycle, after one sweep has filled the cache."""
    paths = itertools.cycle([f"/{i}" for i in ids])
    for _ in ids:
        reader.read(next(paths))
    return lambda: reader.read(next(paths))


def cycling_reads(seconds: float, containers: int = 100) -> list[list[object]]:
    """µs per read while cycling over ``containers`` copies, for two open-file cache sizes."""
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="ss-costs-", dir="/tmp") as directory:
        ids = many_containers(PAGECACHE_V1, Path(directory) / "cgroup", containers)
        layout = detect_layout(str(Path(directory) / "cgroup"))
        for max_open in (512, default_max_open()):
            reader = CgroupReader(layout, meminfo=str(PAGECACHE_V1 / "meminfo"))
            reader.files.max_open = max_open
            try:
                rows.append([containers, max_open, per_call_us(_cycling(reader, ids), seconds)])
            finally:
                reader.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent per step")
    args = parser.parse_args(argv)
    chosen = [fx for fx in fixtures() if fx.name in CAPTURES]
    rows = [row for fixture in chosen for row in costs(fixture, args.seconds)]
    print_rows("Cost per step of one answer (µs; median of 5 batches)", ["guest", "step", "µs"], rows)
    print(
        '\n("read all stat files → record" includes the parse of every file; the fixtures are regular files.)'
    )
    print_rows(
        "Read of one container while cycling over many (µs; median of 5 batches)",
        ["containers", "open-file cache", "µs"],
        cycling_reads(args.seconds),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

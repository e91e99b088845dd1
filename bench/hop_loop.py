"""One in-process hop of a Stats answer, N times, for instruction counts under callgrind.

``valgrind --tool=callgrind python bench/hop_loop.py HOP N [CGROUP] [--cgroupfs-root DIR --meminfo FILE]``,
run with N = 0 and N = 200; the difference of the two totals over N is the hop's instructions per call (load
does not change them). HOP: ``read`` (CgroupReader.read), ``spell`` (to_response + bytes), ``agent`` (both),
``tr1``/``tr2`` (shimstats.stats_answer.stats_response in the v1/v2 format + bytes). ``--cgroupfs-root``
reads a captured tree instead of the mounted cgroupfs (the files bench.throughput's agent reads: each read
checks that the file's inode is still linked); ``--as-kernfs`` takes that tree's files as kernfs ones (no
inode check), as a mounted hierarchy's are read, for a live-like count where no live one of that version
runs. Run as a script, so that ``PYTHONPATH`` alone picks the tree being measured (an unpacked older commit
for a before/after pair).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from guest_agent.files import ABSENT_FOR, FileCache
from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader
from shimstats._proto.kata import agent_pb2
from shimstats.stats_answer import stats_response

WARM_UP = 5


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/hop_loop.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("hop", choices=("read", "spell", "agent", "tr1", "tr2"))
    parser.add_argument("calls", type=int)
    parser.add_argument("path", nargs="?", default="/ssbench", help="cgroup path (default /ssbench)")
    parser.add_argument("--cgroupfs-root", default="/sys/fs/cgroup", help="a mounted or captured tree")
    parser.add_argument("--meminfo", default="/proc/meminfo")
    parser.add_argument("--as-kernfs", action="store_true", help="read a captured tree without inode checks")
    args = parser.parse_args()
    path = args.path
    layout = detect_layout(args.cgroupfs_root)
    files = None
    if args.as_kernfs:
        files = FileCache(kernfs_devices=[os.stat(args.cgroupfs_root).st_dev], absent_for=ABSENT_FOR)
    reader = CgroupReader(layout, meminfo=args.meminfo, files=files)
    record = reader.read(path)
    answer = agent_pb2.StatsContainerResponse.FromString(to_response(record).SerializeToString())
    hops: dict[str, Callable[[], object]] = {
        "read": lambda: reader.read(path),
        "spell": lambda: to_response(record).SerializeToString(),
        "agent": lambda: to_response(reader.read(path)).SerializeToString(),
        "tr1": lambda: stats_response("c", answer, "v1").SerializeToString(),
        "tr2": lambda: stats_response("c", answer, "v2").SerializeToString(),
    }
    run = hops[args.hop]
    for _ in range(WARM_UP + args.calls):
        run()
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

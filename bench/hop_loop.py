"""One in-process hop of a Stats answer, N times, for instruction counts under callgrind.

``valgrind --tool=callgrind python bench/hop_loop.py HOP N [CGROUP]``, run with N = 0 and N = 200; the
difference of the two totals over N is the hop's instructions per call (load does not change them). HOP:
``read`` (CgroupReader.read), ``spell`` (to_response + bytes), ``agent`` (both), ``tr1``/``tr2``
(shimstats.stats_answer.stats_response in the v1/v2 format + bytes). Run as a script, so that
``PYTHONPATH`` alone picks the tree being measured (an unpacked older commit for a before/after pair).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader
from shimstats._proto.kata import agent_pb2
from shimstats.stats_answer import stats_response

WARM_UP = 5


def main() -> int:
    hop, calls = sys.argv[1], int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/ssbench"
    reader = CgroupReader(detect_layout("/sys/fs/cgroup"))
    record = reader.read(path)
    answer = agent_pb2.StatsContainerResponse.FromString(to_response(record).SerializeToString())
    hops: dict[str, Callable[[], object]] = {
        "read": lambda: reader.read(path),
        "spell": lambda: to_response(record).SerializeToString(),
        "agent": lambda: to_response(reader.read(path)).SerializeToString(),
        "tr1": lambda: stats_response("c", answer, "v1").SerializeToString(),
        "tr2": lambda: stats_response("c", answer, "v2").SerializeToString(),
    }
    run = hops[hop]
    for _ in range(WARM_UP + calls):
        run()
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

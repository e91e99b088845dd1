"""The same work back to back and right after the CPU has idled: what a hop costs when its process wakes.

``python -m bench.idle [--path /CGROUP] [--calls N] [--rounds R] [--gap-ms MS ...]``

Every process on a Stats path sleeps between calls (it waits for the socket), so each of its calls starts on
a CPU that may have idled meanwhile. This times each in-process hop of bench.hops (and a control that is not
our code: a JSON round trip of a 50-key dict) in three ways, alternated in rounds: back to back; after
``time.sleep(gap)`` (the CPU idles); after a busy wait of the same length (the CPU stays busy with this
process). Prints the median µs of each, and the ratio after-sleep / back-to-back. On a machine whose idle
CPUs lose their caches or clock (a VM whose idle vCPU the host deschedules), the ratio is well above 1, and
so is every benchmark that wakes a process per call: the more processes a path wakes, the more it pays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from bench.hops import hop_calls
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader

CONTROL = {f"key{i}": i * 7919 for i in range(50)}


def control() -> object:
    """Work that is not ours, to tell the machine's behaviour from our code's."""
    return json.loads(json.dumps(CONTROL))


def timed(fn: Callable[[], object], calls: int, gap: float, spin: bool) -> list[float]:
    """µs of each of ``calls`` calls of ``fn``, each after ``gap`` seconds of sleep or busy wait."""
    samples = []
    clock = time.perf_counter
    for _ in range(calls):
        if gap:
            if spin:
                until = clock() + gap
                while clock() < until:
                    pass
            else:
                time.sleep(gap)
        started = clock()
        fn()
        samples.append((clock() - started) * 1e6)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cgroupfs-root", default="/sys/fs/cgroup")
    parser.add_argument("--path", default="/", help="cgroup to read (default: the root, /)")
    parser.add_argument("--calls", type=int, default=600, help="calls per hop, mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, nargs="+", default=[1.0], help="idle gaps to try (ms)")
    args = parser.parse_args(argv)
    reader = CgroupReader(detect_layout(args.cgroupfs_root))
    hops = [*hop_calls(reader, args.path), ("control: JSON round trip (not ours)", control)]
    modes = [("back to back", 0.0, False)]
    for gap in args.gap_ms:
        seconds = gap / 1000
        modes += [(f"after {gap:g} ms asleep", seconds, False), (f"after {gap:g} ms busy", seconds, True)]
    pooled: dict[tuple[str, str], list[float]] = {(h, m): [] for h, _ in hops for m, _, _ in modes}
    for _ in range(args.rounds):
        for hop, fn in hops:
            for mode, gap, spin in modes:
                pooled[hop, mode] += timed(fn, args.calls, gap, spin)
    reader.close()
    header = f"{'hop (median µs)':38}" + "".join(f"{mode:>22}" for mode, _, _ in modes)
    print(header + "".join(f"{'asleep/b2b ' + format(g, 'g') + ' ms':>22}" for g in args.gap_ms))
    for hop, _ in hops:
        medians = [statistics.median(pooled[hop, mode]) for mode, _, _ in modes]
        ratios = [medians[1 + 2 * i] / medians[0] for i in range(len(args.gap_ms))]
        print(f"{hop:38}" + "".join(f"{m:22.1f}" for m in medians) + "".join(f"{r:22.2f}" for r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())

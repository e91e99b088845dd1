"""A pod's life through containerd's CRI: the runc handler against our proxy shim, in one run (issue 16).

``python -m bench.cri [--rounds N]`` (root; Debian's containerd 1.6 with its CRI plugin on private sockets,
as tests/integration/test_cri_containerd.py runs it)

Each round runs one pod per handler, alternating: ``runc`` (containerd's own runc shim) and ``kata-stats``
(our proxy shim, ``containerd-shim-kata-stats-v2`` as ``shimstats install-shim`` writes it, on containerd's
PATH, its file given as the handler's ``options.ConfigPath`` as a Kata node's drop-in does, with
containerd-shim-runc-v2 as the inner shim). Each pod is driven as the kubelet drives one: RunPodSandbox,
CreateContainer (busybox ``sleep``), StartContainer, then StopPodSandbox and RemovePodSandbox; every call is
timed, and so is the whole. Nothing asks for Stats, so no guest agent runs.

Printed: medians and min–max per handler, and B − A against the issue's start target (+100 ms:
RunPodSandbox, and CreateContainer + StartContainer). The issue's delete target (+50 ms) is for one shim's
delete (``python -m bench.proxy``); a pod's StopPodSandbox and RemovePodSandbox stop and delete two
containers and one shim, and are printed without a target. Nothing here is asserted: the machine is shared
and the numbers move between runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from shimstats._proto.cri.runtime.v1 import api_pb2
from shimstats.proxy import RUNTIME_TYPE
from tests.cri_env import CriContainerd, Runtime, start_sleeping_container
from tests.integration.harness import short_tmp
from tests.integration.proxy_process import install_proxy

__all__ = ["main"]

HANDLERS = ("runc", "kata-stats")
TARGETS_MS = {"RunPodSandbox": 100.0, "Create + StartContainer": 100.0}


T = TypeVar("T")


def _timed(samples: dict[str, list[float]], what: str, call: Callable[[], T]) -> T:
    began = time.perf_counter()
    result = call()
    samples.setdefault(what, []).append((time.perf_counter() - began) * 1000.0)
    return result


def pod_life(cri: CriContainerd, handler: str, samples: dict[str, list[float]]) -> None:
    """One pod with one container, from RunPodSandbox to RemovePodSandbox; each step's ms into ``samples``."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    pod = _timed(samples, "RunPodSandbox", lambda: cri.run_pod(name, handler))
    _timed(samples, "Create + StartContainer", lambda: start_sleeping_container(cri, pod, "sleep"))
    for method in ("StopPodSandbox", "RemovePodSandbox"):
        request = getattr(api_pb2, f"{method}Request")(pod_sandbox_id=pod.id)
        call = getattr(cri.client.runtime, method)
        _timed(samples, method, lambda: cri.client.call(call, request, name=method, timeout=60.0))  # noqa: B023
    samples.setdefault("whole pod", []).append((time.perf_counter() - began) * 1000.0)
    cri.remove_pod_cgroup(pod)


def report(samples: dict[str, dict[str, list[float]]], rounds: int) -> None:
    a, b = HANDLERS
    print(f"\n{rounds} rounds, alternating {a} (A) / {b} (B); ms")
    print(f"{'call':<26}{'A p50':>9}{'A range':>15}{'B p50':>9}{'B range':>15}{'B-A':>9}")
    for what, theirs in samples[a].items():
        ours = samples[b][what]
        ma, mb = statistics.median(theirs), statistics.median(ours)
        line = f"{what:<26}{ma:>9.1f}{_spread(theirs):>15}{mb:>9.1f}{_spread(ours):>15}{mb - ma:>+9.1f}"
        if what in TARGETS_MS:
            target = TARGETS_MS[what]
            line += f"  target B-A <= +{target:g}: {'met' if mb - ma <= target else 'NOT met'}"
        print(line)


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cri", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="pods per handler (default 10)")
    args = parser.parse_args(argv)
    with short_tmp() as directory:
        bin_dir = directory / "bin"
        install_proxy(bin_dir)  # containerd 1.6 finds the shim binary on its PATH
        config = directory / "kata-stats.toml"
        config.write_text(
            'inner_shim = "containerd-shim-runc-v2"\n'
            f'agent = "unix://{directory}/a/{{sandbox}}/agent.sock"\n'
            'metrics_format = "v1"\n'
        )
        runtimes = {"kata-stats": Runtime(RUNTIME_TYPE, Path(config))}
        env = {"PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        samples: dict[str, dict[str, list[float]]] = {handler: {} for handler in HANDLERS}
        with CriContainerd(runtimes, env=env) as cri:
            for handler in HANDLERS:  # warm: images unpacked, caches filled, not counted
                pod_life(cri, handler, {})
            for round_number in range(args.rounds):
                for handler in HANDLERS:
                    pod_life(cri, handler, samples[handler])
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
    report(samples, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

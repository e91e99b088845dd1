"""What runs in each phase, and what each must visibly do to the guest's numbers.

Phases run in order and build on each other in one container cgroup (the OOM kill happens in a second
one), so every number that matters moves at least once. Each phase names the effects it must have on the
cgroup's own files: a workload that silently failed (THP off, no swap, no OOM) would otherwise leave a
phase that agrees only because nothing happened. Both sides import this module: the guest to run the
phases, the host to describe and judge them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the guest's worker imports this module: it must stay free of protobuf and friends
    from shimstats.guest_test.checks import RawCgroup

MIB = 1 << 20
PAGE_CACHE_MIB = 64
"""Written to ext4 on the data disk and synced: clean page cache."""
REREAD_MIB = 16
"""Its first part, read twice, so those pages move to the active list."""
ANON_MIB = 64
"""Anonymous memory in a MADV_HUGEPAGE mapping: anon and, with THP, anon_thp."""
SHMEM_MIB = 32
"""Written to a tmpfs file: shmem (it stays charged to the cgroup after its writer is gone)."""
LIMIT_MIB = 128
"""memory.max set in the pressure phase, well under what the container holds by then."""
PRESSURE_MIB = 48
"""More anonymous memory allocated under that limit: reclaim, swap-out and limit hits."""
OOM_LIMIT_MIB = 32
"""The second cgroup's limit, with no swap: a 64 MiB allocation there is OOM-killed."""
OOM_HOG_MIB = 64

MAIN = ("guest-test", "/guest-test")
"""The container the phases run in: (container id, cgroup path)."""
OOM = ("guest-test-oom", "/guest-test-oom")


@dataclass(frozen=True)
class Effect:
    """Something a phase must have done, as the guest's own files show it."""

    text: str
    holds: Callable[[RawCgroup], bool]


def _stat(raw: RawCgroup, v2_key: str, v1_key: str) -> int:
    return raw.stat.get(v2_key if raw.version == 2 else v1_key, 0)


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    container: tuple[str, str]
    workload: str
    """What has run in the cgroup by the time of the capture (recorded in the fixture's meta.json)."""
    effects: tuple[Effect, ...]

    @property
    def container_id(self) -> str:
        return self.container[0]

    @property
    def cgroup_path(self) -> str:
        return self.container[1]


_WORKER = "one python process (shimstats.guest_test.worker)"
_PAGE_CACHE = (
    f"{PAGE_CACHE_MIB} MiB written to ext4 on virtio-blk and fsynced, its first {REREAD_MIB} MiB read twice"
)
_ANON = f"{ANON_MIB} MiB of anonymous memory in a MADV_HUGEPAGE mapping, every page touched"
_SHMEM = f"{SHMEM_MIB} MiB written to a file on tmpfs (/dev/shm)"
_PRESSURE = f"memory limit set to {LIMIT_MIB} MiB, then {PRESSURE_MIB} MiB more anonymous memory touched"

PHASES: tuple[Phase, ...] = (
    Phase(
        "empty",
        "a new container cgroup, nothing in it",
        MAIN,
        "none: the cgroup was just created",
        (Effect("no process in it", lambda r: r.pids in (0, None)),),
    ),
    Phase(
        "pagecache",
        "page cache written and re-read",
        MAIN,
        f"{_WORKER}: {_PAGE_CACHE}",
        (
            Effect(
                f"file cache >= {PAGE_CACHE_MIB - 4} MiB",
                lambda r: _stat(r, "file", "total_cache") >= (PAGE_CACHE_MIB - 4) * MIB,
            ),
            Effect("some of it active", lambda r: _stat(r, "active_file", "total_active_file") > 0),
            Effect(
                "its writes charged to the cgroup (v2; v1 charges writeback to the flusher)",
                lambda r: r.version == 1 or any(d.get("wbytes", 0) > 0 for d in r.io.values()),
            ),
        ),
    ),
    Phase(
        "anon-thp",
        "anonymous memory with transparent huge pages",
        MAIN,
        f"{_WORKER}: {_PAGE_CACHE}; {_ANON}",
        (
            Effect(f"anon >= {ANON_MIB} MiB", lambda r: _stat(r, "anon", "total_rss") >= ANON_MIB * MIB),
            Effect("huge pages in use", lambda r: _stat(r, "anon_thp", "total_rss_huge") > 0),
        ),
    ),
    Phase(
        "shmem",
        "shared memory on tmpfs",
        MAIN,
        f"{_WORKER}: {_PAGE_CACHE}; {_ANON}; {_SHMEM}",
        (Effect(f"shmem >= {SHMEM_MIB} MiB", lambda r: _stat(r, "shmem", "total_shmem") >= SHMEM_MIB * MIB),),
    ),
    Phase(
        "pressure",
        "a memory limit with reclaim and swap",
        MAIN,
        f"{_WORKER}: {_PAGE_CACHE}; {_ANON}; {_SHMEM}; {_PRESSURE}",
        (
            Effect(f"limit {LIMIT_MIB} MiB", lambda r: r.limit == LIMIT_MIB * MIB),
            Effect("usage within it", lambda r: r.usage <= LIMIT_MIB * MIB),
            Effect("the limit was hit", lambda r: r.limit_hits > 0),
            Effect("memory swapped out", lambda r: (r.swap or 0) > 0),
        ),
    ),
    Phase(
        "oom",
        "an OOM kill in a second cgroup",
        OOM,
        f"memory limit {OOM_LIMIT_MIB} MiB and no swap; a sleeping process, then busybox dd with a "
        f"{OOM_HOG_MIB} MiB buffer, which the OOM killer killed",
        (
            Effect("one OOM kill", lambda r: r.events.get("oom_kill", 0) >= 1),
            Effect("the sleeper survived", lambda r: r.pids in (1, None)),
        ),
    ),
    Phase(
        "after-kill",
        "the container after its workload was killed",
        MAIN,
        f"{_WORKER}: {_PAGE_CACHE}; {_ANON}; {_SHMEM}; {_PRESSURE}; then the worker was SIGKILLed",
        (
            Effect("no process left", lambda r: r.pids in (0, None)),
            Effect(
                "the tmpfs file still charged (in memory or swap)",
                lambda r: _stat(r, "shmem", "total_shmem") > 0 or (r.swap or 0) > 0,
            ),
        ),
    ),
)

BY_NAME = {phase.name: phase for phase in PHASES}

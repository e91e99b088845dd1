"""Why is the working set what it is: break it into its parts and name the likely story.

The working set containerd and the kubelet judge a container by is usage − inactive_file. What stays in it,
from the guest's own memory.stat (shimstats.translate's version-neutral record, v2 vocabulary):

* anon: the processes' own memory (heap, stacks; v1 ``rss``);
* active file cache: pages of files read more than once recently: the kubelet counts them as used
  (kubernetes#43916), although the kernel can reclaim them;
* shmem / tmpfs: files in memory (emptyDir medium Memory, /dev/shm); they sit on the anon lists and cannot be
  dropped without swap;
* kernel: slab (dentries, inodes), kernel stacks, page tables... (v1: the kmem counter, fed into usage;
  v2: memory.stat ``kernel``);
* sock: socket buffers (charged to memory.current on v2 only);
* other: what usage counts beyond these parts (swap cache, unevictable pages, counters read a moment apart).

inactive_file is shown too, outside the working set: it is what a shim that forgets to subtract it adds.

Stories are chosen by share of the working set (or of usage, for inactive_file), thresholds below; every
story that applies is listed, the largest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shimstats import cri
from shimstats.ground_truth import GroundTruth
from shimstats.translate import record_from_agent
from shimstats.translate.record import MemoryRecord

STORY_SHARE = 0.5
"""A part is *the* story when it is at least this share of the working set (inactive_file: of usage)."""
SIDE_SHARE = 0.25
"""shmem and kernel memory are worth a story from this share of the working set on."""
EVICTION_HARD_DEFAULT = 100 * 1024 * 1024
"""The kubelet's default hard eviction threshold, memory.available<100Mi."""


@dataclass(frozen=True)
class Part:
    """One slice of memory: its key, name for people, bytes, and whether the working set counts it."""

    key: str
    label: str
    bytes: int
    in_working_set: bool
    detail: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Story:
    """A likely explanation: a key tests and scripts can match, and the words for people."""

    key: str
    weight: int
    text: str


@dataclass(frozen=True)
class Explanation:
    """The breakdown of one container's working set, its limit headroom and the stories that fit."""

    container_id: str
    source: str
    guest: str
    usage: int
    working_set: int
    limit: int | None
    parts: tuple[Part, ...]
    stories: tuple[Story, ...]

    @property
    def available(self) -> int | None:
        """CRI's availableBytes (limit − working set), None without a limit."""
        return None if self.limit is None else cri.available(self.limit, self.working_set)

    def share(self, part: Part) -> float:
        return share_of(part, self.usage, self.working_set)

    def to_json(self) -> dict[str, Any]:
        limit: dict[str, Any] | None = None
        if self.limit is not None:
            limit = {
                "limit_bytes": self.limit,
                "working_set_share": self.working_set / self.limit if self.limit else None,
                "available_bytes": self.available,
                "eviction_hard_threshold_bytes": EVICTION_HARD_DEFAULT,
            }
        return {
            "id": self.container_id,
            "source": self.source,
            "guest": self.guest,
            "usage_bytes": self.usage,
            "working_set_bytes": self.working_set,
            "limit": limit,
            "parts": [
                {
                    "key": p.key,
                    "label": p.label,
                    "bytes": p.bytes,
                    "in_working_set": p.in_working_set,
                    "share": self.share(p),
                    "detail": dict(p.detail),
                }
                for p in self.parts
            ],
            "stories": [{"key": s.key, "text": s.text} for s in self.stories],
        }


def share_of(part: Part, usage: int, working_set: int) -> float:
    """The part's share of the working set (a part outside it: of usage); 0 when that base is 0."""
    base = working_set if part.in_working_set else usage
    return part.bytes / base if base else 0.0


def _pct(value: int, base: int) -> str:
    return f"{100 * value / base:.0f}%" if base else "-"


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def _kernel(memory: MemoryRecord) -> tuple[int, tuple[tuple[str, int], ...]]:
    """Kernel bytes in the working set and their itemised parts (v2 only; v1 has just the kmem counter)."""
    total = memory.kernel.usage if memory.kernel is not None else 0
    stat = memory.hierarchy
    items = (
        ("slab_reclaimable", stat.slab_reclaimable),
        ("slab_unreclaimable", stat.slab_unreclaimable),
        ("kernel_stack", stat.kernel_stack),
        ("pagetables", stat.pagetables),
        ("percpu", stat.percpu),
        ("vmalloc", stat.vmalloc),
    )
    return total, tuple((name, value) for name, value in items if value)


def breakdown(memory: MemoryRecord, guest: str) -> tuple[Part, ...]:
    """The parts of usage, working-set parts first, the remainder as ``other``, inactive_file last."""
    stat = memory.hierarchy
    kernel, kernel_detail = _kernel(memory)
    sock = (stat.sock or 0) if guest == "v2" else 0  # v1 charges sockets to kmem.tcp, outside usage
    parts = [
        Part("anon", "anon (heap, stacks)", stat.anon or 0, True),
        Part("active_file", "active file cache", stat.active_file or 0, True),
        Part("shmem", "shmem / tmpfs", stat.shmem or 0, True),
        Part("kernel", "kernel (slab, stacks, page tables)", kernel, True, kernel_detail),
    ]
    if guest == "v2":
        parts.append(Part("sock", "socket buffers", sock, True))
    counted = sum(p.bytes for p in parts)
    parts.append(
        Part("other", "other (swap cache, unevictable, read skew)", memory.working_set - counted, True)
    )
    parts.append(Part("inactive_file", "inactive file cache (not counted)", stat.inactive_file or 0, False))
    return tuple(parts)


def stories(parts: tuple[Part, ...], usage: int, working_set: int, guest: str) -> tuple[Story, ...]:
    """Every story the numbers support, the one with the most bytes first."""
    by_key = {p.key: p for p in parts}
    found: list[Story] = []

    def share(key: str) -> float:
        return share_of(by_key[key], usage, working_set)

    active = by_key["active_file"].bytes
    if share("active_file") >= STORY_SHARE:
        found.append(
            Story(
                "active_file",
                active,
                f"active file cache is {_pct(active, working_set)} of the working set ({_mib(active)}): a "
                "process keeps re-reading files (often a log that is never rotated); the kubelet counts "
                "active_file as used (kubernetes#43916), so eviction and `kubectl top` see it although "
                "the kernel could reclaim it",
            )
        )
    inactive = by_key["inactive_file"].bytes
    if share("inactive_file") >= STORY_SHARE:
        found.append(
            Story(
                "inactive_file",
                inactive,
                f"inactive file cache is {_pct(inactive, usage)} of usage ({_mib(inactive)}): files written "
                "or read once; it is reclaimable and the working set leaves it out, but a shim that does "
                f"not subtract inactive_file (kata-containers#10280) reports {_mib(usage)} instead of "
                f"{_mib(working_set)}",
            )
        )
    anon = by_key["anon"].bytes
    if share("anon") >= STORY_SHARE:
        found.append(
            Story(
                "anon",
                anon,
                f"anonymous memory is {_pct(anon, working_set)} of the working set ({_mib(anon)}): the "
                "application's own heap and stacks; only the application freeing memory lowers it",
            )
        )
    shmem = by_key["shmem"].bytes
    if share("shmem") >= SIDE_SHARE:
        found.append(
            Story(
                "shmem",
                shmem,
                f"shmem/tmpfs is {_pct(shmem, working_set)} of the working set ({_mib(shmem)}): files kept "
                "in memory (emptyDir with medium Memory, /dev/shm) count as used and cannot be reclaimed "
                "without swap",
            )
        )
    kernel = by_key["kernel"].bytes
    if share("kernel") >= SIDE_SHARE:
        note = " on cgroup v2, where reclaimable slab stays in the working set (cadvisor#3081)"
        found.append(
            Story(
                "kernel",
                kernel,
                f"kernel memory is {_pct(kernel, working_set)} of the working set ({_mib(kernel)}), mostly "
                f"dentry and inode caches (slab) when many files are touched{note if guest == 'v2' else ''}",
            )
        )
    if not found:
        found.append(
            Story(
                "mixed",
                working_set,
                "no single part dominates the working set: see the breakdown",
            )
        )
    return tuple(sorted(found, key=lambda s: -s.weight))


def explain(truth: GroundTruth, container_id: str) -> Explanation:
    """The breakdown and stories for one reading of a container's stats."""
    record = record_from_agent(truth.response)
    if record.memory is None:
        raise ValueError(f"{truth.source}: no memory stats to explain")
    memory = record.memory
    usage = memory.usage.usage
    ws = memory.working_set
    parts = breakdown(memory, record.guest)
    limit = memory.usage.limit
    return Explanation(
        container_id=container_id,
        source=truth.source,
        guest=record.guest,
        usage=usage,
        working_set=ws,
        limit=None if limit is None or cri.is_unlimited(limit) else limit,
        parts=parts,
        stories=stories(parts, usage, ws, record.guest),
    )

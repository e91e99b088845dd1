"""Guests for the translation tests: generated ones, real fixtures, and the agent replies they produce.

A ``Guest`` is the ground truth of one guest cgroup (its raw memory.stat map and memory files). Generated
guests are self-consistent by these rules, per version (all sizes are whole 4 KiB pages):

* v1: every local key has a ``total_`` twin = local + a descendant part; shmem, mapped_file, dirty and
  writeback are parts of cache, rss_huge of rss; the anon LRU lists hold rss + shmem (shmem is swap-backed)
  minus unevictable, the file lists hold cache - shmem; usage = total_rss + total_cache + kmem (v1 charges
  kernel memory to the main counter) give or take the counter's per-cpu fuzz, and sometimes far less, so
  that inactive_file >= usage (working set 0) is exercised; memsw = usage + total_swap.
* v2: shmem, file_mapped, file_dirty, file_writeback are parts of file, anon_thp of anon; kernel >= the sum
  of its itemised parts, slab = slab_reclaimable + slab_unreclaimable; LRU lists as on v1; usage = anon +
  file + kernel + sock (v2 charges kernel and socket memory), fuzzed like v1. Some guests lack the ``kernel``
  key (kernels before 5.19) or use the pre-5.9 workingset names.

Replies: ``agent_response`` writes what our guest agent sends (guest_agent/kata.py's table), and
``kata_agent_v2`` turns a v2 reply into what a real kata-agent sends for the same cgroup (docs/spec/metrics.md
§5.3): cache 0, kernel usage 0, failcnt 0, unlimited swap as 0, throttled time 0, use_hierarchy false.
Real fixtures go through the guest agent's own reader; their truth is read here straight from the files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shimstats._proto.kata import agent_pb2

PAGE = 4096
U64_MAX = 2**64 - 1
V1_UNLIMITED = 9223372036854771712  # PAGE_COUNTER_MAX * PAGE_SIZE, what v1 writes for "no limit"
NO_DEADLINE = settings(deadline=None)
"""For property tests: bounded by their example count; a loaded machine must not make them flake."""
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroupfs"


@dataclass(frozen=True)
class Guest:
    """Ground truth for one guest cgroup; ``swap`` is swap only (None: no swap accounting)."""

    version: Literal["v1", "v2"]
    stats: dict[str, int]
    usage: int
    limit: int
    peak: int = 0
    failcnt: int = 0
    swap: int | None = None
    swap_limit: int = U64_MAX
    """Swap only; v1 guests: memsw limit - memory limit, U64_MAX when memsw is unlimited."""
    kernel: int = 0
    """v1: memory.kmem.usage_in_bytes; v2: memory.stat kernel (or the sum of its parts)."""

    def key(self, v1_key: str, v2_key: str) -> int:
        """The hierarchical figure CRI reads: ``total_<v1_key>`` on v1, ``<v2_key>`` on v2 (0 if absent)."""
        return self.stats.get("total_" + v1_key if self.version == "v1" else v2_key, 0)

    @property
    def inactive_file(self) -> int:
        return self.key("inactive_file", "inactive_file")

    @property
    def rss(self) -> int:
        return self.key("rss", "anon")

    @property
    def pgfault(self) -> int:
        return self.key("pgfault", "pgfault")

    @property
    def pgmajfault(self) -> int:
        return self.key("pgmajfault", "pgmajfault")

    @property
    def cache(self) -> int:
        return self.key("cache", "file")


def expected_working_set(usage: int, inactive_file: int) -> int:
    """The issue's rule: usage - inactive_file, 0 when the inactive cache is not below usage."""
    return usage - inactive_file if inactive_file < usage else 0


# ---------------------------------------------------------------------------------------------- replies


def memory_data(usage: int, limit: int, max_usage: int = 0, failcnt: int = 0) -> agent_pb2.MemoryData:
    return agent_pb2.MemoryData(usage=usage, limit=limit, max_usage=max_usage, failcnt=failcnt)


def agent_response(guest: Guest) -> agent_pb2.StatsContainerResponse:
    """What our guest agent sends for ``guest`` (memory only)."""
    response = agent_pb2.StatsContainerResponse()
    ms = response.cgroup_stats.memory_stats
    ms.stats.update(guest.stats)
    ms.use_hierarchy = True
    ms.usage.CopyFrom(memory_data(guest.usage, guest.limit, guest.peak, guest.failcnt))
    if guest.version == "v1":
        ms.cache = guest.stats["cache"]
        ms.kernel_usage.CopyFrom(memory_data(guest.kernel, V1_UNLIMITED, guest.kernel))
        if guest.swap is not None:
            memsw_limit = V1_UNLIMITED if guest.swap_limit == U64_MAX else guest.limit + guest.swap_limit
            ms.swap_usage.CopyFrom(memory_data(guest.usage + guest.swap, memsw_limit))
    else:
        ms.cache = guest.stats["file"]
        ms.kernel_usage.CopyFrom(memory_data(guest.kernel, U64_MAX))
        if guest.swap is not None:
            ms.swap_usage.CopyFrom(memory_data(guest.swap, guest.swap_limit))
    return response


def kata_agent_v2(ours: agent_pb2.StatsContainerResponse) -> agent_pb2.StatsContainerResponse:
    """The reply a real kata-agent sends for the v2 cgroup our agent described in ``ours``."""
    kata = agent_pb2.StatsContainerResponse()
    kata.CopyFrom(ours)
    cg = kata.cgroup_stats
    if cg.HasField("memory_stats"):
        ms = cg.memory_stats
        ms.cache = 0
        ms.use_hierarchy = False
        ms.usage.failcnt = 0
        ms.kernel_usage.CopyFrom(memory_data(0, U64_MAX))
        if ms.HasField("swap_usage") and ms.swap_usage.limit == U64_MAX:
            ms.swap_usage.limit = 0
    if cg.HasField("cpu_stats") and cg.cpu_stats.HasField("throttling_data"):
        cg.cpu_stats.throttling_data.throttled_time = 0
    return kata


DEVICES = ((8, 0), (8, 16))
"""Two block devices (sda, sdb): enough to see whether devices are kept apart."""


def add_controllers(response: agent_pb2.StatsContainerResponse, version: str) -> None:
    """Fill cpu, pids, blkio, hugetlb and network the way our agent does for a ``version`` guest.

    Numbers follow the kernel's rules so tests can derive expectations: cpu total = user + kernel (ns); v1
    per-cpu figures add up to the total; v1 blkio per device and file: Sync + Async = Read + Write + Discard
    = Total; a v2 device is the six kata entries (read, write, rios, wios, dbytes, dios); every value is
    distinct so a mix-up shows.
    """
    cg = response.cgroup_stats
    user, kernel = 3_000_001_999, 1_999_000_501
    usage = cg.cpu_stats.cpu_usage
    usage.total_usage, usage.usage_in_usermode, usage.usage_in_kernelmode = user + kernel, user, kernel
    if version == "v1":
        usage.percpu_usage.extend([user, kernel])
    cg.cpu_stats.throttling_data.CopyFrom(
        agent_pb2.ThrottlingData(periods=100, throttled_periods=7, throttled_time=123_456_789)
    )
    cg.pids_stats.current, cg.pids_stats.limit = 12, 0
    blkio = cg.blkio_stats
    blkio.SetInParent()
    for n, (major, minor) in enumerate(DEVICES, start=1):
        read, write, discard = 1000 * n + 1, 2000 * n + 2, 30 * n
        if version == "v2":
            values = {"read": read * 512, "write": write * 512, "rios": read, "wios": write}
            values |= {"dbytes": discard * 512, "dios": discard}
            for op, value in values.items():
                blkio.io_service_bytes_recursive.add(major=major, minor=minor, op=op, value=value)
            continue
        for name, scale in (("io_service_bytes_recursive", 512), ("io_serviced_recursive", 1)):
            entries = getattr(blkio, name)
            r, w, d = read * scale, write * scale, discard * scale
            sync = (r + w + d) // 3
            for op, value in (("read", r), ("write", w), ("sync", sync), ("async", r + w + d - sync)):
                entries.add(major=major, minor=minor, op=op, value=value)
            entries.add(major=major, minor=minor, op="discard", value=d)
            entries.add(major=major, minor=minor, op="total", value=r + w + d)
        blkio.io_queued_recursive.add(major=major, minor=minor, op="read", value=n)
        blkio.io_time_recursive.add(major=major, minor=minor, op="", value=777 * n)
        blkio.sectors_recursive.add(major=major, minor=minor, op="", value=(read + write) * n)
    cg.hugetlb_stats["2MB"].CopyFrom(agent_pb2.HugetlbStats(usage=4 << 20, max_usage=6 << 20, failcnt=1))
    cg.hugetlb_stats["1GB"].CopyFrom(agent_pb2.HugetlbStats(usage=0, max_usage=0, failcnt=0))
    response.network_stats.add(name="eth0", rx_bytes=1500, rx_packets=3, rx_errors=1, rx_dropped=2)
    response.network_stats.add(name="eth1", tx_bytes=9000, tx_packets=6, tx_errors=4, tx_dropped=5)


def full_response(guest: Guest) -> agent_pb2.StatsContainerResponse:
    """Our agent's reply for ``guest`` with every controller."""
    response = agent_response(guest)
    add_controllers(response, guest.version)
    return response


# ---------------------------------------------------------------------------------------------- strategies

pages = st.integers(min_value=0, max_value=1 << 20).map(lambda n: n * PAGE)
counts = st.integers(min_value=0, max_value=1 << 40)


@st.composite
def _part_of(draw: st.DrawFn, whole: int) -> int:
    return draw(st.integers(min_value=0, max_value=whole // PAGE)) * PAGE


@st.composite
def _lru(draw: st.DrawFn, anon_pool: int, file_pool: int) -> dict[str, int]:
    """Split the anon and file pools over the LRU lists; unevictable comes out of the anon pool."""
    unevictable = draw(_part_of(anon_pool))
    inactive_anon = draw(_part_of(anon_pool - unevictable))
    inactive_file = draw(_part_of(file_pool))
    return {
        "inactive_anon": inactive_anon,
        "active_anon": anon_pool - unevictable - inactive_anon,
        "inactive_file": inactive_file,
        "active_file": file_pool - inactive_file,
        "unevictable": unevictable,
    }


@st.composite
def _usage(draw: st.DrawFn, charged: int) -> int:
    """The counter's reading for ``charged`` bytes: within a few pages, or (rarely) far below."""
    far_below = draw(st.integers(min_value=0, max_value=9)) == 0
    fuzz = draw(pages if far_below else st.integers(min_value=-16, max_value=16).map(lambda n: n * PAGE))
    return max(charged - fuzz, 0)


@st.composite
def _v1_local(draw: st.DrawFn) -> dict[str, int]:
    rss, cache = draw(pages), draw(pages)
    shmem = draw(_part_of(cache))
    part = {
        "cache": cache,
        "rss": rss,
        "rss_huge": draw(_part_of(rss)),
        "shmem": shmem,
        "mapped_file": draw(_part_of(cache)),
        "dirty": draw(_part_of(cache)),
        "writeback": draw(_part_of(cache)),
        "swap": draw(pages),
        "pgpgin": draw(counts),
        "pgpgout": draw(counts),
        "workingset_refault_anon": draw(counts),
        "workingset_refault_file": draw(counts),
    }
    part["pgfault"] = draw(counts)
    part["pgmajfault"] = draw(st.integers(min_value=0, max_value=part["pgfault"]))
    part.update(draw(_lru(rss + shmem, cache - shmem)))
    return part


@st.composite
def v1_guests(draw: st.DrawFn) -> Guest:
    local = draw(_v1_local())
    children = draw(st.one_of(st.none(), _v1_local()))
    total = {k: v + (children[k] if children else 0) for k, v in local.items()}
    kmem = draw(pages)
    usage = draw(_usage(total["rss"] + total["cache"] + kmem))
    limit = draw(st.one_of(st.just(V1_UNLIMITED), pages.map(lambda p: p + PAGE)))
    swap_limit = U64_MAX if limit == V1_UNLIMITED else draw(st.one_of(st.just(U64_MAX), pages))
    memsw_limit = V1_UNLIMITED if swap_limit == U64_MAX else limit + swap_limit
    stats = dict(local)
    stats.update({"total_" + k: v for k, v in total.items()})
    stats["hierarchical_memory_limit"] = limit
    stats["hierarchical_memsw_limit"] = memsw_limit
    return Guest(
        version="v1",
        stats=stats,
        usage=usage,
        limit=limit,
        peak=usage + draw(pages),
        failcnt=draw(counts),
        swap=draw(st.one_of(st.none(), st.just(total["swap"]))),
        swap_limit=swap_limit,
        kernel=kmem,
    )


V2_KERNEL_PARTS = ("kernel_stack", "pagetables", "sec_pagetables", "percpu", "vmalloc")
V2_EVENTS = (
    "pgrefill",
    "pgscan",
    "pgsteal",
    "pgactivate",
    "pgdeactivate",
    "pglazyfree",
    "pglazyfreed",
    "thp_fault_alloc",
    "thp_collapse_alloc",
    "workingset_nodereclaim",
)


@st.composite
def v2_guests(draw: st.DrawFn) -> Guest:
    anon, file = draw(pages), draw(pages)
    shmem = draw(_part_of(file))
    stats = {
        "anon": anon,
        "file": file,
        "shmem": shmem,
        "anon_thp": draw(_part_of(anon)),
        "file_mapped": draw(_part_of(file)),
        "file_dirty": draw(_part_of(file)),
        "file_writeback": draw(_part_of(file)),
        "sock": draw(pages),
        "slab_reclaimable": draw(pages),
        "slab_unreclaimable": draw(pages),
    }
    stats["slab"] = stats["slab_reclaimable"] + stats["slab_unreclaimable"]
    stats.update({k: draw(pages) for k in V2_KERNEL_PARTS})
    kernel = stats["slab"] + sum(stats[k] for k in V2_KERNEL_PARTS)
    new_kernel = draw(st.booleans())  # 5.19+: has the "kernel" key, which also counts other allocations
    if new_kernel:
        kernel += draw(pages)
        stats["kernel"] = kernel
    stats.update(draw(_lru(anon + shmem, file - shmem)))
    stats["pgfault"] = draw(counts)
    stats["pgmajfault"] = draw(st.integers(min_value=0, max_value=stats["pgfault"]))
    stats.update({k: draw(counts) for k in V2_EVENTS})
    if draw(st.booleans()):  # 5.9+ names
        for k in ("refault", "activate", "restore"):
            stats[f"workingset_{k}_anon"] = draw(counts)
            stats[f"workingset_{k}_file"] = draw(counts)
    else:
        stats["workingset_refault"] = draw(counts)
        stats["workingset_activate"] = draw(counts)
    usage = draw(_usage(anon + file + kernel + stats["sock"]))
    return Guest(
        version="v2",
        stats=stats,
        usage=usage,
        limit=draw(st.one_of(st.just(U64_MAX), pages.map(lambda p: p + PAGE))),
        peak=draw(st.one_of(st.just(0), pages.map(lambda p: usage + p))),
        failcnt=draw(counts),
        swap=draw(st.one_of(st.none(), pages)),
        swap_limit=draw(st.one_of(st.just(U64_MAX), pages)),
        kernel=kernel,
    )


# ---------------------------------------------------------------------------------------------- fixtures


def fixture_names() -> list[str]:
    return sorted(p.parent.name for p in FIXTURES.glob("*/meta.json"))


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _read_keyed(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines() if line)}


def fixture_guest(name: str) -> Guest:
    """The ground truth of a fixture, read from its files (not through guest_agent).

    Rules: v1 usage = memory.usage_in_bytes, swap = memsw - usage; v2 usage = memory.current, swap =
    memory.swap.current; the v2 root has no memory.current, so usage = memory.stat anon + file and swap =
    meminfo SwapTotal - SwapFree (runc's root rule, which the guest agent follows too).
    """
    root = FIXTURES / name
    meta = json.loads((root / "meta.json").read_text())
    path = meta["container_path"].strip("/")
    if meta["mode"] == "v2":
        d = root / "cgroup" / path
        stats = _read_keyed(d / "memory.stat")
        if (d / "memory.current").exists():
            usage = _read_int(d / "memory.current")
            max_text = (d / "memory.max").read_text().strip()
            limit = U64_MAX if max_text == "max" else int(max_text)
            swap_file = d / "memory.swap.current"
            swap = _read_int(swap_file) if swap_file.exists() else None
        else:
            usage, limit = stats["anon"] + stats["file"], U64_MAX
            info = {k.rstrip(":"): int(v) for k, v, *_ in (ln.split() for ln in (root / "meminfo").open())}
            swap = (info["SwapTotal"] - info["SwapFree"]) * 1024
        return Guest("v2", stats, usage, limit, swap=swap, kernel=stats.get("kernel", 0))
    d = root / "cgroup" / "memory" / path
    usage = _read_int(d / "memory.usage_in_bytes")
    memsw = d / "memory.memsw.usage_in_bytes"
    return Guest(
        "v1",
        _read_keyed(d / "memory.stat"),
        usage,
        _read_int(d / "memory.limit_in_bytes"),
        swap=max(_read_int(memsw) - usage, 0) if memsw.exists() else None,
        kernel=_read_int(d / "memory.kmem.usage_in_bytes"),
    )


def fixture_response(name: str) -> agent_pb2.StatsContainerResponse:
    """The reply our guest agent gives for a fixture, through its own reader (guest_agent.reader)."""
    from guest_agent.kata import to_response
    from guest_agent.layout import detect_layout
    from guest_agent.reader import CgroupReader

    root = FIXTURES / name
    meta = json.loads((root / "meta.json").read_text())
    reader = CgroupReader(detect_layout(str(root / "cgroup")), meminfo=str(root / "meminfo"), clk_tck=100)
    try:
        return to_response(reader.read(meta["container_path"]))
    finally:
        reader.close()


@dataclass(frozen=True)
class Case:
    """A guest, the reply an agent gives for it, and which agent (``ours`` or ``kata``)."""

    name: str
    guest: Guest
    response: agent_pb2.StatsContainerResponse
    agent: Literal["ours", "kata"]


def fixture_cases() -> Iterator[Case]:
    """Every real fixture as our agent answers it, and v2 ones also as a real kata-agent would."""
    for name in fixture_names():
        guest, response = fixture_guest(name), fixture_response(name)
        yield Case(name, guest, response, "ours")
        if guest.version == "v2":
            yield Case(name + "/kata", guest, kata_agent_v2(response), "kata")


def example_v1() -> Guest:
    """A v1 container with a child: local + child parts, by the v1 rules above (numbers in pages)."""
    local = {"cache": 2000, "rss": 300, "rss_huge": 64, "shmem": 100, "mapped_file": 50, "dirty": 7}
    local |= {"writeback": 1, "swap": 20, "inactive_anon": 250, "active_anon": 150, "inactive_file": 1500}
    local |= {"active_file": 400, "unevictable": 0}
    child = {k: v // 2 for k, v in local.items()}
    stats = {k: v * PAGE for k, v in local.items()}
    stats |= {"total_" + k: (v + child[k]) * PAGE for k, v in local.items()}
    stats |= {"pgfault": 9000, "pgmajfault": 12, "pgpgin": 5000, "pgpgout": 3000, "total_pgfault": 13500}
    stats |= {"total_pgmajfault": 18, "total_pgpgin": 7500, "total_pgpgout": 4500}
    stats |= {"hierarchical_memory_limit": 1 << 30, "hierarchical_memsw_limit": (1 << 30) + (1 << 28)}
    kmem = 64 * PAGE
    usage = stats["total_rss"] + stats["total_cache"] + kmem
    return Guest("v1", stats, usage, 1 << 30, usage + 10 * PAGE, 3, stats["total_swap"], 1 << 28, kmem)


def example_v2() -> Guest:
    """A v2 container on a 5.19+ kernel, by the v2 rules above (sizes in pages)."""
    p = {"anon": 300, "file": 2000, "shmem": 100, "file_mapped": 50, "file_dirty": 7, "file_writeback": 1}
    p |= {"anon_thp": 64, "inactive_anon": 250, "active_anon": 150, "inactive_file": 1500, "active_file": 400}
    p |= {"unevictable": 0, "kernel_stack": 8, "pagetables": 6, "percpu": 2, "vmalloc": 1, "sock": 3}
    p |= {"slab_reclaimable": 20, "slab_unreclaimable": 10, "slab": 30}
    stats = {k: v * PAGE for k, v in p.items()}
    stats["kernel"] = (8 + 6 + 2 + 1 + 30 + 5) * PAGE  # the parts plus 5 pages of other kernel memory
    stats |= {"pgfault": 9000, "pgmajfault": 12, "workingset_refault_file": 40, "workingset_refault_anon": 2}
    stats |= {"workingset_activate_file": 30, "workingset_activate_anon": 1, "pgscan": 100, "pgsteal": 90}
    usage = stats["anon"] + stats["file"] + stats["kernel"] + stats["sock"]
    return Guest("v2", stats, usage, 1 << 30, usage + 10 * PAGE, 3, 20 * PAGE, U64_MAX, stats["kernel"])


def example_cases() -> Iterator[Case]:
    v1, v2 = example_v1(), example_v2()
    yield Case("example-v1", v1, agent_response(v1), "ours")
    yield Case("example-v2", v2, agent_response(v2), "ours")
    yield Case("example-v2/kata", v2, kata_agent_v2(agent_response(v2)), "kata")


def all_cases() -> list[Case]:
    return [*example_cases(), *fixture_cases()]


# ---------------------------------------------------------------------------------------------- self-checks
# The invariant tests are only as good as these guests; these checks hold the generators to their rules.


def _check_lru(stats: dict[str, int], prefix: str, anon: str, file: str) -> None:
    s = {k[len(prefix) :]: v for k, v in stats.items() if k.startswith(prefix)} if prefix else stats
    assert s["inactive_anon"] + s["active_anon"] + s["unevictable"] == s[anon] + s["shmem"]
    assert s["inactive_file"] + s["active_file"] == s[file] - s["shmem"]


@NO_DEADLINE
@given(v1_guests())
def test_v1_guests_follow_the_v1_rules(guest: Guest) -> None:
    _check_lru(guest.stats, "", "rss", "cache")
    _check_lru(guest.stats, "total_", "rss", "cache")
    for key in ("cache", "rss", "pgfault", "inactive_file"):
        assert guest.stats["total_" + key] >= guest.stats[key]
    assert guest.usage <= guest.stats["total_rss"] + guest.stats["total_cache"] + guest.kernel + 16 * PAGE
    assert all(v % PAGE == 0 for k, v in guest.stats.items() if "pg" not in k and "workingset" not in k)


@NO_DEADLINE
@given(v2_guests())
def test_v2_guests_follow_the_v2_rules(guest: Guest) -> None:
    s = guest.stats
    _check_lru(s, "", "anon", "file")
    assert s["slab"] == s["slab_reclaimable"] + s["slab_unreclaimable"]
    assert guest.kernel >= s["slab"] + sum(s[k] for k in V2_KERNEL_PARTS)
    assert ("kernel" in s) == (s.get("kernel") == guest.kernel)
    assert guest.usage <= s["anon"] + s["file"] + guest.kernel + s["sock"] + 16 * PAGE


@NO_DEADLINE
@given(v2_guests())
def test_kata_agent_v2_reply_has_the_documented_gaps(guest: Guest) -> None:
    ours = agent_response(guest)
    kata = kata_agent_v2(ours).cgroup_stats.memory_stats
    assert (kata.cache, kata.kernel_usage.usage, kata.usage.failcnt, kata.use_hierarchy) == (0, 0, 0, False)
    assert kata.stats == ours.cgroup_stats.memory_stats.stats
    if guest.swap is not None:
        assert kata.swap_usage.limit == (0 if guest.swap_limit == U64_MAX else guest.swap_limit)


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_reply_agrees_with_the_files(name: str) -> None:
    """The guest agent's reply carries the same usage and memory.stat as the fixture files say."""
    guest, ms = fixture_guest(name), fixture_response(name).cgroup_stats.memory_stats
    assert ms.usage.usage == guest.usage
    assert dict(ms.stats) == guest.stats


def test_examples_follow_their_rules() -> None:
    v1, v2 = example_v1(), example_v2()
    _check_lru(v1.stats, "", "rss", "cache")
    _check_lru(v1.stats, "total_", "rss", "cache")
    _check_lru(v2.stats, "", "anon", "file")
    assert v1.usage == v1.stats["total_rss"] + v1.stats["total_cache"] + v1.kernel
    assert v2.usage == v2.stats["anon"] + v2.stats["file"] + v2.kernel + v2.stats["sock"]

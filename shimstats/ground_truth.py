"""Ground truth for one container: what CRI *should* report, from the cgroup's own kernel files.

Three sources give the same thing, a kata StatsContainerResponse (the raw memory.stat map and counters):
the cgroup directory on this machine, read with the guest agent's own reader (so a host cgroup and a
guest cgroup are read by the same code), a guest agent's answer over ttrpc, or a memory.stat and a usage
figure given by hand (a published sample, a pasted bug report).

From that answer the expected figures follow by containerd's CRI formulas applied to the kernel's keys
directly, not through our translation: this module is the oracle verify checks every shim against,
ours included. The kernel keys CRI's figures come from (docs/spec/formulas.md §1):

===========  ======================  ==============
figure       cgroup v1 memory.stat   cgroup v2
===========  ======================  ==============
inactive     total_inactive_file     inactive_file
rss          total_rss               anon
page faults  total_pgfault           pgfault
major        total_pgmajfault        pgmajfault
===========  ======================  ==============

usage and limit are the usage counter (memory.usage_in_bytes / memory.current, limit_in_bytes / max).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

from guest_agent.kata import to_response
from guest_agent.layout import LayoutError, detect_layout
from guest_agent.parse import U64_MAX, CgroupFormatError, parse_flat_keyed
from guest_agent.reader import CgroupReader
from shimstats import cri
from shimstats._proto.kata import agent_pb2
from shimstats.agent_client import AgentClient

Version = Literal[1, 2]


@dataclass(frozen=True)
class KernelKeys:
    """The memory.stat keys CRI's figures come from, for one cgroup version."""

    inactive_file: str
    rss: str
    pgfault: str
    pgmajfault: str


KERNEL_KEYS: dict[Version, KernelKeys] = {
    1: KernelKeys("total_inactive_file", "total_rss", "total_pgfault", "total_pgmajfault"),
    2: KernelKeys("inactive_file", "anon", "pgfault", "pgmajfault"),
}


WRITTEN_ONLY_BY: dict[Version, frozenset[str]] = {
    1: frozenset({"cache", "rss", "total_cache", "total_rss", "total_inactive_file"}),
    2: frozenset({"anon", "file"}),
}
"""memory.stat keys only one cgroup version's kernel writes (memcg1_stat_names and the
hierarchical ``total_`` lines on v1, in mm/memcontrol.c or memcontrol-v1.c; memory_stats[] on v2)."""


def cgroup_version(stat: Mapping[str, int]) -> Version | None:
    """The cgroup version whose kernel wrote this memory.stat; None when its keys fit neither or both.

    Decided here on its own, not with translate's guest_version: the oracle must not share a mistake with
    the code it checks.
    """
    versions = [version for version, keys in WRITTEN_ONLY_BY.items() if not keys.isdisjoint(stat)]
    return versions[0] if len(versions) == 1 else None


@dataclass(frozen=True)
class Figures:
    """The figures a shim's Stats answer is judged by: CRI's memory (bytes, counts) and CPU time (ns).

    CPU is None when the source has no cpu block; the memory figures always exist here (a source
    without memory cannot be judged and is an error earlier on).
    """

    usage_bytes: int
    working_set_bytes: int
    available_bytes: int
    rss_bytes: int
    page_faults: int
    major_page_faults: int
    cpu_total_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


FIGURE_NAMES: tuple[str, ...] = tuple(Figures.__dataclass_fields__)


class NoGroundTruth(RuntimeError):
    """The cgroup or the agent gave nothing to check against (gone, unreadable, no memory block)."""


@dataclass(frozen=True)
class GroundTruth:
    """One reading of the container's own stats, where it came from, and the figures CRI should show."""

    source: str
    version: Version
    response: agent_pb2.StatsContainerResponse
    figures: Figures

    @property
    def stat(self) -> dict[str, int]:
        """The raw memory.stat map, as the kernel wrote it."""
        return dict(self.response.cgroup_stats.memory_stats.stats)


def expected_figures(response: agent_pb2.StatsContainerResponse) -> tuple[Version, Figures]:
    """The guest's cgroup version and CRI's figures for this raw answer (rules in the module docstring)."""
    stats = response.cgroup_stats
    if not stats.HasField("memory_stats") or not stats.memory_stats.stats:
        raise NoGroundTruth("the answer has no memory.stat: nothing to check against")
    version = cgroup_version(stats.memory_stats.stats)
    if version is None:
        raise NoGroundTruth("memory.stat has neither cgroup v1 nor v2 keys: cannot tell which figures apply")
    keys = KERNEL_KEYS[version]
    memory = stats.memory_stats
    raw = memory.stats
    usage = memory.usage.usage
    ws = cri.working_set(usage, raw.get(keys.inactive_file, 0))
    cpu = (
        stats.cpu_stats.cpu_usage
        if stats.HasField("cpu_stats") and stats.cpu_stats.HasField("cpu_usage")
        else None
    )
    return version, Figures(
        usage_bytes=usage,
        working_set_bytes=ws,
        available_bytes=cri.available(memory.usage.limit, ws),
        rss_bytes=raw.get(keys.rss, 0),
        page_faults=raw.get(keys.pgfault, 0),
        major_page_faults=raw.get(keys.pgmajfault, 0),
        cpu_total_ns=cpu.total_usage if cpu is not None else None,
        cpu_user_ns=cpu.usage_in_usermode if cpu is not None else None,
        cpu_system_ns=cpu.usage_in_kernelmode if cpu is not None else None,
    )


def from_response(response: agent_pb2.StatsContainerResponse, source: str) -> GroundTruth:
    version, figures = expected_figures(response)
    return GroundTruth(source=source, version=version, response=response, figures=figures)


def locate(directory: str) -> tuple[str, str]:
    """(cgroupfs root, cgroup path) of a cgroup directory: a v1 memory dir or a v2 dir.

    v1: climb while the parent is still a memory cgroup (has memory.usage_in_bytes); that top is the
    hierarchy's mount ``R/memory`` and R is the root. v2: climb while the directory is not a root
    (only non-root cgroups have cgroup.type); the first one without it is R. Works on a captured tree
    (a fixture's ``cgroup/``) as well as on /sys/fs/cgroup, since it looks only at files.
    """
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise NoGroundTruth(f"cgroup directory {directory} {what}")
    if os.path.exists(os.path.join(path, "memory.usage_in_bytes")):
        top = path
        while os.path.exists(os.path.join(os.path.dirname(top), "memory.usage_in_bytes")):
            top = os.path.dirname(top)
        root = os.path.dirname(top)
        if os.path.basename(top) != "memory":
            raise NoGroundTruth(
                f"{directory}: the v1 memory hierarchy is mounted at {top}, not at <root>/memory"
            )
    elif os.path.exists(os.path.join(path, "cgroup.controllers")):
        top = path
        while os.path.exists(os.path.join(top, "cgroup.type")) and top != "/":
            top = os.path.dirname(top)
        root = top
    else:
        raise NoGroundTruth(f"{directory} is not a cgroup memory directory (v1) nor a cgroup v2 directory")
    relative = os.path.relpath(path, top)
    return root, "/" if relative == "." else "/" + relative


class Source(Protocol):
    """Somewhere ground truth can be read from, again and again."""

    description: str

    async def read(self) -> GroundTruth: ...

    async def close(self) -> None: ...


class CgroupSource:
    """A cgroup directory on this machine, read by the guest agent's reader (files kept open)."""

    def __init__(self, directory: str, meminfo: str = "/proc/meminfo") -> None:
        root, self.cgroup_path = locate(directory)
        self.description = f"cgroup {directory}"
        try:
            layout = detect_layout(root)
        except LayoutError as exc:
            raise NoGroundTruth(f"{directory}: {exc}") from exc
        self.reader = CgroupReader(layout, meminfo=meminfo)

    async def read(self) -> GroundTruth:
        try:
            record = self.reader.read(self.cgroup_path)
        except (LookupError, RuntimeError, ValueError, OSError) as exc:
            raise NoGroundTruth(f"reading {self.description}: {exc}") from exc
        return from_response(to_response(record), self.description)

    async def close(self) -> None:
        self.reader.close()


class AgentSource:
    """A guest agent's raw StatsContainer answer for one id (TtrpcError when the agent refuses)."""

    def __init__(self, address: str, container_id: str, *, timeout: float) -> None:
        self.client = AgentClient(address, connect_timeout=timeout, default_timeout=timeout)
        self.container_id = container_id
        self.description = f"agent {address}"

    async def read(self) -> GroundTruth:
        return from_response(await self.client.stats_container(self.container_id), self.description)

    async def close(self) -> None:
        await self.client.close()


class SampleSource:
    """A memory.stat and the usage (and limit) that go with it, given by hand: the same reading, every read.

    The cgroup version is told by the keys (v1 has total_*, v2 anon/file); the key the working set needs
    (total_inactive_file or inactive_file) must be there. Pasted text is forgiven its layout (blank lines,
    runs of spaces or tabs, CRLF), never its numbers. Nothing else is known: no CPU, no swap.
    """

    def __init__(self, memory_stat: str, name: str, *, usage: int, limit: int | None = None) -> None:
        lines = (" ".join(line.split()) for line in memory_stat.splitlines())
        try:
            stat = parse_flat_keyed("".join(line + "\n" for line in lines if line), name)
        except CgroupFormatError as exc:
            raise NoGroundTruth(str(exc)) from exc
        response = agent_pb2.StatsContainerResponse()
        memory = response.cgroup_stats.memory_stats
        memory.stats.update(stat)
        memory.use_hierarchy = True  # as our agent sends it: a whole reading, not kata-agent's v2 gaps
        memory.usage.usage = usage
        memory.usage.limit = U64_MAX if limit is None else limit
        self.description = f"memory.stat {name}"
        truth = from_response(response, self.description)
        inactive = KERNEL_KEYS[truth.version].inactive_file
        if inactive not in stat:
            raise NoGroundTruth(
                f"{name}: cgroup v{truth.version} memory.stat without {inactive}: "
                f"the working set (usage - {inactive}) cannot be computed"
            )
        self.truth = truth

    async def read(self) -> GroundTruth:
        return self.truth

    async def close(self) -> None:
        pass


def open_source(cgroup: str | None, agent: str | None, container_id: str, *, timeout: float) -> Source:
    """The source a command's ``--cgroup PATH`` or ``--agent ADDR`` names (exactly one of them is given)."""
    if cgroup is not None:
        return CgroupSource(cgroup)
    if agent is None:
        raise ValueError("either a cgroup directory or an agent address is needed")
    return AgentSource(agent, container_id, timeout=timeout)

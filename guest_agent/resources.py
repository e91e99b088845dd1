"""``shimstats.agent.v1.Resources/Get``: a container's resource settings as the guest kernel shows them.

Why: CRI's ContainerStatus only echoes the requested spec, so after an in-place pod resize nothing on the
host shows what the runtime in the guest really wrote. The agent sits next to the cgroup and can say.

What is read, per hierarchy version (FILES): v1 cpu.shares, cpu.cfs_quota_us, cpu.cfs_period_us,
memory.limit_in_bytes, memory.memsw.limit_in_bytes, memory.soft_limit_in_bytes, pids.max, cpuset.cpus; v2
cpu.weight, cpu.max, memory.max, memory.high, memory.low, memory.min, memory.swap.max, memory.oom.group,
pids.max, cpuset.cpus.effective. Each setting carries its raw text and its fields parsed: ``max`` stays
``max`` and a number keeps its sign (v1's -1 quota), unlike the stats parsers, which fold both into u64.
The cpuset hierarchy is not part of guest_agent.layout (stats never read it): cpuset_hierarchy finds it.

Beside the settings, two counts the kernel keeps that kata's StatsContainer has no field for: ``oom_kills``
(v2 memory.events ``oom_kill``, v1 memory.oom_control ``oom_kill``) and ``processes`` (cgroup.procs lines).

``populated`` tells a running container from an empty cgroup (not started, restarting, exited): v2
cgroup.events ``populated``; v1 a non-empty cgroup.procs of the primary hierarchy; the root always is.

Statuses are StatsContainer's: an unsafe id → INVALID_ARGUMENT; an unknown id or a cgroup that vanished
before or while it was read → NOT_FOUND; a garbled file or an I/O error → INTERNAL naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from google.protobuf.message import DecodeError

from guest_agent.files import FileCache
from guest_agent.layout import Hierarchy, Layout
from guest_agent.lookup import ContainerLocator
from guest_agent.parse import CgroupFormatError, decode, parse_flat_keyed
from guest_agent.reader import CgroupGone, CgroupReader
from guest_agent.statuses import ContainerCall
from guest_agent.wire import RESOURCES_SERVICE
from shimstats._proto.shimstats.agent.v1 import resources_pb2
from shimstats.ttrpc import CallContext, Code, Server, TtrpcError

FILES: Mapping[int, tuple[tuple[str, tuple[str, ...]], ...]] = {
    1: (
        ("cpu", ("cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us")),
        ("memory", ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes")),
        ("pids", ("pids.max",)),
        ("cpuset", ("cpuset.cpus",)),
    ),
    2: (
        ("cpu", ("cpu.weight", "cpu.max")),
        (
            "memory",
            ("memory.max", "memory.high", "memory.low", "memory.min", "memory.swap.max", "memory.oom.group"),
        ),
        ("pids", ("pids.max",)),
        ("cpuset", ("cpuset.cpus.effective",)),
    ),
}
"""Per hierarchy version: (controller, the files read from its directory), in the order they are reported."""

INT64_MAX = 2**63 - 1
MAX_CPUS = 8192
"""The largest NR_CPUS a kernel config allows; a cpu list naming more is garbled, not a big machine."""


def cpuset_hierarchy(layout: Layout) -> Hierarchy | None:
    """Where cpuset lives: beside everything else on v2; ``root/cpuset`` on v1; else the unified part."""
    if layout.mode == "v2":
        return layout.primary
    v1 = os.path.join(layout.root, "cpuset")
    if os.path.isdir(v1):
        return Hierarchy(1, v1)
    unified = os.path.join(layout.root, "unified")
    try:
        with open(os.path.join(unified, "cgroup.controllers"), encoding="ascii") as f:
            listed = f.read().split()
    except FileNotFoundError:
        return None
    return Hierarchy(2, unified) if "cpuset" in listed else None


def parse_value(token: str, source: str) -> resources_pb2.Value:
    """One field of a limit file: ``max``, or a decimal integer that fits int64 (a sign is allowed)."""
    if token == "max":
        return resources_pb2.Value(max=True)
    digits = token[1:] if token[:1] == "-" else token
    if not (digits.isascii() and digits.isdigit()):
        raise CgroupFormatError(source, 1, f"expected an integer or 'max', got {token!r}")
    number = int(token)
    if not -INT64_MAX - 1 <= number <= INT64_MAX:
        raise CgroupFormatError(source, 1, f"value {token} does not fit in 64 signed bits")
    return resources_pb2.Value(number=number)


def parse_cpu_list(text: str, source: str) -> list[int]:
    """A kernel cpu list (``0-3,6``; empty for none) → ascending CPU numbers."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        first, dash, last = part.partition("-")
        if not all(p.isascii() and p.isdigit() for p in (first, last if dash else first)):
            raise CgroupFormatError(source, 1, f"expected a cpu list such as 0-3,6, got {text!r}")
        low, high = int(first), int(last) if dash else int(first)
        if low > high or high >= MAX_CPUS:
            raise CgroupFormatError(source, 1, f"cpu range {part!r} is reversed or beyond CPU {MAX_CPUS - 1}")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def parse_setting(name: str, version: int, text: str, source: str) -> resources_pb2.Setting:
    """One settings file's text → Setting (raw without the final newline, and its fields parsed)."""
    raw = text[:-1] if text.endswith("\n") else text
    if "\n" in raw:
        raise CgroupFormatError(source, 2, "expected one line")
    setting = resources_pb2.Setting(file=name, cgroup_version=version, raw=raw)
    if name.startswith("cpuset."):
        setting.cpus.extend(parse_cpu_list(raw, source))
        return setting
    tokens = raw.split(" ")
    if not raw or "" in tokens:
        raise CgroupFormatError(source, 1, f"expected values separated by one space, got {raw!r}")
    setting.values.extend(parse_value(token, source) for token in tokens)
    return setting


def _read_text(files: FileCache, path: str) -> str | None:
    data = files.read_bytes(path)
    return None if data is None else decode(data, path)


def _populated(files: FileCache, primary: Hierarchy, cgroup_path: str) -> bool:
    if cgroup_path == "/":
        return True  # the guest's root cgroup holds the agent itself
    directory = primary.dir_for(cgroup_path)
    if primary.version == 2:
        events_path = f"{directory}/cgroup.events"
        text = _read_text(files, events_path)
        return text is not None and parse_flat_keyed(text, events_path).get("populated", 0) == 1
    # Opened afresh on every call, not through the file cache: v1 keeps a pid list per open file and does not
    # reload it when the file is read again from offset 0 (seen on 6.18), so a held fd never sees a restart.
    try:
        with open(f"{directory}/cgroup.procs", "rb") as f:
            return bool(f.read(64).strip())
    except FileNotFoundError:
        return False


def _processes(primary: Hierarchy, cgroup_path: str) -> int | None:
    """The lines of cgroup.procs (processes, not threads); opened afresh, as _populated explains."""
    try:
        with open(f"{primary.dir_for(cgroup_path)}/cgroup.procs", "rb") as f:
            return len(f.read().split())
    except OSError:
        return None


def _oom_kills(files: FileCache, memory: Hierarchy | None, cgroup_path: str) -> int | None:
    """OOM kills so far: v2 memory.events ``oom_kill``, v1 memory.oom_control ``oom_kill`` (4.13+)."""
    if memory is None:
        return None
    name = "memory.events" if memory.version == 2 else "memory.oom_control"
    path = f"{memory.dir_for(cgroup_path)}/{name}"
    text = _read_text(files, path)
    return None if text is None else parse_flat_keyed(text, path).get("oom_kill")


def read_resources(
    layout: Layout, files: FileCache, cgroup_path: str, page_size: int
) -> resources_pb2.GetResponse:
    """The settings of ``cgroup_path`` under ``layout``; CgroupGone when its directory does not exist."""
    c = layout.controllers
    hierarchies: dict[str, Hierarchy | None] = {
        "cpu": c.get("cpu"),
        "memory": c.get("memory"),
        "pids": c.get("pids"),
        "cpuset": cpuset_hierarchy(layout),
    }
    primary = layout.primary
    if not os.path.isdir(primary.dir_for(cgroup_path)):
        raise _gone(files, hierarchies.values(), cgroup_path, primary)
    response = resources_pb2.GetResponse(cgroup_path=cgroup_path, page_size=page_size)
    response.populated = _populated(files, primary, cgroup_path)
    unmounted_version = 2 if layout.mode == "v2" else 1  # the names listed for a controller mounted nowhere
    for version in (1, 2):
        for controller, names in FILES[version]:
            h = hierarchies[controller]
            if h is None:
                if version == unmounted_version:
                    response.absent.extend(names)
                continue
            if h.version != version:
                continue
            for name in names:
                path = f"{h.dir_for(cgroup_path)}/{name}"
                text = _read_text(files, path)
                if text is None:
                    response.absent.append(name)
                else:
                    response.settings.append(parse_setting(name, version, text, path))
    oom_kills = _oom_kills(files, hierarchies["memory"], cgroup_path)
    if oom_kills is not None:
        response.oom_kills = oom_kills
    processes = _processes(primary, cgroup_path)
    if processes is not None:
        response.processes = processes
    if not os.path.isdir(primary.dir_for(cgroup_path)):  # removed while read: the files may be stale
        raise _gone(files, hierarchies.values(), cgroup_path, primary)
    return response


def _gone(
    files: FileCache, hierarchies: Iterable[Hierarchy | None], cgroup_path: str, primary: Hierarchy
) -> CgroupGone:
    """Close the vanished cgroup's cached files; the error to raise."""
    for h in {h for h in hierarchies if h is not None}:
        files.forget(h.dir_for(cgroup_path))
    return CgroupGone(primary.dir_for(cgroup_path))


class ResourcesService:
    """Answers Resources/Get with the reader's layout and file cache and the stats service's locator."""

    def __init__(self, reader: CgroupReader, locator: ContainerLocator, page_size: int | None = None) -> None:
        self.reader = reader
        self.locator = locator
        self.page_size = page_size if page_size is not None else os.sysconf("SC_PAGE_SIZE")

    def register(self, server: Server) -> None:
        """Register the Resources service on ``server``."""
        server.register(RESOURCES_SERVICE, {"Get": self.get})

    def get(self, payload: bytes, ctx: CallContext) -> bytes:
        """shimstats.agent.v1.Resources/Get."""
        try:
            request = resources_pb2.GetRequest.FromString(payload)
        except DecodeError as exc:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"GetRequest does not decode: {exc}") from None
        return self.applied(request.container_id).SerializeToString()

    def applied(self, container_id: str) -> resources_pb2.GetResponse:
        """The response for one id, or TtrpcError with the status guest_agent.statuses gives."""
        with ContainerCall("Resources/Get", self.locator, container_id) as call:
            return read_resources(self.reader.layout, self.reader.files, call.resolve(), self.page_size)

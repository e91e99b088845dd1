"""Prometheus exporter: cAdvisor's container metrics for Kata containers, read from guest agents on scrape.

Users alert on ``container_memory_working_set_bytes``. For a Kata container the kubelet's cAdvisor has no
container cgroup on the host to read, and the Kata shims lose ``inactive_file``. This exporter asks the guest
agents (ours, or kata-agent itself) for every configured container and publishes the figures under cAdvisor's
names and meanings (docs/spec/formulas.md §2), from the same ContainerRecord the adapter translates, so
Grafana shows what the kubelet would act on.

Why a custom Collector that reads on scrape, not a polling loop: each value is as fresh as the scrape, nothing
is read when nobody scrapes, and a container whose agent does not answer has no series at all instead of a
stale one. What to read comes from a TargetSource asked at every scrape (a fixed list, or every Kata sandbox
on the node: shimstats.discovered_targets). One scrape reads each container exactly once, every sandbox
concurrently within its own deadline (``timeout``): a sandbox whose agent does not answer costs the scrape
that deadline, never more, and shows as ``shimstats_agent_up 0``; one that is gone just leaves the output.

The agent connections live on a private event-loop thread (AgentPool): prometheus_client serves each scrape
on a thread of its own and calls ``collect`` synchronously.

Where a figure differs from cAdvisor's, it is because the guest tells us more: kernel memory and failcnt on v2
guests (cAdvisor reports 0 there) come from the agent. A figure the guest did not report has no series rather
than a 0 that would read as a measurement.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Literal, Protocol, TypeVar, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, UnknownMetricFamily
from prometheus_client.metrics_core import Metric

from shimstats import cri
from shimstats._proto.kata import agent_pb2
from shimstats.agent_client import DIAGNOSTICS_SERVICE, RESOURCES_SERVICE, AgentClient, service_unsupported
from shimstats.cadvisor_spec import CadvisorSpec, cadvisor_spec
from shimstats.emulate import kata_go
from shimstats.translate import ContainerRecord, OutputFormat
from shimstats.translate.record import (
    CpuRecord,
    DeviceIO,
    HugetlbRecord,
    MemoryRecord,
    NetworkRecord,
    is_unlimited,
)
from shimstats.ttrpc import Code, TtrpcError, parse_address

__all__ = [
    "CONTAINER_FAMILIES",
    "CONTAINER_LABELS",
    "AgentPool",
    "AgentTarget",
    "ContainerCollector",
    "ContainerTarget",
    "Family",
    "Reading",
    "container_families",
    "exporter_families",
    "kata_go_working_set",
    "read_errors_family",
]

log = logging.getLogger("shimstats.exporter")

CONTAINER_LABELS = ("id", "name", "container", "pod", "namespace", "image", "sandbox")
"""Labels of every per-container series: the kubelet's /metrics/cadvisor labels (empty when not known; ``id``
and ``name`` as docs/operating.md explains) and the sandbox the container runs in."""
SANDBOX_LABELS = ("sandbox", "pod", "namespace")
"""Labels of the per-sandbox series (shimstats_agent_up): alert rules select on exactly these."""

AGENT_DOWN_CODES = (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
"""Statuses that mean the agent itself did not answer (any other status is the agent's own answer)."""

NS_PER_S = 1e9
POOL_GRACE = 1.0
"""Seconds past the scrape deadline a scrape waits for the agent thread before giving up on it (a safety net:
every agent call is already bounded by the deadline)."""

Kind = Literal["gauge", "counter", "untyped"]
Samples = Iterable[tuple[tuple[str, ...], float]]
"""(values of a family's extra labels, value) pairs."""
Part = TypeVar("Part")


@dataclass(frozen=True)
class ContainerTarget:
    """One container to export and the Kubernetes names known for it ("" when not known)."""

    id: str
    container: str = ""
    pod: str = ""
    namespace: str = ""
    image: str = ""
    created: float | None = None
    """When the runtime created the container, in Unix seconds (CRI's ``created_at``); None when unknown."""


@dataclass(frozen=True)
class AgentTarget:
    """One sandbox (Kata VM): the address of its guest agent and the containers to read from it.

    ``sandbox`` is the sandbox id; a hand-written config may leave it empty, and the address then names
    the sandbox in every label.
    """

    address: str
    containers: tuple[ContainerTarget, ...]
    sandbox: str = ""
    pod: str = ""
    namespace: str = ""

    @property
    def name(self) -> str:
        """The ``sandbox`` label: the sandbox id, or the agent's address when the id is not known."""
        return self.sandbox or self.address


class TargetSource(Protocol):
    """What to export, asked again at every scrape, so that sandboxes and containers can come and go."""

    def targets(self) -> Sequence[AgentTarget]:
        """Every sandbox to read now, with its containers."""

    def gone(self, target: AgentTarget) -> bool:
        """Whether the sandbox itself went away (its shim socket vanished), asked after its agent did not
        answer: a gone sandbox is left out quietly, one that still exists counts as down."""


class StaticTargets:
    """A fixed list (``--agent`` or the TOML file) that SIGHUP may replace; it never knows a sandbox gone."""

    def __init__(self, agents: Sequence[AgentTarget]) -> None:
        self._agents = tuple(agents)
        self._lock = threading.Lock()

    def replace(self, agents: Sequence[AgentTarget]) -> None:
        """Export ``agents`` from the next scrape on."""
        with self._lock:
            self._agents = tuple(agents)

    def targets(self) -> Sequence[AgentTarget]:
        with self._lock:
            return self._agents

    def gone(self, target: AgentTarget) -> bool:
        return False


@dataclass(frozen=True)
class Reading:
    """What one scrape learned about one container: its record, or the status of the failed read."""

    sandbox: AgentTarget
    target: ContainerTarget
    record: ContainerRecord | None
    kata_go_working_set: int | None = None
    """The working set the Kata Go shim would report for the same agent reply (None: no memory block)."""
    error: Code | None = None
    message: str = ""
    spec: CadvisorSpec | None = None
    """From our agent's Resources/Get; None with kata-agent or when that read failed."""

    @property
    def labels(self) -> tuple[str, ...]:
        """The values of CONTAINER_LABELS: ``id`` is the container's cgroup path in the guest when our agent
        reports it (cAdvisor's id is the cgroup path), else the container id; ``name`` the container id."""
        t = self.target
        cgroup = t.id if self.spec is None or not self.spec.cgroup_path else self.spec.cgroup_path
        return (cgroup, t.id, t.container, t.pod, t.namespace, t.image, self.sandbox.name)


@dataclass(frozen=True)
class SandboxReading:
    """One scrape's outcome for one sandbox: its containers' readings and whether its agent answered.

    ``down`` is the status that shows the agent did not answer (UNAVAILABLE, DEADLINE_EXCEEDED), None when it
    did; ``gone`` is set when the sandbox itself turned out to have left since it was listed.
    """

    target: AgentTarget
    readings: tuple[Reading, ...]
    down: Code | None = None
    message: str = ""
    gone: bool = False
    read_errors: Mapping[str, int] | None = None
    """The agent's own count of kernel files it could not read, by name (None: it cannot say)."""


# -- per-container families: cAdvisor's names, one rule each -----------------------------------------------


@dataclass(frozen=True)
class Family:
    """A metric family: name, help, type, the labels it adds to CONTAINER_LABELS, and its samples."""

    name: str
    help: str
    kind: Kind
    samples: Callable[[ContainerRecord], Samples]
    extra_labels: tuple[str, ...] = ()


def _memory(record: ContainerRecord) -> MemoryRecord | None:
    return record.memory


def _cpu(record: ContainerRecord) -> CpuRecord | None:
    return record.cpu


def _scalar(
    part: Callable[[ContainerRecord], Part | None],
    get: Callable[[Part], int | None],
    divisor: float = 1.0,
    labels: tuple[str, ...] = (),
) -> Callable[[ContainerRecord], Samples]:
    """One sample, ``get(part(record)) / divisor``; none when the part or the value was not reported."""

    def samples(record: ContainerRecord) -> Samples:
        whole = part(record)
        value = None if whole is None else get(whole)
        return () if value is None else ((labels, value / divisor),)

    return samples


def _mem(get: Callable[[MemoryRecord], int | None]) -> Callable[[ContainerRecord], Samples]:
    return _scalar(_memory, get)


def _cpu_seconds(
    get: Callable[[CpuRecord], int | None], labels: tuple[str, ...] = ()
) -> Callable[[ContainerRecord], Samples]:
    return _scalar(_cpu, get, NS_PER_S, labels)


def _spec_limit(limit: int | None) -> int | None:
    """cAdvisor's container_spec_memory_limit_bytes: 0 for unlimited (above 2**62)."""
    if limit is None:
        return None
    return 0 if is_unlimited(limit) else limit


def _failures(record: ContainerRecord) -> Samples:
    """cAdvisor's page fault counts: scope "container" is the cgroup alone, "hierarchy" with descendants."""
    m = record.memory
    if m is None:
        return ()
    found = []
    for scope, stat in (("container", m.local), ("hierarchy", m.hierarchy)):
        for failure in ("pgfault", "pgmajfault"):
            value = getattr(stat, failure)
            if value is not None:
                found.append(((failure, scope), float(value)))
    return found


def _per_pagesize(get: Callable[[HugetlbRecord], int | None]) -> Callable[[ContainerRecord], Samples]:
    def samples(record: ContainerRecord) -> Samples:
        return [((h.pagesize,), float(v)) for h in record.hugetlb if (v := get(h)) is not None]

    return samples


def _per_interface(get: Callable[[NetworkRecord], int]) -> Callable[[ContainerRecord], Samples]:
    def samples(record: ContainerRecord) -> Samples:
        return [((n.name,), float(get(n))) for n in record.network]

    return samples


_BLKIO_OPERATIONS: tuple[tuple[str, Callable[[DeviceIO], int | None]], ...] = (
    ("Read", lambda d: d.read_bytes),
    ("Write", lambda d: d.write_bytes),
    ("Discard", lambda d: d.discard_bytes),
)


def _blkio(record: ContainerRecord) -> Samples:
    """Bytes per device and direction; ``device`` (cAdvisor's host device name) is "": unknown in a guest."""
    if record.io is None:
        return ()
    found = []
    for d in record.io.devices:
        for operation, get in _BLKIO_OPERATIONS:
            value = get(d)
            if value is not None:
                found.append((("", str(d.major), str(d.minor), operation), float(value)))
    return found


CONTAINER_FAMILIES: tuple[Family, ...] = (
    # memory: cAdvisor's meanings (docs/spec/formulas.md §2); the breakdown is the cgroup with its descendants
    Family(
        "container_memory_working_set_bytes",
        "Current working set in bytes: usage - inactive_file, 0 when inactive_file is larger (what the "
        "kubelet evicts on).",
        "gauge",
        _mem(lambda m: m.working_set),
    ),
    Family(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        "gauge",
        _mem(lambda m: m.usage.usage),
    ),
    Family(
        "container_memory_rss",
        "Size of RSS (anonymous memory) in bytes.",
        "gauge",
        _mem(lambda m: m.hierarchy.anon),
    ),
    Family(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        "gauge",
        _mem(lambda m: m.hierarchy.file),
    ),
    Family(
        "container_memory_swap",
        "Container swap usage in bytes (swap only, not memory + swap).",
        "gauge",
        _mem(lambda m: None if m.swap is None else m.swap.usage),
    ),
    Family(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        "gauge",
        _mem(lambda m: m.hierarchy.file_mapped),
    ),
    Family(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        "gauge",
        _mem(lambda m: None if m.kernel is None else m.kernel.usage),
    ),
    Family(
        # a counter without _total, as cAdvisor names and types it (BareCounterFamily)
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        "counter",
        _mem(lambda m: m.usage.failcnt),
    ),
    Family(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        "gauge",
        _mem(lambda m: m.usage.max_usage),
    ),
    Family(
        "container_memory_total_active_file_bytes",
        "Current total active file in bytes.",
        "gauge",
        _mem(lambda m: m.hierarchy.active_file),
    ),
    Family(
        "container_memory_total_inactive_file_bytes",
        "Current total inactive file in bytes.",
        "gauge",
        _mem(lambda m: m.hierarchy.inactive_file),
    ),
    Family(
        "container_memory_file_dirty_bytes",
        "Size of dirty page cache in bytes.",
        "gauge",
        _mem(lambda m: m.hierarchy.file_dirty),
    ),
    Family(
        "container_memory_file_writeback_bytes",
        "Size of page cache under writeback in bytes.",
        "gauge",
        _mem(lambda m: m.hierarchy.file_writeback),
    ),
    Family(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        "counter",
        _failures,
        ("failure_type", "scope"),
    ),
    Family(
        "container_memory_pgscan_total",
        "Pages scanned (v2 guests).",
        "counter",
        _mem(lambda m: m.hierarchy.pgscan),
    ),
    Family(
        "container_memory_pgsteal_total",
        "Pages reclaimed (v2 guests).",
        "counter",
        _mem(lambda m: m.hierarchy.pgsteal),
    ),
    Family(
        "container_memory_workingset_refault_file_total",
        "Refaults of previously evicted file pages.",
        "counter",
        _mem(lambda m: m.hierarchy.workingset_refault_file),
    ),
    Family(
        "container_memory_workingset_refault_anon_total",
        "Refaults of previously evicted anonymous pages.",
        "counter",
        _mem(lambda m: m.hierarchy.workingset_refault_anon),
    ),
    Family(
        "container_threads",
        "Number of threads running inside the container (the guest's pids.current).",
        "gauge",
        _scalar(lambda r: r.pids, lambda p: p.current),
    ),
    Family(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, 0 when unlimited (pids.max).",
        "gauge",
        _scalar(lambda r: r.pids, lambda p: p.limit or 0),
    ),
    Family(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container (0 when unlimited).",
        "gauge",
        _mem(lambda m: _spec_limit(m.usage.limit)),
    ),
    # cpu: the kubelet's cAdvisor reports one total series (cpu="total"), never per-cpu ones beside it
    Family(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        "counter",
        _cpu_seconds(lambda c: c.total_ns, ("total",)),
        ("cpu",),
    ),
    Family(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        "counter",
        _cpu_seconds(lambda c: c.user_ns),
    ),
    Family(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        "counter",
        _cpu_seconds(lambda c: c.kernel_ns),
    ),
    Family(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        "counter",
        _scalar(_cpu, lambda c: None if c.throttling is None else c.throttling.periods),
    ),
    Family(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        "counter",
        _scalar(_cpu, lambda c: None if c.throttling is None else c.throttling.throttled_periods),
    ),
    Family(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        "counter",
        _cpu_seconds(lambda c: None if c.throttling is None else c.throttling.throttled_ns),
    ),
    # hugetlb, network, block I/O
    Family(
        "container_hugetlb_usage_bytes",
        "Current hugepage usage in bytes.",
        "gauge",
        _per_pagesize(lambda h: h.usage),
        ("pagesize",),
    ),
    Family(
        "container_hugetlb_max_usage_bytes",
        "Maximum hugepage usage recorded in bytes.",
        "gauge",
        _per_pagesize(lambda h: h.max_usage),
        ("pagesize",),
    ),
    Family(
        "container_hugetlb_failcnt",  # a counter without _total, like container_memory_failcnt
        "Number of hugepage usage hits limits.",
        "counter",
        _per_pagesize(lambda h: h.failcnt),
        ("pagesize",),
    ),
    Family(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        "counter",
        _per_interface(lambda n: n.rx_bytes),
        ("interface",),
    ),
    Family(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        "counter",
        _per_interface(lambda n: n.rx_packets),
        ("interface",),
    ),
    Family(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        "counter",
        _per_interface(lambda n: n.rx_errors),
        ("interface",),
    ),
    Family(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        "counter",
        _per_interface(lambda n: n.rx_dropped),
        ("interface",),
    ),
    Family(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        "counter",
        _per_interface(lambda n: n.tx_bytes),
        ("interface",),
    ),
    Family(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        "counter",
        _per_interface(lambda n: n.tx_packets),
        ("interface",),
    ),
    Family(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        "counter",
        _per_interface(lambda n: n.tx_errors),
        ("interface",),
    ),
    Family(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        "counter",
        _per_interface(lambda n: n.tx_dropped),
        ("interface",),
    ),
    Family(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        "counter",
        _blkio,
        ("device", "major", "minor", "operation"),
    ),
    # shimstats' own, per container
    Family(
        "shimstats_guest_cgroup_info",
        "The guest's cgroup version as read from the agent's reply (v1, v2, or unknown), always 1.",
        "gauge",
        lambda record: (((record.guest,), 1.0),),
        ("version",),
    ),
)
"""Every per-container family, in exposition order."""


@dataclass(frozen=True)
class SpecFamily:
    """A per-container family known from the container's spec or from the runtime, not from its stats: one
    value per container (None: no series for it)."""

    name: str
    help: str
    kind: Kind
    value: Callable[[Reading], float | None]


def _spec(get: Callable[[CadvisorSpec], int | None]) -> Callable[[Reading], float | None]:
    def value(reading: Reading) -> float | None:
        got = None if reading.spec is None else get(reading.spec)
        return None if got is None else float(got)

    return value


SPEC_FAMILIES: tuple[SpecFamily, ...] = (
    SpecFamily(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds (the CRI's created_at).",
        "gauge",
        lambda r: r.target.created,
    ),
    SpecFamily(
        "container_spec_cpu_shares", "CPU share of the container.", "gauge", _spec(lambda s: s.cpu_shares)
    ),
    SpecFamily(
        "container_spec_cpu_period", "CPU period of the container.", "gauge", _spec(lambda s: s.cpu_period)
    ),
    SpecFamily(
        "container_spec_cpu_quota", "CPU quota of the container.", "gauge", _spec(lambda s: s.cpu_quota)
    ),
    SpecFamily(
        "container_spec_memory_reservation_limit_bytes",
        "Memory reservation limit for the container (0 when none).",
        "gauge",
        _spec(lambda s: s.memory_reservation),
    ),
    SpecFamily(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container (v1: memory + swap; 0 when unlimited).",
        "gauge",
        _spec(lambda s: s.swap_limit),
    ),
    SpecFamily(
        "container_oom_events_total",
        "Count of out of memory events observed for the container (the guest cgroup's oom_kill).",
        "counter",
        _spec(lambda s: s.oom_kills),
    ),
    SpecFamily(
        "container_processes",
        "Number of processes running inside the container.",
        "gauge",
        _spec(lambda s: s.processes),
    ),
)
"""Families from our agent's Resources/Get (absent with kata-agent) and from the CRI (start time)."""

BARE_COUNTERS = tuple(
    f.name for f in CONTAINER_FAMILIES if f.kind == "counter" and not f.name.endswith("_total")
)
"""Counters cAdvisor names without ``_total``; see BareCounterFamily."""

CORRECTION = (
    "shimstats_working_set_correction_bytes",
    "The Kata Go shim's working set for the same guest reply minus ours: what shimstats corrects (positive: "
    "the Go shim over-reports, typically page cache it fails to subtract).",
)


class BareCounterFamily(Metric):
    """A counter whose samples keep their name, without ``_total``: cAdvisor's ``container_memory_failcnt``
    and ``container_hugetlb_failcnt``. prometheus_client's CounterMetricFamily would add ``_total`` to the
    samples; its text output names the TYPE line ``<name>_total``, which shimstats.exporter_http.render puts
    back to ``<name>`` (BARE_COUNTERS)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, "counter")
        self._labelnames = tuple(labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labelnames, labels)), value)


_Family = Union[GaugeMetricFamily, CounterMetricFamily, UnknownMetricFamily, BareCounterFamily]


def _new_family(name: str, help_text: str, kind: Kind, labels: Sequence[str]) -> _Family:
    if kind == "gauge":
        return GaugeMetricFamily(name, help_text, labels=labels)
    if kind == "counter":
        if not name.endswith("_total"):
            return BareCounterFamily(name, help_text, labels)
        return CounterMetricFamily(name, help_text, labels=labels)
    return UnknownMetricFamily(name, help_text, labels=labels)


def container_families(readings: Sequence[Reading]) -> list[Metric]:
    """The per-container families for one scrape's readings; a failed reading has no series at all."""
    answered = [(r, r.record) for r in readings if r.record is not None]
    found: list[Metric] = []
    for family in CONTAINER_FAMILIES:
        metric = _new_family(family.name, family.help, family.kind, CONTAINER_LABELS + family.extra_labels)
        for reading, record in answered:
            for extra, value in family.samples(record):
                metric.add_metric([*reading.labels, *extra], value)
        if metric.samples:
            found.append(metric)
    for spec_family in SPEC_FAMILIES:
        metric = _new_family(spec_family.name, spec_family.help, spec_family.kind, CONTAINER_LABELS)
        for reading, _ in answered:
            got = spec_family.value(reading)
            if got is not None:
                metric.add_metric(list(reading.labels), got)
        if metric.samples:
            found.append(metric)
    correction = GaugeMetricFamily(*CORRECTION, labels=CONTAINER_LABELS)
    for reading, record in answered:
        if record.memory is not None and reading.kata_go_working_set is not None:
            correction.add_metric(reading.labels, reading.kata_go_working_set - record.memory.working_set)
    if correction.samples:
        found.append(correction)
    return found


def exporter_families(
    sandboxes: Sequence[SandboxReading], errors: Mapping[tuple[str, str], int], duration: float
) -> list[Metric]:
    """The exporter's own families: scrape duration, agent health per sandbox, and the cumulative ``errors``
    counts keyed by (sandbox label, status code name). A gone sandbox has no series."""
    duration_family = GaugeMetricFamily(
        "shimstats_scrape_duration_seconds", "Seconds this scrape spent listing and reading the guest agents."
    )
    duration_family.add_metric([], duration)
    up = GaugeMetricFamily(
        "shimstats_agent_up",
        "1 when the sandbox's guest agent answered this scrape (a status of its own, such as NOT_FOUND, is "
        "an answer), 0 when it did not (UNAVAILABLE, or no answer within the deadline) while the sandbox "
        "exists.",
        labels=SANDBOX_LABELS,
    )
    for s in sandboxes:
        if not s.gone:
            t = s.target
            up.add_metric([t.name, t.pod, t.namespace], 0.0 if s.down is not None else 1.0)
    counter = CounterMetricFamily(
        "shimstats_agent_errors_total",
        "Failed reads of a container whose sandbox still exists, by sandbox and status code, since the "
        "sandbox was first exported (a container or sandbox that is gone is not an error).",
        labels=["sandbox", "code"],
    )
    for (sandbox, code), count in sorted(errors.items()):
        counter.add_metric([sandbox, code], count)
    return [duration_family, up, counter]


def read_errors_family(sandboxes: Sequence[SandboxReading]) -> Metric:
    """``shimstats_agent_read_errors_total{sandbox,file}`` from each agent's Diagnostics/ReadErrors."""
    family = CounterMetricFamily(
        "shimstats_agent_read_errors_total",
        "Reads by the guest agent that left a figure out because a kernel file was missing or garbled, by "
        "file name, as the agent counts them since it started (no series for an agent that cannot say).",
        labels=["sandbox", "file"],
    )
    for s in sorted(sandboxes, key=lambda s: s.target.name):
        if s.read_errors is not None and not s.gone:
            for name, count in sorted(s.read_errors.items()):
                family.add_metric([s.target.name, name], count)
    return family


# -- reading the agents -----------------------------------------------------------------------------------


def kata_go_working_set(response: agent_pb2.StatsContainerResponse, host: OutputFormat) -> int | None:
    """CRI's working set from the Metrics the Kata Go shim would build on a ``host`` cgroup-mode host."""
    memory = cri.cri_memory(kata_go.metrics(response, host))
    return None if memory is None else memory.working_set_bytes


class AgentPool:
    """One shared AgentClient per agent address, on a private event-loop thread; ``read`` is safe from any
    thread. Clients are opened for new addresses and closed when their sandbox leaves the list.

    Every sandbox gets its own deadline of ``timeout`` seconds and all are read concurrently, so a paused or
    hung VM costs its own sandbox the deadline and delays nobody else's answer. ``kata_host`` is the host
    cgroup mode the Kata Go shim would see (it picks its output format by it), for the correction metric.
    """

    def __init__(self, *, timeout: float, kata_host: OutputFormat) -> None:
        self.timeout = timeout
        self.kata_host: OutputFormat = kata_host
        self._clients: dict[str, AgentClient] = {}
        self._no_resources: set[str] = set()
        """Addresses whose agent answered that it has no Resources service."""
        self._no_diagnostics: set[str] = set()
        """Addresses whose agent answered that it has no Diagnostics service."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shimstats-agents", daemon=True)
        self._thread.start()

    def read(self, agents: Sequence[AgentTarget]) -> list[SandboxReading]:
        """Every container of every sandbox in ``agents``, read once, concurrently."""
        for a in agents:
            parse_address(a.address)  # AddressError here, in the caller's thread, not in the loop
        future = asyncio.run_coroutine_threadsafe(self._read_all(agents), self._loop)
        try:
            return future.result(self.timeout + POOL_GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            message = f"the agent thread did not finish within {self.timeout + POOL_GRACE:g}s"
            log.error("scrape abandoned: %s", message)
            return [
                SandboxReading(
                    a,
                    tuple(
                        Reading(a, t, None, error=Code.DEADLINE_EXCEEDED, message=message)
                        for t in a.containers
                    ),
                    Code.DEADLINE_EXCEEDED,
                    message,
                )
                for a in agents
            ]

    async def _read_all(self, agents: Sequence[AgentTarget]) -> list[SandboxReading]:
        await self._follow(agents)
        return list(await asyncio.gather(*(self._read_sandbox(a) for a in agents)))

    async def _follow(self, agents: Sequence[AgentTarget]) -> None:
        """Open a client per new address; close those whose sandbox is no longer listed."""
        wanted = {a.address for a in agents}
        left = [self._clients.pop(address) for address in list(self._clients) if address not in wanted]
        self._no_resources &= wanted
        self._no_diagnostics &= wanted
        for address in wanted - set(self._clients):
            self._clients[address] = AgentClient(address, default_timeout=self.timeout)
        await asyncio.gather(*(client.close() for client in left))

    async def _read_sandbox(self, agent: AgentTarget) -> SandboxReading:
        deadline = asyncio.get_running_loop().time() + self.timeout
        client = self._clients[agent.address]
        if not agent.containers:  # nothing listed yet: still tell whether the agent answers
            return await self._check(agent, client, deadline)
        readings = tuple(
            await asyncio.gather(*(self._read(agent, client, t, deadline) for t in agent.containers))
        )
        down = next((r for r in readings if r.error in AGENT_DOWN_CODES), None)
        if down is not None:
            return SandboxReading(agent, readings, down.error, down.message)
        # after the reads, so that the counts include this scrape's
        return SandboxReading(
            agent, readings, read_errors=await self._read_errors(agent.address, client, deadline)
        )

    async def _read_errors(self, address: str, client: AgentClient, deadline: float) -> dict[str, int] | None:
        """Our agent's Diagnostics/ReadErrors; None when it cannot say (kata-agent: asked once)."""
        if address in self._no_diagnostics:
            return None
        try:
            return await client.read_errors(deadline)
        except TtrpcError as exc:
            if service_unsupported(exc, DIAGNOSTICS_SERVICE, "ReadErrors"):
                self._no_diagnostics.add(address)
            return None

    async def _check(self, agent: AgentTarget, client: AgentClient, deadline: float) -> SandboxReading:
        try:
            await client.check(deadline - asyncio.get_running_loop().time())
        except TtrpcError as exc:
            if exc.code in AGENT_DOWN_CODES:
                return SandboxReading(agent, (), exc.code, exc.message)
        except OSError as exc:
            return SandboxReading(agent, (), Code.UNAVAILABLE, str(exc))
        return SandboxReading(agent, ())

    async def _read(
        self, agent: AgentTarget, client: AgentClient, target: ContainerTarget, deadline: float
    ) -> Reading:
        stats, resources = await asyncio.gather(
            client.stats_container(target.id, deadline=deadline),
            self._spec(agent.address, client, target.id, deadline),
            return_exceptions=True,
        )
        if isinstance(stats, TtrpcError):
            return Reading(agent, target, None, error=stats.code, message=stats.message)
        if isinstance(stats, BaseException):
            raise stats
        spec = resources if isinstance(resources, CadvisorSpec) else None
        try:
            record = ContainerRecord.from_agent(stats)
            kata = kata_go_working_set(stats, self.kata_host)
        except Exception as exc:  # one reply we cannot read must not take the other containers' series
            log.exception(
                "cannot read the reply", extra={"container_id": target.id, "address": agent.address}
            )
            return Reading(agent, target, None, error=Code.INTERNAL, message=f"cannot read the reply: {exc}")
        return Reading(agent, target, record, kata, spec=spec)

    async def _spec(
        self, address: str, client: AgentClient, container_id: str, deadline: float
    ) -> CadvisorSpec | None:
        """The container's spec from our agent's Resources/Get; None from kata-agent (asked once: an agent
        without the service is not asked again) or when this read failed (the stats still count)."""
        if address in self._no_resources:
            return None
        try:
            return cadvisor_spec(await client.resources(container_id, deadline=deadline))
        except TtrpcError as exc:
            if service_unsupported(exc, RESOURCES_SERVICE, "Get"):
                self._no_resources.add(address)
                log.info(
                    "the agent serves no Resources service (kata-agent): no spec, OOM or process metrics",
                    extra={"address": address},
                )
            return None

    def close(self) -> None:
        """Close every agent connection and stop the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._follow(()), self._loop).result(POOL_GRACE + 5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> AgentPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


GONE = "gone"
"""A container's state once its agent said NOT_FOUND: it left; nothing more is logged until it answers."""
UP = "up"


class ContainerCollector:
    """The prometheus_client collector: every ``collect`` is one scrape of what ``source`` lists now.

    Tells *gone* from *down*: a container the agent no longer knows (NOT_FOUND) or a sandbox the source says
    left is dropped from the output without an error, an ``agent_up 0`` or a log line; an agent that does not
    answer while its sandbox exists is down: ``shimstats_agent_up 0``, an error counted, one log line.

    Logs changes of state only (a container first exported, a sandbox's agent stopping or starting to answer,
    a container failing in a new way, a container leaving), so nothing is logged per scrape.
    """

    def __init__(self, pool: AgentPool, source: TargetSource) -> None:
        self.pool = pool
        self.source = source
        self._lock = threading.Lock()  # scrapes may run on several HTTP threads at once
        self._errors: dict[tuple[str, str], int] = {}
        self._sandboxes: dict[str, str] = {}
        """sandbox label → UP or the name of the code that shows it down."""
        self._containers: dict[tuple[str, str], str] = {}
        """(sandbox label, container id) → UP, GONE, or the name of the failing code."""

    def describe(self) -> list[Metric]:
        """Nothing to describe up front: registering must not read the agents."""
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        agents = self.source.targets()
        sandboxes = [
            replace(s, gone=True) if s.down is not None and self.source.gone(s.target) else s
            for s in self.pool.read(agents)
        ]
        duration = time.monotonic() - started
        with self._lock:
            self._account(sandboxes)
            errors = dict(self._errors)
        yield from container_families([r for s in sandboxes if not s.gone for r in s.readings])
        yield from exporter_families(sandboxes, errors, duration)
        yield read_errors_family(sandboxes)

    def _account(self, sandboxes: Sequence[SandboxReading]) -> None:
        present = {s.target.name for s in sandboxes if not s.gone}
        for s in sandboxes:
            if s.gone and s.target.name in self._sandboxes:
                log.info("sandbox gone; no longer exported", extra={"sandbox": s.target.name})
        self._forget(present, {(s.target.name, r.target.id) for s in sandboxes for r in s.readings})
        for s in sandboxes:
            if not s.gone:
                self._account_sandbox(s)
                for r in s.readings:
                    if r.error not in AGENT_DOWN_CODES:
                        self._account_container(r)

    def _forget(self, sandboxes: set[str], containers: set[tuple[str, str]]) -> None:
        """Drop the state and the error counts of whatever is no longer listed (or gone)."""
        for name in [n for n in self._sandboxes if n not in sandboxes]:
            del self._sandboxes[name]
        for key in [k for k in self._containers if k not in containers or k[0] not in sandboxes]:
            if self._containers.pop(key) == UP and key[0] in sandboxes:
                log.info("container no longer listed; no longer exported", extra=_ids(*key))
        for key in [k for k in self._errors if k[0] not in sandboxes]:
            del self._errors[key]

    def _account_sandbox(self, s: SandboxReading) -> None:
        name = s.target.name
        state = UP if s.down is None else s.down.name
        before = self._sandboxes.get(name)
        self._sandboxes[name] = state
        extra = {"sandbox": name, "address": s.target.address}
        if s.down is not None:
            for code in AGENT_DOWN_CODES:  # both down codes show from the first failure on, at 0 or more
                self._errors.setdefault((name, code.name), 0)
            self._errors[(name, s.down.name)] += 1
            if before != state:
                log.warning("guest agent not answering: %s", s.message, extra={**extra, "code": state})
        elif before not in (None, UP):
            log.info("agent reachable again", extra=extra)

    def _account_container(self, r: Reading) -> None:
        key = (r.sandbox.name, r.target.id)
        before = self._containers.get(key)
        extra = _ids(*key)
        if r.error == Code.NOT_FOUND:
            self._containers[key] = GONE
            if before == UP:
                log.info("container gone; no longer exported", extra=extra)
            return
        if r.error is not None:
            state = r.error.name
            self._containers[key] = state
            self._errors[(key[0], state)] = self._errors.get((key[0], state), 0) + 1
            if before != state:
                log.warning("cannot read container: %s", r.message, extra={**extra, "code": state})
            return
        self._containers[key] = UP
        if before in (None, GONE):
            log.info("exporting container %s", r.target.id, extra=extra)
        elif before != UP:
            log.info("container readable again", extra=extra)


def _ids(sandbox: str, container: str) -> dict[str, str]:
    return {"sandbox": sandbox, "container_id": container}

"""Prometheus exporter: cAdvisor's container metrics for Kata containers, read from guest agents on scrape.

Users alert on ``container_memory_working_set_bytes``. For a Kata container the kubelet's cAdvisor has no
container cgroup on the host to read, and the Kata shims lose ``inactive_file``. This exporter asks the guest
agents (ours, or kata-agent itself) for every configured container and publishes the figures under cAdvisor's
names and meanings (reference/semantics.md §2), from the same ContainerRecord the adapter translates, so
Grafana shows what the kubelet would act on.

Why a custom Collector that reads on scrape, not a polling loop: each value is as fresh as the scrape, nothing
is read when nobody scrapes, and a container whose agent does not answer has no series at all instead of a
stale one. One scrape reads each container exactly once, all of them concurrently under one shared deadline
(``timeout``): an agent that does not answer costs the scrape that deadline, never more, and counts in
``shimstats_agent_errors_total{code}``.

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
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeVar, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, UnknownMetricFamily
from prometheus_client.metrics_core import Metric

from shimstats import cri
from shimstats._proto.kata import agent_pb2
from shimstats.agent_client import AgentClient
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
from shimstats.ttrpc import Code, TtrpcError

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

CONTAINER_LABELS = ("id", "container", "pod", "namespace", "image", "agent")
"""Labels of every per-container series: cAdvisor's names for what Kubernetes knows about the container (empty
when not configured) and the address of the agent asked."""

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


@dataclass(frozen=True)
class AgentTarget:
    """One guest agent (ttrpc address) and the containers to read from it."""

    address: str
    containers: tuple[ContainerTarget, ...]


@dataclass(frozen=True)
class Reading:
    """What one scrape learned about one container: its record, or the status of the failed read."""

    agent: str
    target: ContainerTarget
    record: ContainerRecord | None
    kata_go_working_set: int | None = None
    """The working set the Kata Go shim would report for the same agent reply (None: no memory block)."""
    error: Code | None = None
    message: str = ""

    @property
    def labels(self) -> tuple[str, ...]:
        """The values of CONTAINER_LABELS."""
        t = self.target
        return (t.id, t.container, t.pod, t.namespace, t.image, self.agent)


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
    # memory: cAdvisor's meanings (semantics.md §2); the breakdown is the cgroup with its descendants
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
        # untyped: prometheus_client can only type a counter whose samples end in _total, and this is
        # cAdvisor's name
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        "untyped",
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
        "container_hugetlb_failcnt",  # untyped for the reason given at container_memory_failcnt
        "Number of hugepage usage hits limits.",
        "untyped",
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

CORRECTION = (
    "shimstats_working_set_correction_bytes",
    "The Kata Go shim's working set for the same guest reply minus ours: what shimstats corrects (positive: "
    "the Go shim over-reports, typically page cache it fails to subtract).",
)

_Family = Union[GaugeMetricFamily, CounterMetricFamily, UnknownMetricFamily]


def _new_family(name: str, help_text: str, kind: Kind, labels: Sequence[str]) -> _Family:
    if kind == "gauge":
        return GaugeMetricFamily(name, help_text, labels=labels)
    if kind == "counter":
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
    correction = GaugeMetricFamily(*CORRECTION, labels=CONTAINER_LABELS)
    for reading, record in answered:
        if record.memory is not None and reading.kata_go_working_set is not None:
            correction.add_metric(reading.labels, reading.kata_go_working_set - record.memory.working_set)
    if correction.samples:
        found.append(correction)
    return found


def exporter_families(
    readings: Sequence[Reading], errors: Mapping[tuple[str, str], int], duration: float
) -> list[Metric]:
    """The exporter's own families: scrape duration, agent health, and the cumulative ``errors`` counts
    keyed by (agent address, status code name)."""
    duration_family = GaugeMetricFamily(
        "shimstats_scrape_duration_seconds", "Seconds this scrape spent reading the guest agents."
    )
    duration_family.add_metric([], duration)
    up = GaugeMetricFamily(
        "shimstats_agent_up",
        "1 when the agent answered every read of this scrape (a status of its own, such as NOT_FOUND, is an "
        "answer), 0 when a read ended UNAVAILABLE or DEADLINE_EXCEEDED.",
        labels=["agent"],
    )
    down: dict[str, bool] = {}
    for r in readings:
        down[r.agent] = down.get(r.agent, False) or r.error in AGENT_DOWN_CODES
    for agent, is_down in down.items():
        up.add_metric([agent], 0.0 if is_down else 1.0)
    counter = CounterMetricFamily(
        "shimstats_agent_errors_total",
        "Reads of a container that failed, by agent and status code, since the exporter started.",
        labels=["agent", "code"],
    )
    for (agent, code), count in sorted(errors.items()):
        counter.add_metric([agent, code], count)
    return [duration_family, up, counter]


def read_errors_family(counts: Mapping[str, Mapping[str, int]]) -> Metric:
    """``shimstats_agent_read_errors_total{agent,file}`` from each agent's Diagnostics/ReadErrors."""
    family = CounterMetricFamily(
        "shimstats_agent_read_errors_total",
        "Reads by the guest agent that left a figure out because a kernel file was missing or garbled, by "
        "file name, as the agent counts them since it started (no series for an agent that cannot say).",
        labels=["agent", "file"],
    )
    for agent, files in sorted(counts.items()):
        for name, count in sorted(files.items()):
            family.add_metric([agent, name], count)
    return family


# -- reading the agents -----------------------------------------------------------------------------------


def kata_go_working_set(response: agent_pb2.StatsContainerResponse, host: OutputFormat) -> int | None:
    """CRI's working set from the Metrics the Kata Go shim would build on a ``host`` cgroup-mode host."""
    memory = cri.cri_memory(kata_go.metrics(response, host))
    return None if memory is None else memory.working_set_bytes


class AgentPool:
    """One shared AgentClient per agent, on a private event-loop thread; ``read`` is safe from any thread.

    ``kata_host`` is the host cgroup mode the Kata Go shim would see (it picks its output format by it), for
    the correction metric.
    """

    def __init__(self, agents: Sequence[AgentTarget], *, timeout: float, kata_host: OutputFormat) -> None:
        self.agents = tuple(agents)
        self.timeout = timeout
        self.kata_host: OutputFormat = kata_host
        self.read_errors: dict[str, dict[str, int]] = {}
        """Per agent address, the guest agent's own count of files it could not read, from the last scrape."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shimstats-agents", daemon=True)
        self._thread.start()
        # made in the loop's own thread, so every asyncio object they hold belongs to that loop
        try:
            self._clients = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()
        except BaseException:
            self._clients = {}
            self.close()
            raise

    async def _open(self) -> dict[str, AgentClient]:
        return {a.address: AgentClient(a.address, default_timeout=self.timeout) for a in self.agents}

    def read(self) -> list[Reading]:
        """Every configured container, read once, concurrently, within ``timeout`` seconds."""
        future = asyncio.run_coroutine_threadsafe(self._read_all(), self._loop)
        try:
            return future.result(self.timeout + POOL_GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            message = f"the agent thread did not finish within {self.timeout + POOL_GRACE:g}s"
            log.error("scrape abandoned: %s", message)
            return [
                Reading(a.address, t, None, error=Code.DEADLINE_EXCEEDED, message=message)
                for a in self.agents
                for t in a.containers
            ]

    async def _read_all(self) -> list[Reading]:
        deadline = asyncio.get_running_loop().time() + self.timeout
        reads = [self._read(a.address, t, deadline) for a in self.agents for t in a.containers]
        counts = [self._read_errors(a.address, deadline) for a in self.agents]
        readings, _ = await asyncio.gather(asyncio.gather(*reads), asyncio.gather(*counts))
        return list(readings)

    async def _read_errors(self, address: str, deadline: float) -> None:
        """The agent's read-error counts into ``read_errors`` (dropped when it cannot say: kata-agent)."""
        try:
            self.read_errors[address] = await self._clients[address].read_errors(deadline)
        except TtrpcError:
            self.read_errors.pop(address, None)

    async def _read(self, address: str, target: ContainerTarget, deadline: float) -> Reading:
        try:
            response = await self._clients[address].stats_container(target.id, deadline=deadline)
        except TtrpcError as exc:
            return Reading(address, target, None, error=exc.code, message=exc.message)
        try:
            record = ContainerRecord.from_agent(response)
            kata = kata_go_working_set(response, self.kata_host)
        except Exception as exc:  # one reply we cannot read must not take the other containers' series
            log.exception("cannot read the reply", extra={"container_id": target.id, "address": address})
            return Reading(
                address, target, None, error=Code.INTERNAL, message=f"cannot read the reply: {exc}"
            )
        return Reading(address, target, record, kata)

    def close(self) -> None:
        """Close every agent connection and stop the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close_clients(), self._loop).result(POOL_GRACE + 5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    async def _close_clients(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))

    def __enter__(self) -> AgentPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ContainerCollector:
    """The prometheus_client collector: every ``collect`` is one scrape of every configured container.

    Keeps the error counts across scrapes and logs each container's changes of state (first answer, first
    failure, a different failure, recovery), so a dead agent is one log line, not one per scrape.
    """

    def __init__(self, pool: AgentPool) -> None:
        self.pool = pool
        self._lock = threading.Lock()  # scrapes may run on several HTTP threads at once
        self._errors: dict[tuple[str, str], int] = {
            (a.address, code.name): 0 for a in pool.agents for code in AGENT_DOWN_CODES
        }
        self._state: dict[tuple[str, str], Code] = {}

    def describe(self) -> list[Metric]:
        """Nothing to describe up front: registering must not read the agents."""
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        readings = self.pool.read()
        duration = time.monotonic() - started
        with self._lock:
            for reading in readings:
                self._account(reading)
            errors = dict(self._errors)
        yield from container_families(readings)
        yield from exporter_families(readings, errors, duration)
        yield read_errors_family(self.pool.read_errors)

    def _account(self, reading: Reading) -> None:
        key = (reading.agent, reading.target.id)
        state = reading.error if reading.error is not None else Code.OK
        before = self._state.get(key)
        self._state[key] = state
        extra = {"container_id": reading.target.id, "address": reading.agent}
        if reading.error is not None:
            name = reading.error.name
            self._errors[(reading.agent, name)] = self._errors.get((reading.agent, name), 0) + 1
            if before != state:
                log.warning("cannot read container: %s", reading.message, extra={**extra, "code": name})
        elif before is None:
            log.info("exporting container", extra=extra)
        elif before != state:
            log.info("container readable again", extra=extra)

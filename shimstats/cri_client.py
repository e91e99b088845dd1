"""A typed client of the Kubernetes CRI (runtime.v1) over a unix socket: what the kubelet sees.

containerd serves the CRI on its main socket once its ``io.containerd.grpc.v1.cri`` plugin is loaded; a
containerd without it answers every call UNIMPLEMENTED, which this module turns into an error that says
so. Listings come back as plain frozen records (no protobuf types leak out), stats keep "not reported"
(an unset UInt64Value) apart from 0, and every error names the socket and the call. ``runtime`` and
``images`` expose the generated stubs for callers that drive pods (tests, harnesses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import grpc

from shimstats import cri
from shimstats._proto.cri.runtime.v1 import api_pb2, api_pb2_grpc
from shimstats.containerd_grpc import ContainerdError, grpc_target

DEFAULT_ADDRESS = "unix:///run/containerd/containerd.sock"
DEFAULT_TIMEOUT = 5.0
CRI_VERSION = "v1"
# The kubelet's own receive limit for CRI answers (a node's full container list can pass gRPC's 4 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class CriError(RuntimeError):
    """The CRI could not be asked (bad address, unreachable, no CRI plugin) or refused the call."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PodSandboxRecord:
    """One pod sandbox as ListPodSandbox reports it."""

    id: str
    name: str
    namespace: str
    uid: str
    ready: bool
    runtime_handler: str
    created_at_ns: int
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerRecord:
    """One container as ListContainers reports it, with its pod's name and namespace joined in.

    ``pod_name``/``pod_namespace`` are empty when the sandbox was gone by the time it was listed.
    ``state`` is the CRI enum's name without its prefix: CREATED, RUNNING, EXITED or UNKNOWN.
    """

    id: str
    name: str
    sandbox_id: str
    pod_name: str
    pod_namespace: str
    image: str
    image_ref: str
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    created_at_ns: int = 0
    """When the runtime created it, in nanoseconds since the epoch (the CRI's ``created_at``)."""


@dataclass(frozen=True)
class MemoryFigures:
    """CRI MemoryUsage; a figure is None when the runtime left it unset (the kubelet then has no figure)."""

    timestamp_ns: int
    usage_bytes: int | None
    working_set_bytes: int | None
    available_bytes: int | None
    rss_bytes: int | None
    page_faults: int | None
    major_page_faults: int | None

    def complete(self) -> cri.CriMemory | None:
        """All six figures as a CriMemory (what shimstats computes), or None if any is missing."""
        figures = asdict(self)
        del figures["timestamp_ns"]
        if any(value is None for value in figures.values()):
            return None
        return cri.CriMemory(**figures)


@dataclass(frozen=True)
class ContainerStatsRecord:
    """One container's CRI stats: the kubelet's input for kubectl top, metrics-server and eviction."""

    id: str
    name: str
    labels: Mapping[str, str]
    cpu_usage_core_nanos: int | None
    memory: MemoryFigures | None


@dataclass(frozen=True)
class PodSandboxStatsRecord:
    """One pod's CRI stats (Linux): the pod-level figures and its containers'."""

    id: str
    name: str
    namespace: str
    cpu_usage_core_nanos: int | None
    memory: MemoryFigures | None
    containers: tuple[ContainerStatsRecord, ...]


def _value(holder: Any, name: str) -> int | None:
    """An optional UInt64Value field's number, or None when unset."""
    return int(getattr(holder, name).value) if holder.HasField(name) else None


def memory_figures(usage: api_pb2.MemoryUsage) -> MemoryFigures:
    return MemoryFigures(
        timestamp_ns=usage.timestamp,
        usage_bytes=_value(usage, "usage_bytes"),
        working_set_bytes=_value(usage, "working_set_bytes"),
        available_bytes=_value(usage, "available_bytes"),
        rss_bytes=_value(usage, "rss_bytes"),
        page_faults=_value(usage, "page_faults"),
        major_page_faults=_value(usage, "major_page_faults"),
    )


def container_stats_record(stats: api_pb2.ContainerStats) -> ContainerStatsRecord:
    return ContainerStatsRecord(
        id=stats.attributes.id,
        name=stats.attributes.metadata.name,
        labels=dict(stats.attributes.labels),
        cpu_usage_core_nanos=_value(stats.cpu, "usage_core_nano_seconds") if stats.HasField("cpu") else None,
        memory=memory_figures(stats.memory) if stats.HasField("memory") else None,
    )


def _sandbox_record(item: api_pb2.PodSandbox) -> PodSandboxRecord:
    return PodSandboxRecord(
        id=item.id,
        name=item.metadata.name,
        namespace=item.metadata.namespace,
        uid=item.metadata.uid,
        ready=item.state == api_pb2.SANDBOX_READY,
        runtime_handler=item.runtime_handler,
        created_at_ns=item.created_at,
        labels=dict(item.labels),
        annotations=dict(item.annotations),
    )


class CriClient:
    """One gRPC channel to a CRI socket; every call has a deadline (``timeout`` seconds).

    Use as a context manager, or call close(). ``address`` is ``unix:///path`` or an absolute socket path.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            self.target = grpc_target(address)
        except ContainerdError:
            raise CriError(
                f"CRI address {address!r}: expected unix:///path or an absolute socket path"
            ) from None
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel = grpc.insecure_channel(self.target, options=options)
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self._channel)
        self.images = api_pb2_grpc.ImageServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        method: Callable[..., _Response],
        request: _Request,
        *,
        name: str,
        timeout: float | None = None,
    ) -> _Response:
        """Call one stub method with the deadline; a gRPC error becomes a CriError naming socket and call."""
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            label = code.name if code is not None else "UNKNOWN"
            hint = ""
            if code == grpc.StatusCode.UNIMPLEMENTED:
                hint = " (no CRI plugin here: check `ctr plugins ls` for io.containerd.grpc.v1.cri)"
            raise CriError(f"CRI {name} at {self.target}: {label}: {details}{hint}", code) from None

    # -- plain-record reads -----------------------------------------------------------------------------

    def version(self) -> api_pb2.VersionResponse:
        return self.call(self.runtime.Version, api_pb2.VersionRequest(version=CRI_VERSION), name="Version")

    def list_pod_sandboxes(
        self, *, label_selector: Mapping[str, str] | None = None
    ) -> list[PodSandboxRecord]:
        request = api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector=label_selector)
        )
        response = self.call(self.runtime.ListPodSandbox, request, name="ListPodSandbox")
        return [_sandbox_record(item) for item in response.items]

    def list_containers(
        self,
        *,
        sandbox_id: str = "",
        label_selector: Mapping[str, str] | None = None,
        pods: Sequence[PodSandboxRecord] | None = None,
    ) -> list[ContainerRecord]:
        """ListContainers, each joined with its pod's name and namespace from ``pods`` (a ListPodSandbox the
        caller already made) or from a ListPodSandbox of its own."""
        request = api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(pod_sandbox_id=sandbox_id, label_selector=label_selector)
        )
        response = self.call(self.runtime.ListContainers, request, name="ListContainers")
        by_id = {pod.id: pod for pod in (self.list_pod_sandboxes() if pods is None else pods)}
        records = []
        for item in response.containers:
            pod = by_id.get(item.pod_sandbox_id)
            records.append(
                ContainerRecord(
                    id=item.id,
                    name=item.metadata.name,
                    sandbox_id=item.pod_sandbox_id,
                    pod_name=pod.name if pod else "",
                    pod_namespace=pod.namespace if pod else "",
                    image=item.image.image,
                    image_ref=item.image_ref,
                    state=api_pb2.ContainerState.Name(item.state).removeprefix("CONTAINER_"),
                    labels=dict(item.labels),
                    annotations=dict(item.annotations),
                    created_at_ns=item.created_at,
                )
            )
        return records

    def container_stats(self, container_id: str) -> ContainerStatsRecord:
        request = api_pb2.ContainerStatsRequest(container_id=container_id)
        response = self.call(self.runtime.ContainerStats, request, name=f"ContainerStats({container_id})")
        return container_stats_record(response.stats)

    def list_container_stats(self, *, sandbox_id: str = "") -> list[ContainerStatsRecord]:
        request = api_pb2.ListContainerStatsRequest(
            filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=sandbox_id)
        )
        response = self.call(self.runtime.ListContainerStats, request, name="ListContainerStats")
        return [container_stats_record(stats) for stats in response.stats]

    def list_pod_sandbox_stats(self, *, sandbox_id: str = "") -> list[PodSandboxStatsRecord]:
        request = api_pb2.ListPodSandboxStatsRequest(filter=api_pb2.PodSandboxStatsFilter(id=sandbox_id))
        response = self.call(self.runtime.ListPodSandboxStats, request, name="ListPodSandboxStats")
        records = []
        for stats in response.stats:
            linux = stats.linux
            records.append(
                PodSandboxStatsRecord(
                    id=stats.attributes.id,
                    name=stats.attributes.metadata.name,
                    namespace=stats.attributes.metadata.namespace,
                    cpu_usage_core_nanos=(
                        _value(linux.cpu, "usage_core_nano_seconds") if linux.HasField("cpu") else None
                    ),
                    memory=memory_figures(linux.memory) if linux.HasField("memory") else None,
                    containers=tuple(container_stats_record(c) for c in linux.containers),
                )
            )
        return records

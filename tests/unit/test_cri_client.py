"""shimstats.cri_client against a real gRPC server on a real unix socket.

The server here answers from fixed tables: it stands in for containerd's CRI plugin only in what these
tests check (joining pods to containers, unset versus zero figures, error wording, deadlines); the client
against the real containerd CRI is tests/integration/test_cri_containerd.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from shimstats import cri
from shimstats._proto.cri.runtime.v1 import api_pb2, api_pb2_grpc
from shimstats.cri_client import CriClient, CriError, MemoryFigures


def _u64(value: int) -> api_pb2.UInt64Value:
    return api_pb2.UInt64Value(value=value)


class _Runtime(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests: list[Any] = []

    def Version(self, request: api_pb2.VersionRequest, context: Any) -> api_pb2.VersionResponse:
        self.requests.append(request)
        return api_pb2.VersionResponse(version="0.1.0", runtime_name="containerd", runtime_api_version="v1")

    def ListPodSandbox(
        self, request: api_pb2.ListPodSandboxRequest, context: Any
    ) -> api_pb2.ListPodSandboxResponse:
        self.requests.append(request)
        return api_pb2.ListPodSandboxResponse(
            items=[
                api_pb2.PodSandbox(
                    id="pod1",
                    metadata=api_pb2.PodSandboxMetadata(name="web", namespace="shop", uid="u1"),
                    state=api_pb2.SANDBOX_NOTREADY,
                    runtime_handler="kata-stats",
                    labels={"app": "web"},
                )
            ]
        )

    def ListContainers(
        self, request: api_pb2.ListContainersRequest, context: Any
    ) -> api_pb2.ListContainersResponse:
        self.requests.append(request)
        return api_pb2.ListContainersResponse(
            containers=[
                api_pb2.Container(
                    id="c1",
                    pod_sandbox_id="pod1",
                    metadata=api_pb2.ContainerMetadata(name="nginx"),
                    image=api_pb2.ImageSpec(image="docker.io/library/nginx:1"),
                    image_ref="sha256:ab",
                    state=api_pb2.CONTAINER_RUNNING,
                    labels={"tier": "front"},
                ),
                api_pb2.Container(
                    id="c2", pod_sandbox_id="gone", metadata=api_pb2.ContainerMetadata(name="x")
                ),
            ]
        )

    def ContainerStats(
        self, request: api_pb2.ContainerStatsRequest, context: Any
    ) -> api_pb2.ContainerStatsResponse:
        if request.container_id == "slow":
            self.release.wait(30)
        if request.container_id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, 'an error occurred when try to find container "missing"')
        memory = api_pb2.MemoryUsage(
            timestamp=7,
            working_set_bytes=_u64(0),
            available_bytes=_u64(10),
            usage_bytes=_u64(4),
            rss_bytes=_u64(1),
            page_faults=_u64(2),
            major_page_faults=_u64(3),
        )
        return api_pb2.ContainerStatsResponse(
            stats=api_pb2.ContainerStats(
                attributes=api_pb2.ContainerAttributes(id=request.container_id),
                cpu=api_pb2.CpuUsage(usage_core_nano_seconds=_u64(99)),
                memory=memory,
            )
        )

    def ListContainerStats(
        self, request: api_pb2.ListContainerStatsRequest, context: Any
    ) -> api_pb2.ListContainerStatsResponse:
        # As containerd does when the shim's Stats failed: the container, a timestamp, no figures.
        return api_pb2.ListContainerStatsResponse(
            stats=[
                api_pb2.ContainerStats(
                    attributes=api_pb2.ContainerAttributes(
                        id="c1", metadata=api_pb2.ContainerMetadata(name="n")
                    ),
                    memory=api_pb2.MemoryUsage(timestamp=5),
                )
            ]
        )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, _Runtime]]:
    runtime = _Runtime()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
    socket = tmp_path / "cri.sock"
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        yield f"unix://{socket}", runtime
    finally:
        runtime.release.set()
        server.stop(None)


def test_list_containers_joins_pod_name_and_namespace(served: tuple[str, _Runtime]) -> None:
    address, _ = served
    with CriClient(address) as client:
        c1, c2 = client.list_containers()
    assert (c1.id, c1.name, c1.sandbox_id, c1.pod_name, c1.pod_namespace) == (
        "c1",
        "nginx",
        "pod1",
        "web",
        "shop",
    )
    assert (c1.image, c1.image_ref, c1.state, dict(c1.labels)) == (
        "docker.io/library/nginx:1",
        "sha256:ab",
        "RUNNING",
        {"tier": "front"},
    )
    # A container whose sandbox is not listed keeps empty pod fields rather than failing the listing.
    assert (c2.pod_name, c2.pod_namespace, c2.state) == ("", "", "CREATED")


def test_list_pod_sandboxes_records_and_filter_on_the_wire(served: tuple[str, _Runtime]) -> None:
    address, runtime = served
    with CriClient(address) as client:
        (pod,) = client.list_pod_sandboxes(label_selector={"app": "web"})
    assert (pod.id, pod.name, pod.namespace, pod.uid, pod.ready, pod.runtime_handler) == (
        "pod1",
        "web",
        "shop",
        "u1",
        False,
        "kata-stats",
    )
    assert dict(runtime.requests[-1].filter.label_selector) == {"app": "web"}


def test_container_stats_keeps_zero_apart_from_unset(served: tuple[str, _Runtime]) -> None:
    address, _ = served
    with CriClient(address) as client:
        full = client.container_stats("c1")
        (empty,) = client.list_container_stats()
    assert full.cpu_usage_core_nanos == 99
    assert full.memory is not None
    assert full.memory.working_set_bytes == 0
    assert full.memory.complete() == cri.CriMemory(
        usage_bytes=4,
        working_set_bytes=0,
        available_bytes=10,
        rss_bytes=1,
        page_faults=2,
        major_page_faults=3,
    )
    assert empty.cpu_usage_core_nanos is None
    assert empty.memory == MemoryFigures(5, None, None, None, None, None, None)
    assert empty.memory.complete() is None


def test_version_sends_the_cri_version(served: tuple[str, _Runtime]) -> None:
    address, runtime = served
    with CriClient(address) as client:
        assert client.version().runtime_api_version == "v1"
    assert runtime.requests[-1].version == "v1"


def test_error_status_names_socket_call_and_code(served: tuple[str, _Runtime]) -> None:
    address, _ = served
    with CriClient(address) as client, pytest.raises(CriError) as caught:
        client.container_stats("missing")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert str(caught.value) == (
        f"CRI ContainerStats(missing) at {address}: NOT_FOUND: "
        'an error occurred when try to find container "missing"'
    )


def test_a_server_without_the_call_says_the_cri_plugin_is_missing(served: tuple[str, _Runtime]) -> None:
    address, _ = served
    with CriClient(address) as client, pytest.raises(CriError) as caught:
        client.list_pod_sandbox_stats()  # _Runtime does not implement it, like a containerd without CRI
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert "check `ctr plugins ls` for io.containerd.grpc.v1.cri" in str(caught.value)


def test_deadline_is_applied(served: tuple[str, _Runtime]) -> None:
    address, _ = served
    with CriClient(address, timeout=0.2) as client, pytest.raises(CriError) as caught:
        client.container_stats("slow")
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_no_socket_is_an_error_naming_it(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/absent.sock"
    with CriClient(address) as client, pytest.raises(CriError) as caught:
        client.list_containers()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(caught.value).startswith(f"CRI ListContainers at {address}: UNAVAILABLE: ")
    assert "absent.sock" in str(caught.value)


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "relative/cri.sock"])
def test_bad_address_is_refused_before_any_call(address: str) -> None:
    with pytest.raises(CriError, match=r"expected unix:///path or an absolute socket path"):
        CriClient(address)


def test_bare_socket_path_is_accepted(served: tuple[str, _Runtime]) -> None:
    address, _ = served
    with CriClient(address.removeprefix("unix://")) as client:
        assert client.version().runtime_name == "containerd"

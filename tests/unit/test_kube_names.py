"""shimstats.kube_names: names from a CRI stand-in (a real gRPC server on a unix socket answering
ListPodSandbox and ListContainers from a fixed table, as containerd's CRI plugin shapes them), the containerd
record rules, and the fallback order. The containerd containers API itself is exercised against a real
containerd in tests/integration/test_discover_cli.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyPb

from shimstats._proto.containerd.services.containers.v1 import containers_pb2
from shimstats._proto.cri.runtime.v1 import api_pb2, api_pb2_grpc
from shimstats.kube_names import (
    CONTAINER_NAME_LABEL,
    KIND_LABEL,
    POD_NAME_LABEL,
    POD_NAMESPACE_LABEL,
    SANDBOX_ID_ANNOTATION,
    NamedContainer,
    Names,
    PodName,
    containerd_record,
    list_names,
)

NGINX = "docker.io/library/nginx:1.25"
CREATED_AT = {
    "c-old": 1_700_000_000_000_000_000,
    "c-new": 1_700_000_100_000_000_000,
    "c-side": 1_700_000_100_500_000_000,
}


class _Runtime(api_pb2_grpc.RuntimeServiceServicer):
    def ListPodSandbox(
        self, request: api_pb2.ListPodSandboxRequest, context: Any
    ) -> api_pb2.ListPodSandboxResponse:
        return api_pb2.ListPodSandboxResponse(
            items=[
                api_pb2.PodSandbox(
                    id="sb1", metadata=api_pb2.PodSandboxMetadata(name="web-0", namespace="shop")
                ),
                api_pb2.PodSandbox(
                    id="sb2",
                    metadata=api_pb2.PodSandboxMetadata(name="idle", namespace="ops"),
                    state=api_pb2.SANDBOX_NOTREADY,
                ),
            ]
        )

    def ListContainers(
        self, request: api_pb2.ListContainersRequest, context: Any
    ) -> api_pb2.ListContainersResponse:
        def container(cid: str, name: str, state: int) -> api_pb2.Container:
            return api_pb2.Container(
                id=cid,
                created_at=CREATED_AT[cid],
                pod_sandbox_id="sb1",
                metadata=api_pb2.ContainerMetadata(name=name),
                image=api_pb2.ImageSpec(image=NGINX),
                state=state,  # type: ignore[arg-type]
            )

        return api_pb2.ListContainersResponse(
            containers=[
                container("c-old", "nginx", api_pb2.CONTAINER_EXITED),  # restarted: the old id is history
                container("c-new", "nginx", api_pb2.CONTAINER_RUNNING),
                container("c-side", "envoy", api_pb2.CONTAINER_CREATED),
            ]
        )


@pytest.fixture
def cri(tmp_path: Path) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(_Runtime(), server)
    socket = tmp_path / "cri.sock"
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        yield f"unix://{socket}"
    finally:
        server.stop(None)


def test_names_from_the_cri_leave_exited_containers_out(cri: str) -> None:
    names = list_names(cri, timeout=5)
    assert names.source == "cri"
    assert names.notes == ()
    assert names.by_sandbox() == {
        "sb1": [
            NamedContainer("c-side", "sb1", "web-0", "shop", "envoy", NGINX, "CREATED", CREATED_AT["c-side"]),
            NamedContainer("c-new", "sb1", "web-0", "shop", "nginx", NGINX, "RUNNING", CREATED_AT["c-new"]),
        ]
    }
    assert names.pods()["sb1"] == PodName("sb1", "web-0", "shop", ready=True)
    # a pod with no container is still named, and its CRI state kept (the exporter skips a stopped pod)
    assert names.pods()["sb2"] == PodName("sb2", "idle", "ops", ready=False)


def test_no_cri_and_no_containerd_is_names_none_with_both_reasons(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/nothing.sock"
    names = list_names(address, timeout=2)
    assert (names.source, names.containers) == ("none", ())
    assert len(names.notes) == 2
    assert "ListPodSandbox" in names.notes[0]
    assert "Containers.List" in names.notes[1]
    assert all(f"{tmp_path}/nothing.sock" in note for note in names.notes)


def _record(
    cid: str, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> containers_pb2.Container:
    spec = AnyPb(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
        value=json.dumps({"ociVersion": "1.0.2", "annotations": annotations or {}}).encode(),
    )
    return containers_pb2.Container(id=cid, labels=labels, image="registry/app:2", spec=spec)


def test_containerd_records_follow_the_cri_plugins_labels_and_annotation() -> None:
    pod_labels = {POD_NAME_LABEL: "web-0", POD_NAMESPACE_LABEL: "shop"}
    sandbox = containerd_record(_record("sb1", {**pod_labels, KIND_LABEL: "sandbox"}))
    assert sandbox == PodName("sb1", "web-0", "shop")
    app = containerd_record(
        _record(
            "c1",
            {**pod_labels, KIND_LABEL: "container", CONTAINER_NAME_LABEL: "nginx"},
            {SANDBOX_ID_ANNOTATION: "sb1"},
        )
    )
    assert app == NamedContainer("c1", "sb1", "web-0", "shop", "nginx", "registry/app:2")
    # ctr run with a Kata runtime: no CRI labels, no annotation: the container is its own sandbox.
    assert containerd_record(_record("solo", {})) == NamedContainer("solo", "solo", image="registry/app:2")
    # A spec that is not JSON does not break the listing.
    broken = containers_pb2.Container(id="x", spec=AnyPb(value=b"\x00not json"))
    assert containerd_record(broken) == NamedContainer("x", "x")


def test_names_group_and_name_pods_from_containers_when_no_pod_listing() -> None:
    names = Names(
        "containerd",
        (NamedContainer("b", "sb", "web", "shop", "z"), NamedContainer("a", "sb", "web", "shop", "a")),
    )
    assert [c.id for c in names.by_sandbox()["sb"]] == ["a", "b"]
    assert names.pods() == {"sb": PodName("sb", "web", "shop")}

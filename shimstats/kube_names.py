"""Which containers each Kata sandbox holds, with the names Kubernetes gives them (pod, namespace, container,
image), from the best source this node offers:

1. the CRI (``runtime.v1.RuntimeService/ListContainers`` and ``ListPodSandbox``, shimstats.cri_client): what
   the kubelet itself sees; exited containers are left out (a restarted container's old id is history);
2. containerd's containers API (``containerd.services.containers.v1.Containers/List``, namespace ``k8s.io``)
   when no CRI answers: the CRI plugin stores the kubelet's labels (``io.kubernetes.pod.name``,
   ``io.kubernetes.pod.namespace``, ``io.kubernetes.container.name``) on each container and the sandbox id in
   its OCI spec's annotations (``io.kubernetes.cri.sandbox-id``; containerd ``pkg/cri/server/helpers.go``
   ``buildLabels``, ``pkg/cri/annotations``); pod sandbox (pause) containers are skipped, as the CRI skips
   them; a container without the annotation is its own sandbox (``ctr run`` with a Kata runtime);
3. nothing: ``Names.source`` is ``"none"`` and callers show the sandbox ids alone.

Every source failure is kept in ``Names.notes`` (one line naming the socket), so a caller can say why the
names are missing without failing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import grpc

from shimstats._proto.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from shimstats.containerd_grpc import NAMESPACE_METADATA_KEY, ContainerdError, grpc_target, rpc_error_text
from shimstats.cri_client import DEFAULT_ADDRESS, CriClient, CriError

__all__ = [
    "CONTAINER_NAME_LABEL",
    "CRI_NAMESPACE",
    "DEFAULT_ADDRESS",
    "KIND_LABEL",
    "POD_NAMESPACE_LABEL",
    "POD_NAME_LABEL",
    "SANDBOX_ID_ANNOTATION",
    "NamedContainer",
    "Names",
    "PodName",
    "containerd_record",
    "cri_names",
    "from_containerd",
    "from_cri",
    "list_names",
]

POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"
KIND_LABEL = "io.cri-containerd.kind"
CRI_NAMESPACE = "k8s.io"
"""The containerd namespace the CRI plugin keeps Kubernetes' containers in."""
DEFAULT_TIMEOUT = 5.0
_LIVE_STATES = ("CREATED", "RUNNING", "UNKNOWN")

Source = Literal["cri", "containerd", "none"]


@dataclass(frozen=True)
class NamedContainer:
    """One container and its Kubernetes names ("" where the source has none)."""

    id: str
    sandbox_id: str
    pod: str = ""
    namespace: str = ""
    container: str = ""
    image: str = ""
    state: str = ""
    """The CRI's state: CREATED, RUNNING or UNKNOWN; "" where the source does not say (containerd)."""
    created_at_ns: int = 0
    """When the runtime created it (the CRI's ``created_at``, ns since the epoch); 0 where not known."""

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "pod": self.pod,
            "namespace": self.namespace,
            "container": self.container,
            "image": self.image,
        }


@dataclass(frozen=True)
class PodName:
    """One pod sandbox's Kubernetes name."""

    sandbox_id: str
    pod: str
    namespace: str
    ready: bool = True
    """Whether the CRI lists the pod as SANDBOX_READY; True where the source cannot say (containerd)."""


@dataclass(frozen=True)
class Names:
    """The node's pods and containers from one source, and what the sources that failed said."""

    source: Source
    containers: tuple[NamedContainer, ...] = ()
    pod_names: tuple[PodName, ...] = ()
    notes: tuple[str, ...] = ()

    def by_sandbox(self) -> dict[str, list[NamedContainer]]:
        """Containers grouped by sandbox id, each group sorted by pod, container name and id."""
        groups: dict[str, list[NamedContainer]] = {}
        for item in self.containers:
            groups.setdefault(item.sandbox_id, []).append(item)
        for group in groups.values():
            group.sort(key=lambda c: (c.pod, c.container, c.id))
        return groups

    def pods(self) -> dict[str, PodName]:
        """Sandbox id → its pod's name: from the pod listing, else from a container that names it."""
        found = {p.sandbox_id: p for p in self.pod_names}
        for item in self.containers:
            if item.pod and item.sandbox_id not in found:
                found[item.sandbox_id] = PodName(item.sandbox_id, item.pod, item.namespace)
        return found


def from_cri(address: str = DEFAULT_ADDRESS, *, timeout: float = DEFAULT_TIMEOUT) -> Names:
    """Every pod and live container the CRI at ``address`` lists, named; CriError when it cannot be asked."""
    with CriClient(address, timeout=timeout) as client:
        return cri_names(client)


def cri_names(client: CriClient) -> Names:
    """``from_cri`` on a client the caller keeps open (the exporter asks at every scrape): one
    ListPodSandbox and one ListContainers."""
    pods = client.list_pod_sandboxes()
    records = client.list_containers(pods=pods)
    containers = [
        NamedContainer(
            id=r.id,
            sandbox_id=r.sandbox_id,
            pod=r.pod_name or r.labels.get(POD_NAME_LABEL, ""),
            namespace=r.pod_namespace or r.labels.get(POD_NAMESPACE_LABEL, ""),
            container=r.name or r.labels.get(CONTAINER_NAME_LABEL, ""),
            image=r.image,
            state=r.state,
            created_at_ns=r.created_at_ns,
        )
        for r in records
        if r.state in _LIVE_STATES
    ]
    named_pods = (PodName(p.id, p.name, p.namespace, p.ready) for p in pods)
    return Names("cri", tuple(containers), tuple(named_pods))


def _spec_annotations(spec: bytes) -> Mapping[str, str]:
    try:
        annotations = json.loads(spec).get("annotations") if spec else None
    except (ValueError, AttributeError):
        return {}
    return annotations if isinstance(annotations, dict) else {}


def containerd_record(item: containers_pb2.Container) -> NamedContainer | PodName:
    """One containerd container as a NamedContainer, or a PodName for a pod sandbox's own (pause) one."""
    labels = item.labels
    if labels.get(KIND_LABEL) == "sandbox":
        return PodName(item.id, labels.get(POD_NAME_LABEL, ""), labels.get(POD_NAMESPACE_LABEL, ""))
    sandbox_id = labels.get(SANDBOX_ID_ANNOTATION) or _spec_annotations(item.spec.value).get(
        SANDBOX_ID_ANNOTATION, ""
    )
    return NamedContainer(
        id=item.id,
        sandbox_id=str(sandbox_id) or item.id,
        pod=labels.get(POD_NAME_LABEL, ""),
        namespace=labels.get(POD_NAMESPACE_LABEL, ""),
        container=labels.get(CONTAINER_NAME_LABEL, ""),
        image=item.image,
    )


def from_containerd(
    address: str = DEFAULT_ADDRESS, *, namespace: str = CRI_NAMESPACE, timeout: float = DEFAULT_TIMEOUT
) -> Names:
    """Pods and containers from containerd's own containers API; ContainerdError when it cannot be asked."""
    target = grpc_target(address)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = containers_pb2_grpc.ContainersStub(channel)
            response = stub.List(
                containers_pb2.ListContainersRequest(),
                timeout=timeout,
                metadata=((NAMESPACE_METADATA_KEY, namespace),),
            )
    except grpc.RpcError as exc:
        raise ContainerdError(
            f"containerd Containers.List at {target} (namespace {namespace}): {rpc_error_text(exc)}"
        ) from None
    records = [containerd_record(item) for item in response.containers]
    return Names(
        "containerd",
        tuple(r for r in records if isinstance(r, NamedContainer)),
        tuple(r for r in records if isinstance(r, PodName)),
    )


def list_names(
    cri_address: str = DEFAULT_ADDRESS,
    *,
    containerd_address: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Names:
    """Names from the CRI, else containerd's containers API (default: the CRI's socket), else none."""
    notes: list[str] = []
    try:
        return from_cri(cri_address, timeout=timeout)
    except CriError as exc:
        notes.append(str(exc))
    try:
        found = from_containerd(containerd_address or cri_address, timeout=timeout)
        return Names(found.source, found.containers, found.pod_names, tuple(notes))
    except ContainerdError as exc:
        notes.append(str(exc))
    return Names("none", notes=tuple(notes))

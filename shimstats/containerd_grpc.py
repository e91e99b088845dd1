"""containerd's own view of one task: ``containerd.services.tasks.v1.Tasks/Metrics`` over its gRPC socket.

containerd answers Metrics by calling the task's shim (Task/Stats) and passing the Any through untouched, so
for a runc container this is containerd's view of the same cgroup our tools read. The namespace travels in
the gRPC metadata key ``containerd-namespace``; the task is chosen with the filter ``id==<id>``. Only this
module, cri_client and kube_names use grpcio (the ttrpc side never does).
"""

from __future__ import annotations

import grpc

from shimstats import cri
from shimstats._proto.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from shimstats.fake_containerd import StatsResult

NAMESPACE_METADATA_KEY = "containerd-namespace"


class ContainerdError(RuntimeError):
    """containerd could not be asked (unreachable, error status) or did not know the task."""


def grpc_target(address: str) -> str:
    """A gRPC target for ``address``: ``unix:///path``, ``unix:/path`` or a bare socket path."""
    if address.startswith("unix:"):
        return address
    if address.startswith("/"):
        return f"unix://{address}"
    raise ContainerdError(f"containerd address {address!r}: expected unix:///path or an absolute socket path")


def rpc_error_text(exc: grpc.RpcError) -> str:
    """``CODE: details`` of a failed gRPC call (UNKNOWN when the error carries no status)."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return f"{code.name if code is not None else 'UNKNOWN'}: {details}"


def task_metrics(address: str, container_id: str, *, namespace: str, timeout: float = 5.0) -> StatsResult:
    """Tasks.Metrics for one task, decoded by type URL, with CRI's figures (like ``ctr task metrics``)."""
    request = tasks_pb2.MetricsRequest(filters=[f"id=={container_id}"])
    target = grpc_target(address)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = tasks_pb2_grpc.TasksStub(channel)
            response = stub.Metrics(request, timeout=timeout, metadata=((NAMESPACE_METADATA_KEY, namespace),))
    except grpc.RpcError as exc:
        raise ContainerdError(
            f"Tasks.Metrics at {target} (namespace {namespace}): {rpc_error_text(exc)}"
        ) from None
    for metric in response.metrics:
        if metric.id == container_id:
            metrics = cri.decode_metrics(metric.data)
            return StatsResult(
                id=container_id,
                type_url=metric.data.type_url,
                metrics=metrics,
                memory=cri.cri_memory(metrics),
            )
    raise ContainerdError(
        f"containerd at {target} has no running task {container_id!r} in namespace {namespace}"
    )

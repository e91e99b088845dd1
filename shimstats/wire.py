"""Names on the wire, in one place: the ttrpc services we serve and call, and containerd's metadata key.

Service names come from the generated descriptors (the .proto files are the only place they are written);
the guest agent's own come from guest_agent.wire. The namespace key is containerd's constant, not in any
.proto: containerd sets it on every ttrpc call to a shim.
"""

from __future__ import annotations

from guest_agent.wire import AGENT_SERVICE, DIAGNOSTICS_SERVICE, HEALTH_SERVICE, RESOURCES_SERVICE
from shimstats._proto.containerd.task.v2 import shim_pb2

__all__ = [
    "AGENT_SERVICE",
    "DIAGNOSTICS_SERVICE",
    "HEALTH_SERVICE",
    "NAMESPACE_KEY",
    "RESOURCES_SERVICE",
    "TASK_METHODS",
    "TASK_SERVICE",
]

_TASK = shim_pb2.DESCRIPTOR.services_by_name["Task"]
TASK_SERVICE: str = _TASK.full_name
"""``containerd.task.v2.Task``: the service containerd dials on a shim that printed a plain address."""
TASK_METHODS: tuple[str, ...] = tuple(method.name for method in _TASK.methods)
"""Every method of the Task service, in the .proto's order."""
NAMESPACE_KEY = "containerd-namespace-ttrpc"
"""The ttrpc metadata key that carries containerd's namespace (containerd: pkg/namespaces/ttrpc.go)."""

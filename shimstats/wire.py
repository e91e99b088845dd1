"""Names on the wire, in one place: the ttrpc services we serve and call, and containerd's metadata key.

Plain strings, so that importing them loads no protobuf (the proxy's ``start`` must stay light); the guest
agent's own come from guest_agent.wire. tests/unit/test_protos.py checks every service name against the
generated descriptors, so a name here cannot drift from its .proto file.
"""

from __future__ import annotations

from guest_agent.wire import AGENT_SERVICE, DIAGNOSTICS_SERVICE, HEALTH_SERVICE, RESOURCES_SERVICE

__all__ = [
    "AGENT_SERVICE",
    "DIAGNOSTICS_SERVICE",
    "HEALTH_SERVICE",
    "NAMESPACE_KEY",
    "RESOURCES_SERVICE",
    "TASK_METHODS",
    "TASK_SERVICE",
    "TASK_V3_SERVICE",
]

TASK_SERVICE = "containerd.task.v2.Task"
"""The service containerd dials on a shim that printed a plain address (docs/spec/metrics.md §1.1)."""
TASK_METHODS = (
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
)
"""Every method of TASK_SERVICE, in the .proto file's order (what the proxy forwards; the adapter answers
the ones it does not serve with UNIMPLEMENTED). tests/unit/test_protos.py checks them against the
generated descriptor: the proxy's serving process lists them without loading shim_pb2."""
TASK_V3_SERVICE = "containerd.task.v3.Task"
"""Same messages as v2 (docs/spec/metrics.md §1.1); a shim that answers JSON version 3 serves this name."""
NAMESPACE_KEY = "containerd-namespace-ttrpc"
"""The ttrpc metadata key that carries containerd's namespace (containerd: pkg/namespaces/ttrpc.go)."""

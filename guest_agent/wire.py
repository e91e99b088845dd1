"""The ttrpc service names our guest agent serves: written once, here.

kata-agent's ``grpc.AgentService`` and ``grpc.Health`` (protos/kata/agent.proto, health.proto) and our own
``shimstats.agent.v1`` services (protos/shimstats/agent/v1/). The host imports them from here (through
shimstats.wire). Plain strings, so that importing them loads no protobuf (the proxy's ``start`` must stay
light); tests/unit/test_protos.py checks each against the generated descriptors.
"""

from __future__ import annotations

__all__ = ["AGENT_SERVICE", "DIAGNOSTICS_SERVICE", "HEALTH_SERVICE", "RESOURCES_SERVICE"]

AGENT_SERVICE = "grpc.AgentService"
"""StatsContainer, as kata-agent serves it."""
HEALTH_SERVICE = "grpc.Health"
"""Check and Version."""
RESOURCES_SERVICE = "shimstats.agent.v1.Resources"
"""A container's limits and settings (ours only)."""
DIAGNOSTICS_SERVICE = "shimstats.agent.v1.Diagnostics"
"""The reader's read-error counts (ours only)."""

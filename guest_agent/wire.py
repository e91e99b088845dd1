"""The ttrpc service names our guest agent serves, read from the generated descriptors, not typed again.

kata-agent's ``grpc.AgentService`` and ``grpc.Health`` (protos/kata/agent.proto, health.proto) and our own
``shimstats.agent.v1`` services (protos/shimstats/agent/v1/). The host imports these from here
(shimstats.wire), so a name is written once, in the .proto file.
"""

from __future__ import annotations

from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats._proto.shimstats.agent.v1 import diagnostics_pb2, resources_pb2

AGENT_SERVICE: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
"""``grpc.AgentService``: StatsContainer, as kata-agent serves it."""
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
"""``grpc.Health``: Check and Version."""
RESOURCES_SERVICE: str = resources_pb2.DESCRIPTOR.services_by_name["Resources"].full_name
"""``shimstats.agent.v1.Resources``: a container's limits and settings (ours only)."""
DIAGNOSTICS_SERVICE: str = diagnostics_pb2.DESCRIPTOR.services_by_name["Diagnostics"].full_name
"""``shimstats.agent.v1.Diagnostics``: the reader's read-error counts (ours only)."""

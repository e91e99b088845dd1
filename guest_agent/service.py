"""The ttrpc services: ``grpc.AgentService/StatsContainer``, ``grpc.Health/{Check,Version}`` and our own
``shimstats.agent.v1.Diagnostics/ReadErrors`` (protos/shimstats/agent/v1/diagnostics.proto).

Why a service of our own for the read-error counts rather than ttrpc response metadata: ttrpc's Response
envelope has only status and payload (no metadata field, unlike Request), and the StatsContainerResponse is
kata-agent's message, which a host must read the same from either agent. A separate method costs the host
one call per scrape, and an agent without it (kata-agent) says so with an error rather than a false 0.

Statuses: a malformed request → INVALID_ARGUMENT; reading a container maps its errors as
guest_agent.statuses says (unsafe id INVALID_ARGUMENT, unknown or vanished NOT_FOUND, garbled INTERNAL).
Every other kata-agent method is answered UNIMPLEMENTED by the ttrpc server itself, since only these are
registered.

The cgroup files are read right in the event loop: a whole answer costs some 100-200 µs (guest_agent.bench)
of reads of pseudo-files that never wait for a disk. Handing it to a thread would add about as much again
(an executor round trip measured ~110 µs here) and buy no parallelism, since parsing holds the GIL. The
handlers are plain functions, so the ttrpc server answers in the callback that decoded the request, without
a task per call (no deadline can interrupt them anyway: nothing in them waits).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from guest_agent.kata import to_response
from guest_agent.lookup import ContainerLocator
from guest_agent.reader import CgroupReader
from guest_agent.resources import ResourcesService
from guest_agent.statuses import ContainerCall
from guest_agent.wire import AGENT_SERVICE, DIAGNOSTICS_SERVICE, HEALTH_SERVICE
from shimstats import __version__
from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats._proto.shimstats.agent.v1 import diagnostics_pb2
from shimstats.ttrpc import CallContext, Code, Server, TtrpcError

AGENT_VERSION = f"shimstats-agent {__version__}"


class AgentService:
    """Answers StatsContainer from a CgroupReader and a ContainerLocator; also the health service."""

    def __init__(self, reader: CgroupReader, locator: ContainerLocator) -> None:
        self.reader = reader
        self.locator = locator

    def register(self, server: Server) -> None:
        """Register both services on ``server``, and our own Resources service (guest_agent.resources)."""
        server.register(AGENT_SERVICE, {"StatsContainer": self.stats_container})
        server.register(HEALTH_SERVICE, {"Check": self.check, "Version": self.version})
        server.register(DIAGNOSTICS_SERVICE, {"ReadErrors": self.read_errors})
        ResourcesService(self.reader, self.locator).register(server)

    def stats_container(self, payload: bytes, ctx: CallContext) -> bytes:
        """grpc.AgentService/StatsContainer."""
        try:
            request = agent_pb2.StatsContainerRequest.FromString(payload)
        except DecodeError as exc:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"StatsContainerRequest does not decode: {exc}") from None
        return self.stats(request.container_id).SerializeToString()

    def stats(self, container_id: str) -> agent_pb2.StatsContainerResponse:
        """The response for one id, or TtrpcError with the status guest_agent.statuses gives."""
        with ContainerCall("StatsContainer", self.locator, container_id) as call:
            return to_response(self.reader.read(call.resolve()))

    def check(self, payload: bytes, ctx: CallContext) -> bytes:
        """grpc.Health/Check: serving whenever the process answers."""
        status = health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse(status=status).SerializeToString()

    def version(self, payload: bytes, ctx: CallContext) -> bytes:
        """grpc.Health/Version."""
        return health_pb2.VersionCheckResponse(
            grpc_version="ttrpc", agent_version=AGENT_VERSION
        ).SerializeToString()

    def read_errors(self, payload: bytes, ctx: CallContext) -> bytes:
        """shimstats.agent.v1.Diagnostics/ReadErrors: the reader's counts per kernel file name."""
        counts = self.reader.errors.snapshot()
        files = [diagnostics_pb2.FileReadErrors(file=name, count=counts[name]) for name in sorted(counts)]
        return diagnostics_pb2.ReadErrorsResponse(files=files).SerializeToString()

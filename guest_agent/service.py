"""The ttrpc services: ``grpc.AgentService/StatsContainer`` and ``grpc.Health/{Check,Version}``.

Statuses: a malformed request or an unsafe id → INVALID_ARGUMENT; an unknown id, or a cgroup that vanished
before or while it was read → NOT_FOUND naming the id (containerd skips NOT_FOUND tasks quietly); a garbled
or incomplete kernel file, or an I/O error → INTERNAL naming the file. Every other kata-agent method is
answered UNIMPLEMENTED by the ttrpc server itself, since only these are registered. Each error is one log line
carrying the id and the cgroup path.

The cgroup files are read right in the event loop: a whole answer costs some 100-200 µs (guest_agent.bench)
of reads of pseudo-files that never wait for a disk. Handing it to a thread would add about as much again
(an executor round trip measured ~110 µs here) and buy no parallelism, since parsing holds the GIL.
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError

from guest_agent.kata import to_response
from guest_agent.lookup import ContainerLocator, InvalidId, UnknownContainer
from guest_agent.parse import CgroupFormatError
from guest_agent.reader import CgroupGone, CgroupReader, IncompleteCgroup
from guest_agent.resources import ResourcesService
from shimstats import __version__
from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats.ttrpc import CallContext, Code, Server, TtrpcError

AGENT_SERVICE = "grpc.AgentService"
HEALTH_SERVICE = "grpc.Health"
AGENT_VERSION = f"shimstats-agent {__version__}"

log = logging.getLogger("guest_agent")


class AgentService:
    """Answers StatsContainer from a CgroupReader and a ContainerLocator; also the health service."""

    def __init__(self, reader: CgroupReader, locator: ContainerLocator) -> None:
        self.reader = reader
        self.locator = locator

    def register(self, server: Server) -> None:
        """Register both services on ``server``, and our own Resources service (guest_agent.resources)."""
        server.register(AGENT_SERVICE, {"StatsContainer": self.stats_container})
        server.register(HEALTH_SERVICE, {"Check": self.check, "Version": self.version})
        ResourcesService(self.reader, self.locator).register(server)

    async def stats_container(self, payload: bytes, ctx: CallContext) -> bytes:
        """grpc.AgentService/StatsContainer."""
        try:
            request = agent_pb2.StatsContainerRequest.FromString(payload)
        except DecodeError as exc:
            raise TtrpcError(Code.INVALID_ARGUMENT, f"StatsContainerRequest does not decode: {exc}") from None
        return self.stats(request.container_id).SerializeToString()

    def stats(self, container_id: str) -> agent_pb2.StatsContainerResponse:
        """The response for one id, or TtrpcError with the status described in the module docstring."""
        path = ""
        try:
            path = self.locator.resolve(container_id)
            return to_response(self.reader.read(path))
        except InvalidId as exc:
            raise self._fail(Code.INVALID_ARGUMENT, str(exc), container_id, path) from None
        except UnknownContainer as exc:
            raise self._fail(Code.NOT_FOUND, str(exc), container_id, path) from None
        except CgroupGone as exc:
            self.locator.forget(container_id)
            message = f"container {container_id!r}: {exc}"
            raise self._fail(Code.NOT_FOUND, message, container_id, path) from None
        except (CgroupFormatError, IncompleteCgroup) as exc:
            message = f"container {container_id!r}: {exc}"
            raise self._fail(Code.INTERNAL, message, container_id, path) from None
        except OSError as exc:
            message = f"container {container_id!r}: reading {exc.filename or path}: {exc.strerror or exc}"
            raise self._fail(Code.INTERNAL, message, container_id, path) from None

    @staticmethod
    def _fail(code: Code, message: str, container_id: str, path: str) -> TtrpcError:
        level = logging.ERROR if code == Code.INTERNAL else logging.WARNING
        log.log(
            level,
            "StatsContainer failed: %s",
            message,
            extra={"container_id": container_id, "cgroup_path": path, "code": code.name},
        )
        return TtrpcError(code, message)

    async def check(self, payload: bytes, ctx: CallContext) -> bytes:
        """grpc.Health/Check: serving whenever the process answers."""
        status = health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse(status=status).SerializeToString()

    async def version(self, payload: bytes, ctx: CallContext) -> bytes:
        """grpc.Health/Version."""
        return health_pb2.VersionCheckResponse(
            grpc_version="ttrpc", agent_version=AGENT_VERSION
        ).SerializeToString()

"""What can go wrong while reading one container's cgroup, as the ttrpc status each service answers.

Shared by StatsContainer and Resources/Get so both map alike: an unsafe id → INVALID_ARGUMENT; an unknown
id, or a cgroup that vanished before or while it was read → NOT_FOUND naming the id (containerd skips
NOT_FOUND tasks quietly); a garbled or missing file the working set needs, or an I/O error → INTERNAL naming
the file (any other bad file costs only its figure: guest_agent.reader, guest_agent.read_errors).
Each failure is one log line carrying the id and the cgroup path.
"""

from __future__ import annotations

import logging
from types import TracebackType

from guest_agent.lookup import ContainerLocator, InvalidId, UnknownContainer
from guest_agent.parse import CgroupFormatError
from guest_agent.reader import CgroupGone, IncompleteCgroup
from shimstats.ttrpc import Code, TtrpcError

log = logging.getLogger("guest_agent")


class ContainerCall:
    """``with ContainerCall(method, locator, id) as call: read(call.resolve())``: errors leave as statuses."""

    def __init__(self, method: str, locator: ContainerLocator, container_id: str) -> None:
        self.method = method
        self.locator = locator
        self.container_id = container_id
        self.path = ""

    def resolve(self) -> str:
        """The id's cgroup path (validated and looked up by the locator)."""
        self.path = self.locator.resolve(self.container_id)
        return self.path

    def __enter__(self) -> ContainerCall:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            return
        status = self._status(exc)
        if status is not None:
            raise status from None

    def _status(self, exc: BaseException) -> TtrpcError | None:
        where = f"container {self.container_id!r}"
        if isinstance(exc, InvalidId):
            return self._fail(Code.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, UnknownContainer):
            return self._fail(Code.NOT_FOUND, str(exc))
        if isinstance(exc, CgroupGone):
            self.locator.forget(self.container_id)
            return self._fail(Code.NOT_FOUND, f"{where}: {exc}")
        if isinstance(exc, (CgroupFormatError, IncompleteCgroup)):
            return self._fail(Code.INTERNAL, f"{where}: {exc}")
        if isinstance(exc, OSError):
            return self._fail(
                Code.INTERNAL, f"{where}: reading {exc.filename or self.path}: {exc.strerror or exc}"
            )
        return None

    def _fail(self, code: Code, message: str) -> TtrpcError:
        level = logging.ERROR if code == Code.INTERNAL else logging.WARNING
        extra = {"container_id": self.container_id, "cgroup_path": self.path, "code": code.name}
        log.log(level, "%s failed: %s", self.method, message, extra=extra)
        return TtrpcError(code, message)

"""The proxy's Stats rules, apart from the relay that applies them: the request's container id, and what
an agent failure means (the fallback policy, one warning per container and outage). Decisions only: the
caller forwards, raises or answers."""

from __future__ import annotations

import logging

from shimstats.ttrpc.status import Code, TtrpcError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from shimstats.proxy.settings import Fallback  # a type alias for type checkers only

__all__ = ["StatsFallback", "stats_request_id"]

log = logging.getLogger("shimstats.proxy")


def stats_request_id(payload: bytes) -> str:
    """The container id of a StatsRequest; INVALID_ARGUMENT when it does not decode."""
    from google.protobuf.message import DecodeError

    from shimstats._proto.containerd.task.v2 import shim_pb2  # the Task messages: on the first Stats

    try:
        return shim_pb2.StatsRequest.FromString(payload).id
    except DecodeError as exc:
        raise TtrpcError(Code.INVALID_ARGUMENT, f"StatsRequest does not decode: {exc}") from None


class StatsFallback:
    """What to do when the guest agent did not answer a container's Stats (``stats_fallback``)."""

    def __init__(self, fallback: Fallback) -> None:
        self.fallback = fallback
        self._warned: set[str] = set()
        """Containers whose Stats fell back since the agent last answered for them."""

    def forward_instead(self, container_id: str, exc: TtrpcError) -> bool:
        """True: ask the inner shim; False: ``exc`` is the answer. Only UNAVAILABLE falls back (NOT_FOUND for
        an unknown id, DEADLINE_EXCEEDED... are the agent's answer); either way it is logged."""
        if exc.code != Code.UNAVAILABLE:
            level = logging.DEBUG if exc.code == Code.NOT_FOUND else logging.WARNING
            log.log(level, "Stats failed: %s", exc.message, extra={"id": container_id, "code": exc.code.name})
            return False
        self._warn_once(container_id, exc)
        return self.fallback == "inner"

    def answered(self, container_id: str) -> None:
        """The agent answered for ``container_id``: its next outage is warned about again."""
        if container_id in self._warned:
            self._warned.discard(container_id)
            log.info("guest agent answers Stats again", extra={"id": container_id})
        log.debug("Stats answered from the guest agent", extra={"id": container_id})

    def _warn_once(self, container_id: str, exc: TtrpcError) -> None:
        """One warning per container and outage: scrapes every few seconds must not flood the log."""
        if container_id in self._warned:
            return
        self._warned.add(container_id)
        then = (
            "passing the inner shim's Stats through" if self.fallback == "inner" else "answering UNAVAILABLE"
        )
        log.warning(
            "guest agent unreachable; %s until it answers (stats_fallback = %s): %s",
            then,
            self.fallback,
            exc.message,
            extra={"id": container_id},
        )

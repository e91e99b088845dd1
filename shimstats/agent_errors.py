"""The guest agent's failures as containerd must see them, and the dial back-off: rules without I/O,
shared by the asyncio AgentClient (``agent_client.py``) and the blocking one (``agent_blocking.py``).
The statuses are described in ``agent_client``'s module doc."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from shimstats._proto.kata import agent_pb2
from shimstats.ttrpc.status import Code, TtrpcError

__all__ = [
    "KATA_UNKNOWN_CONTAINER",
    "Backoff",
    "DialHealth",
    "decode_stats",
    "map_agent_error",
    "service_unsupported",
]

log = logging.getLogger("shimstats.agent")

KATA_UNKNOWN_CONTAINER = frozenset({'"invalid container id"', "invalid container id"})
"""kata-agent's INVALID_ARGUMENT messages for an id it does not know: 2.4+ (quoted), 2.0-2.3 (bare)."""


@dataclass(frozen=True)
class Backoff:
    """Wait ``initial * factor**(n-1)`` seconds, at most ``maximum``, after the n-th failed dial in a row."""

    initial: float = 0.05
    maximum: float = 2.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError("backoff needs 0 <= initial <= maximum and factor >= 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failed dials (0 for none)."""
        if failures <= 0:
            return 0.0
        return min(self.maximum, self.initial * self.factor ** min(failures - 1, 64))


def service_unsupported(error: TtrpcError, service: str, method: str) -> bool:
    """Whether ``error`` says the agent does not serve ``service`` (our Resources or Diagnostics asked of
    kata-agent): a Go or our own ttrpc server answers UNIMPLEMENTED; ttrpc-rust answers INVALID_ARGUMENT,
    "{service} service does not exist" from its async server since 0.7 (src/asynchronous/server.rs
    handle_request), "/{service}/{method} does not exist" from the async server up to 0.6 and the sync server
    in every version (kata-agent 2.0-2.3 use ttrpc-rust 0.5). Only those exact texts: the agent's other
    INVALID_ARGUMENT answers are about the request."""
    if error.code == Code.UNIMPLEMENTED:
        return True
    missing = (f"{service} service does not exist", f"/{service}/{method} does not exist")
    return error.code == Code.INVALID_ARGUMENT and error.message in missing


def map_agent_error(error: TtrpcError, container_id: str, address: str) -> TtrpcError:
    """The status to give containerd for an agent's failure of StatsContainer(``container_id``)."""
    who = f"guest agent at {address}"
    if error.code == Code.INVALID_ARGUMENT and error.message in KATA_UNKNOWN_CONTAINER:
        return TtrpcError(
            Code.NOT_FOUND,
            f"container {container_id!r}: unknown to the {who} ({error.message})",
            error.details,
        )
    if error.code == Code.NOT_FOUND:
        message = f"container {container_id!r}: not found by the {who}: {error.message}"
    elif error.code == Code.DEADLINE_EXCEEDED:
        message = f"container {container_id!r}: no answer in time from the {who}: {error.message}"
    elif error.code == Code.UNAVAILABLE:
        message = f"container {container_id!r}: {who} unavailable: {error.message}"
    else:
        message = f"container {container_id!r}: {who}: {error.message}"
    return TtrpcError(error.code, message, error.details)


def decode_stats(raw: bytes, container_id: str, address: str) -> agent_pb2.StatsContainerResponse:
    """The agent's StatsContainer answer; INTERNAL, naming the agent, when it does not decode."""
    try:
        return agent_pb2.StatsContainerResponse.FromString(raw)
    except DecodeError as exc:
        raise TtrpcError(
            Code.INTERNAL,
            f"container {container_id!r}: the guest agent at {address} sent a "
            f"StatsContainerResponse that does not decode: {exc}",
        ) from None


class DialHealth:
    """Failed dials in a row and when the next one may be tried: while backing off a call fails at once
    (UNAVAILABLE) instead of piling up dials against a dead socket; a failure is logged once per streak."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""

    def check(self, now: float) -> None:
        """UNAVAILABLE while backing off."""
        wait = self.retry_at - now
        if wait > 0:
            raise TtrpcError(
                Code.UNAVAILABLE,
                f"{self.last_error} (after {self.failures} failed dials; next attempt in {wait:.2f}s)",
            )

    def failed(self, exc: OSError, now: float, address: str) -> TtrpcError:
        """Record a failed dial; the UNAVAILABLE error the call fails with."""
        self.failures += 1
        self.retry_at = now + self.backoff.delay(self.failures)
        self.last_error = f"cannot dial: {exc}"
        log.log(
            logging.WARNING if self.failures == 1 else logging.DEBUG,
            "guest agent unreachable: %s",
            exc,
            extra={"address": address},
        )
        return TtrpcError(Code.UNAVAILABLE, self.last_error)

    def succeeded(self, address: str) -> None:
        if self.failures:
            log.info("guest agent reachable again", extra={"address": address})
        self.failures = 0
        self.retry_at = 0.0

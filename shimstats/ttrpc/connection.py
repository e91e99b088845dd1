"""ttrpc's connection rules without I/O: frames (and the time) in, what to do out.

``framing`` turns bytes into frames; this module decides what a frame means for one connection, the way
h11's ``Connection`` does for HTTP. Nothing here reads a clock, touches a socket or knows asyncio: the time
is an argument, answers come back as bytes to send, and the asyncio layers (``server.py``, ``client.py``)
only carry them out.

Server (containerd/ttrpc server.go ``serverConn.run``, services.go ``handle``, metadata.go; our words for
them: docs/spec/ttrpc.md §3, §4.1, §5, §6):

* an even stream id is refused (INVALID_ARGUMENT) whatever the message type; Data for a stream that is not
  running is refused; other non-Request types are ignored;
* a Request must carry a larger id than every earlier one;
* while draining, new Requests get UNAVAILABLE; over the in-flight cap, RESOURCE_EXHAUSTED (ours);
* an unknown service or method gets UNIMPLEMENTED; metadata keys are folded to lower case;
* ``timeout_nano`` becomes a deadline; a call whose deadline passed before it started is answered
  DEADLINE_EXCEEDED without running;
* a response over 4 MiB is replaced by RESOURCE_EXHAUSTED on its stream (Go drops the connection instead);
  a handler's TtrpcError is its status, any other exception is UNKNOWN.

Client (containerd/ttrpc client.go ``Call`` and ``receiveLoop``; docs/spec/ttrpc.md §3, §6): ids are odd,
increase from 1 and run out at 2^32; responses are matched by stream id and a stray one is dropped; an
oversized response fails its own call; losing the connection fails every pending call with UNAVAILABLE; an
expired call gives up its own stream only, unless the connection has been stuck inside one frame for that
call's whole life.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Generic, NamedTuple, TypeVar, Union

from shimstats.ttrpc.framing import (
    MAX_MESSAGE,
    MAX_STREAM_ID,
    Event,
    Frame,
    KeyValue,
    MessageType,
    ProtocolError,
    decode_request,
    decode_response,
    encode_frame,
    encode_request,
    encode_response,
)
from shimstats.ttrpc.status import Code, Status, TtrpcError, error_from_status, make_status

__all__ = [
    "STALLED",
    "Answered",
    "ClientConnection",
    "Failed",
    "Outgoing",
    "Reply",
    "ServerConnection",
    "StartCall",
    "response_frame",
    "status_frame",
]

H = TypeVar("H")

STALLED = "stuck inside a frame that never completed while a call's deadline passed"
"""Why a client closes a connection after an expired call (``ClientConnection.stalled``)."""


def response_frame(stream_id: int, body: bytes) -> bytes:
    """A Response frame carrying an encoded Response envelope."""
    return encode_frame(stream_id, MessageType.RESPONSE, 0, body)


def status_frame(stream_id: int, status: Status) -> bytes:
    """A Response frame with no payload and ``status``: how every refusal is answered."""
    return response_frame(stream_id, encode_response(b"", status))


# -- server -------------------------------------------------------------------------------------------------


class Reply(NamedTuple):
    """Send ``data`` (one whole frame) back; nothing else happens."""

    data: bytes


class StartCall(Generic[H]):
    """Run ``handler`` for a Request that passed every rule; its stream stays active until ``call_ended``.

    A plain class with slots: a generic named tuple needs Python 3.11, and a dataclass costs its import."""

    __slots__ = ("deadline", "handler", "metadata", "method", "payload", "service", "stream_id")

    def __init__(
        self,
        stream_id: int,
        service: str,
        method: str,
        handler: H,
        payload: bytes,
        metadata: dict[str, list[str]] | None = None,
        deadline: float | None = None,  # in the clock the caller passed as ``now``
    ) -> None:
        self.stream_id = stream_id
        self.service = service
        self.method = method
        self.handler = handler
        self.payload = payload
        self.metadata: dict[str, list[str]] = {} if metadata is None else metadata
        self.deadline = deadline


class ServerConnection(Generic[H]):
    """One server connection's rules; ``services`` maps a service name to its handlers (opaque here)."""

    def __init__(self, services: Mapping[str, Mapping[str, H]], *, max_in_flight: int) -> None:
        self.services = services
        self.max_in_flight = max_in_flight
        self.active: set[int] = set()  # streams whose call has started and not yet ended
        self.last_stream_id = 0
        self.draining = False

    def receive(self, event: Event, now: float) -> StartCall[H] | Reply | None:
        """What to do with one decoded event: start a call, send a refusal, or nothing."""
        refusal = self._refusal(event)
        if refusal is not None:
            return Reply(status_frame(event.stream_id, refusal))
        if not isinstance(event, Frame) or event.mtype != MessageType.REQUEST:
            return None
        return self._start(event, now)

    def _refusal(self, event: Event) -> Status | None:
        """Everything refused before the envelope is read, in Go's order: parity, Data, id order, drain."""
        if not isinstance(event, Frame):  # OversizedFrame: the decoder skips its body
            return make_status(
                Code.RESOURCE_EXHAUSTED,
                f"message length {event.length} exceeds the maximum of {MAX_MESSAGE} bytes",
            )
        stream_id = event.stream_id
        if stream_id % 2 != 1:
            return make_status(Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
        if event.mtype == MessageType.DATA:
            if stream_id not in self.active:
                return make_status(Code.INVALID_ARGUMENT, "StreamID is no longer active")
            return None  # unary calls carry their payload in the Request; extra data is ignored
        if event.mtype != MessageType.REQUEST:
            return None  # unknown or server-only types are ignored, as Go does
        if stream_id <= self.last_stream_id:
            return make_status(Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
        self.last_stream_id = stream_id
        if self.draining:
            return make_status(Code.UNAVAILABLE, "ttrpc server is shutting down")
        if len(self.active) >= self.max_in_flight:
            return make_status(
                Code.RESOURCE_EXHAUSTED,
                f"too many requests in flight on this connection (limit {self.max_in_flight})",
            )
        return None

    def _start(self, frame: Frame, now: float) -> StartCall[H] | Reply:
        stream_id = frame.stream_id
        try:
            request = decode_request(frame.payload)
        except ProtocolError as exc:
            return Reply(status_frame(stream_id, make_status(Code.INVALID_ARGUMENT, str(exc))))
        methods = self.services.get(request.service)
        if methods is None:
            return Reply(
                status_frame(stream_id, make_status(Code.UNIMPLEMENTED, f"service {request.service}"))
            )
        handler = methods.get(request.method)
        if handler is None:
            return Reply(status_frame(stream_id, make_status(Code.UNIMPLEMENTED, f"method {request.method}")))
        metadata: dict[str, list[str]] = {}
        for pair in request.metadata:
            metadata.setdefault(pair.key.lower(), []).append(pair.value)
        timeout_nano = request.timeout_nano
        deadline = now + timeout_nano / 1e9 if timeout_nano else None
        self.active.add(stream_id)
        return StartCall(
            stream_id, request.service, request.method, handler, request.payload, metadata, deadline
        )

    def expired_at_start(self, call: StartCall[H], now: float) -> bytes | None:
        """The DEADLINE_EXCEEDED answer for a call whose deadline passed before it could start, else None."""
        if call.deadline is None or call.deadline > now:
            return None
        status = make_status(Code.DEADLINE_EXCEEDED, "the deadline had passed before the call started")
        return status_frame(call.stream_id, status)

    def answer(self, call: StartCall[H], result: bytes) -> bytes:
        """The Response frame for a handler's result; over 4 MiB it becomes RESOURCE_EXHAUSTED."""
        body = encode_response(result)
        if len(body) > MAX_MESSAGE:
            status = make_status(
                Code.RESOURCE_EXHAUSTED,
                f"response of {len(body)} bytes exceeds the maximum of {MAX_MESSAGE} bytes",
            )
            body = encode_response(b"", status)
        return response_frame(call.stream_id, body)

    def answer_error(self, call: StartCall[H], error: Exception) -> bytes:
        """The Response frame for a handler that raised: a TtrpcError's own status, anything else UNKNOWN."""
        if isinstance(error, TtrpcError):
            return status_frame(call.stream_id, error.to_status())
        return status_frame(call.stream_id, make_status(Code.UNKNOWN, str(error) or type(error).__name__))

    def answer_expired(self, call: StartCall[H]) -> bytes:
        """The Response frame for a call whose deadline passed while its handler ran."""
        message = f"{call.service}/{call.method} did not finish before the deadline"
        return status_frame(call.stream_id, make_status(Code.DEADLINE_EXCEEDED, message))

    def call_ended(self, stream_id: int) -> bool:
        """Forget a finished stream; True when the connection should now be closed (drained and idle)."""
        self.active.discard(stream_id)
        return self.draining and not self.active

    def drain(self) -> bool:
        """Refuse new Requests from now on; True when nothing runs, so the connection can close at once."""
        self.draining = True
        return not self.active


# -- client -------------------------------------------------------------------------------------------------


class Outgoing(NamedTuple):
    """A Request ready to send: ``data`` is the whole frame for ``stream_id``."""

    stream_id: int
    data: bytes


class Answered(NamedTuple):
    """The Response payload (an encoded envelope) for a pending call; ``result`` decodes it."""

    stream_id: int
    payload: bytes


class Failed(NamedTuple):
    """A pending call that can get no answer."""

    stream_id: int
    error: TtrpcError


CallOutcome = Union[Answered, Failed]


class ClientConnection:
    """One client connection's rules. ``peer`` names the server in every message (its address)."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.next_id = 1
        self.pending: set[int] = set()
        self.frames = 0  # whole frames received: progress of the byte stream, for the stall rule
        self.error: TtrpcError | None = None  # set once the connection is closed or lost

    def encode(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None,
        metadata: Iterable[KeyValue],
    ) -> bytes:
        """The Request envelope; a timeout that is not positive fails the call before anything is sent."""
        timeout_nano = 0
        if timeout is not None:
            if timeout <= 0:
                raise TtrpcError(
                    Code.DEADLINE_EXCEEDED, f"{service}/{method}: timeout {timeout:g}s is not positive"
                )
            timeout_nano = int(timeout * 1e9)
        return encode_request(service, method, payload, timeout_nano=timeout_nano, metadata=metadata)

    def send(self, request: bytes) -> Outgoing:
        """Take the next stream id for an encoded Request: ids must reach the wire in this order."""
        if self.error is not None:
            raise TtrpcError(self.error.code, self.error.message)
        stream_id = self.next_id
        if stream_id > MAX_STREAM_ID:
            raise TtrpcError(Code.RESOURCE_EXHAUSTED, f"{self.peer}: stream ids used up")
        data = encode_frame(stream_id, MessageType.REQUEST, 0, request)
        self.next_id = stream_id + 2
        self.pending.add(stream_id)
        return Outgoing(stream_id, data)

    def receive(self, event: Event) -> CallOutcome | None:
        """The call an incoming event settles, or None (a stray response, Data, an unknown type)."""
        if isinstance(event, Frame):
            self.frames += 1
            if event.mtype == MessageType.RESPONSE and event.stream_id in self.pending:
                self.pending.discard(event.stream_id)
                return Answered(event.stream_id, event.payload)
            return None  # Data or unknown types: unary calls have no use for them
        if event.stream_id not in self.pending:
            return None
        self.pending.discard(event.stream_id)
        error = TtrpcError(
            Code.RESOURCE_EXHAUSTED, f"{self.peer}: response of {event.length} bytes is over the ttrpc limit"
        )
        return Failed(event.stream_id, error)

    def result(self, service: str, method: str, payload: bytes) -> bytes:
        """The method's payload from an Answered envelope, or the TtrpcError its status (or junk) means."""
        try:
            response = decode_response(payload)
        except ProtocolError as exc:
            raise TtrpcError(Code.INTERNAL, f"{service}/{method} from {self.peer}: {exc}") from None
        error = error_from_status(response.status)
        if error is not None:
            raise error
        return response.payload

    def expired_text(self, service: str, method: str, timeout: float) -> str:
        """What a call that got no answer within ``timeout`` seconds says."""
        return f"{service}/{method}: no answer from {self.peer} within {timeout:g}s"

    def give_up(self, stream_id: int) -> None:
        """Forget a call that stopped waiting: a late answer for it will be dropped as stray."""
        self.pending.discard(stream_id)

    def stalled(self, frames_at_send: int, *, mid_frame: bool) -> bool:
        """After a call expired: True (and the connection counts as closed) when no frame has arrived since
        that call was sent and the decoder is inside one, so no later answer could get through either."""
        if self.error is not None or self.frames != frames_at_send or not mid_frame:
            return False
        self.error = TtrpcError(Code.UNAVAILABLE, f"ttrpc connection to {self.peer} closed: {STALLED}")
        return True

    def close(self) -> None:
        """The client hangs up: later calls fail with UNAVAILABLE."""
        if self.error is None:
            self.error = TtrpcError(Code.UNAVAILABLE, f"ttrpc connection to {self.peer} closed by the client")

    def lost(self, reason: BaseException | None) -> list[Failed]:
        """The connection is gone (``reason`` None: the server closed it): every pending call fails."""
        if self.error is None:
            why = (
                "the server closed the connection" if reason is None else str(reason) or type(reason).__name__
            )
            self.error = TtrpcError(Code.UNAVAILABLE, f"ttrpc connection to {self.peer} lost: {why}")
        error = self.error
        pending, self.pending = self.pending, set()
        return [Failed(stream_id, TtrpcError(error.code, error.message)) for stream_id in sorted(pending)]

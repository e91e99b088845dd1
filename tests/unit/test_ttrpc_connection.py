"""ttrpc's connection rules with no socket: a ClientConnection and a ServerConnection joined by byte strings.

Like h11's ``ConnectionPair``: what one side sends is decoded by a FrameDecoder and handed to the other,
with the time passed in. The socket tests (tests/integration/test_ttrpc_socket.py, test_hostile_*.py,
test_agent_deadlines.py) keep checking that the asyncio layers carry these decisions out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shimstats._proto.ttrpc.request_pb2 import KeyValue
from shimstats.ttrpc.connection import (
    Answered,
    ClientConnection,
    Failed,
    Reply,
    ServerConnection,
    StartCall,
)
from shimstats.ttrpc.framing import (
    HEADER_LEN,
    MAX_MESSAGE,
    MAX_STREAM_ID,
    Frame,
    FrameDecoder,
    MessageType,
    OversizedFrame,
    decode_response,
    encode_frame,
    encode_request,
)
from shimstats.ttrpc.status import Code, TtrpcError

SERVICE = "test.v1.Echo"
PEER = "unix:///run/test.sock"


def handler(name: str) -> str:
    return f"handler {name}"


@dataclass
class Pair:
    """One client and one server connection; bytes between them go through real frame decoders."""

    client: ClientConnection = field(default_factory=lambda: ClientConnection(PEER))
    server: ServerConnection[str] = field(
        default_factory=lambda: ServerConnection({SERVICE: {"Echo": handler("Echo")}}, max_in_flight=4)
    )
    to_server: FrameDecoder = field(default_factory=FrameDecoder)
    to_client: FrameDecoder = field(default_factory=FrameDecoder)

    def server_gets(self, data: bytes, now: float = 100.0) -> list[StartCall[str] | Reply | None]:
        return [self.server.receive(event, now) for event in self.to_server.feed(data)]

    def client_gets(self, data: bytes) -> list[Answered | Failed | None]:
        return [self.client.receive(event) for event in self.to_client.feed(data)]

    def request(self, payload: bytes = b"hi", **kwargs: object) -> bytes:
        timeout = kwargs.pop("timeout", None)
        metadata = kwargs.pop("metadata", ())
        assert not kwargs
        request = self.client.encode(
            SERVICE,
            "Echo",
            payload,
            timeout=timeout,  # type: ignore[arg-type]
            metadata=metadata,  # type: ignore[arg-type]
        )
        return self.client.send(request).data


def status_of(reply: object) -> tuple[int, int, str]:
    """(stream id, code, message) of a Reply that carries one Response frame."""
    assert isinstance(reply, Reply)
    (frame,) = FrameDecoder().feed(reply.data)
    assert isinstance(frame, Frame)
    assert frame.mtype == MessageType.RESPONSE
    status = decode_response(frame.payload).status
    assert status is not None
    return frame.stream_id, status.code, status.message


def raw(stream_id: int, mtype: int = MessageType.REQUEST, payload: bytes | None = None) -> bytes:
    body = encode_request(SERVICE, "Echo", b"x") if payload is None else payload
    return encode_frame(stream_id, mtype, 0, body)


# -- a whole call -------------------------------------------------------------------------------------------


def test_a_call_goes_through_and_its_answer_reaches_the_caller() -> None:
    pair = Pair()
    (start,) = pair.server_gets(pair.request(b"ping"))
    assert isinstance(start, StartCall)
    assert (start.stream_id, start.service, start.method, start.payload) == (1, SERVICE, "Echo", b"ping")
    assert start.handler == "handler Echo"
    (outcome,) = pair.client_gets(pair.server.answer(start, b"pong"))
    assert isinstance(outcome, Answered)
    assert outcome.stream_id == 1
    assert pair.client.result(SERVICE, "Echo", outcome.payload) == b"pong"
    assert pair.server.call_ended(1) is False
    assert pair.client.pending == set()
    assert pair.server.active == set()


def test_request_bytes_are_ttrpc_frames_with_odd_increasing_ids() -> None:
    pair = Pair()
    body = encode_request(SERVICE, "Echo", b"x")
    sent = [pair.client.send(body) for _ in range(3)]
    assert [o.stream_id for o in sent] == [1, 3, 5]
    for outgoing in sent:
        assert outgoing.data[:HEADER_LEN] == struct.pack(">IIBB", len(body), outgoing.stream_id, 1, 0)
        assert outgoing.data[HEADER_LEN:] == body


def test_stream_ids_run_out_at_two_to_the_32() -> None:
    client = ClientConnection(PEER)
    client.next_id = MAX_STREAM_ID
    assert client.send(b"").stream_id == MAX_STREAM_ID
    with pytest.raises(TtrpcError) as caught:
        client.send(b"")
    assert caught.value.code == Code.RESOURCE_EXHAUSTED
    assert caught.value.message == f"{PEER}: stream ids used up"


# -- server: stream ids and message types --------------------------------------------------------------------


@pytest.mark.parametrize("mtype", [MessageType.REQUEST, MessageType.DATA, MessageType.RESPONSE, 9])
def test_an_even_stream_id_is_refused_for_every_message_type(mtype: int) -> None:
    (reply,) = Pair().server_gets(raw(2, mtype))
    assert status_of(reply) == (2, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")


def test_data_is_refused_on_an_inactive_stream_and_ignored_on_an_active_one() -> None:
    pair = Pair()
    (reply,) = pair.server_gets(raw(1, MessageType.DATA, b"more"))
    assert status_of(reply) == (1, Code.INVALID_ARGUMENT, "StreamID is no longer active")
    (start,) = pair.server_gets(raw(3))
    assert isinstance(start, StartCall)
    assert pair.server_gets(raw(3, MessageType.DATA, b"more")) == [None]
    pair.server.call_ended(3)
    (reply,) = pair.server_gets(raw(3, MessageType.DATA, b"more"))
    assert status_of(reply)[1:] == (Code.INVALID_ARGUMENT, "StreamID is no longer active")


def test_responses_and_unknown_types_from_a_client_are_ignored() -> None:
    assert Pair().server_gets(raw(1, MessageType.RESPONSE) + raw(3, 7)) == [None, None]


def test_a_stream_id_cannot_be_reused_or_go_down() -> None:
    pair = Pair()
    assert isinstance(pair.server_gets(raw(5))[0], StartCall)
    for stream_id in (5, 3):
        (reply,) = pair.server_gets(raw(stream_id))
        assert status_of(reply) == (
            stream_id,
            Code.INVALID_ARGUMENT,
            "StreamID cannot be re-used and must increment",
        )
    assert isinstance(pair.server_gets(raw(7))[0], StartCall)


def test_an_oversized_frame_is_answered_on_its_stream_and_the_next_frame_is_read() -> None:
    pair = Pair()
    header = struct.pack(">IIBB", MAX_MESSAGE + 1, 7, MessageType.REQUEST, 0)
    replies = pair.server_gets(header + b"\0" * (MAX_MESSAGE + 1) + raw(9))
    assert status_of(replies[0]) == (
        7,
        Code.RESOURCE_EXHAUSTED,
        f"message length {MAX_MESSAGE + 1} exceeds the maximum of {MAX_MESSAGE} bytes",
    )
    assert isinstance(replies[1], StartCall)
    assert replies[1].stream_id == 9


# -- server: admission ---------------------------------------------------------------------------------------


def test_the_in_flight_cap_refuses_and_frees_a_place_when_a_call_ends() -> None:
    pair = Pair()
    for stream_id in (1, 3, 5, 7):
        assert isinstance(pair.server_gets(raw(stream_id))[0], StartCall)
    (reply,) = pair.server_gets(raw(9))
    assert status_of(reply) == (
        9,
        Code.RESOURCE_EXHAUSTED,
        "too many requests in flight on this connection (limit 4)",
    )
    pair.server.call_ended(3)
    assert isinstance(pair.server_gets(raw(11))[0], StartCall)


def test_draining_refuses_new_calls_and_says_when_to_hang_up() -> None:
    pair = Pair()
    assert isinstance(pair.server_gets(raw(1))[0], StartCall)
    assert pair.server.drain() is False  # a call still runs
    (reply,) = pair.server_gets(raw(3))
    assert status_of(reply) == (3, Code.UNAVAILABLE, "ttrpc server is shutting down")
    (reply,) = pair.server_gets(raw(3))  # the refused id still counts as used
    assert status_of(reply)[1] == Code.INVALID_ARGUMENT
    assert pair.server.call_ended(1) is True
    assert ServerConnection({}, max_in_flight=1).drain() is True


@pytest.mark.parametrize(
    ("service", "method", "message"),
    [("test.v1.Nope", "Echo", "service test.v1.Nope"), (SERVICE, "Nope", "method Nope")],
)
def test_an_unknown_service_or_method_is_unimplemented(service: str, method: str, message: str) -> None:
    (reply,) = Pair().server_gets(raw(1, payload=encode_request(service, method, b"")))
    assert status_of(reply) == (1, Code.UNIMPLEMENTED, message)


def test_an_undecodable_envelope_is_an_invalid_argument() -> None:
    (reply,) = Pair().server_gets(raw(1, payload=b"\xff\xff\xff"))
    stream_id, code, message = status_of(reply)
    assert (stream_id, code) == (1, Code.INVALID_ARGUMENT)
    assert message.startswith("undecodable request envelope (3 bytes)")


def test_metadata_keys_are_folded_to_lower_case_and_repeats_kept_in_order() -> None:
    pair = Pair()
    metadata = [KeyValue(key="Containerd-Namespace", value="k8s.io"), KeyValue(key="X", value="1")]
    metadata.append(KeyValue(key="x", value="2"))
    (start,) = pair.server_gets(pair.request(metadata=metadata))
    assert isinstance(start, StartCall)
    assert start.metadata == {"containerd-namespace": ["k8s.io"], "x": ["1", "2"]}


# -- server: deadlines and answers ---------------------------------------------------------------------------


def test_a_timeout_becomes_a_deadline_on_the_clock_given() -> None:
    pair = Pair()
    (start,) = pair.server_gets(pair.request(timeout=1.5), now=1000.0)
    assert isinstance(start, StartCall)
    assert start.deadline == 1001.5
    assert pair.server.expired_at_start(start, 1001.0) is None
    late = pair.server.expired_at_start(start, 1001.5)
    assert late is not None
    assert status_of(Reply(late)) == (
        1,
        Code.DEADLINE_EXCEEDED,
        "the deadline had passed before the call started",
    )
    (unbounded,) = pair.server_gets(pair.request())
    assert isinstance(unbounded, StartCall)
    assert unbounded.deadline is None
    assert pair.server.expired_at_start(unbounded, 1e12) is None


def test_an_expired_handler_is_answered_deadline_exceeded() -> None:
    pair = Pair()
    (start,) = pair.server_gets(raw(1))
    assert isinstance(start, StartCall)
    assert status_of(Reply(pair.server.answer_expired(start))) == (
        1,
        Code.DEADLINE_EXCEEDED,
        f"{SERVICE}/Echo did not finish before the deadline",
    )


def test_a_response_over_4_mib_becomes_resource_exhausted() -> None:
    pair = Pair()
    (start,) = pair.server_gets(raw(1))
    assert isinstance(start, StartCall)
    fits = pair.server.answer(start, b"y" * (MAX_MESSAGE - 8))
    assert decode_response(fits[HEADER_LEN:]).payload == b"y" * (MAX_MESSAGE - 8)
    stream_id, code, message = status_of(Reply(pair.server.answer(start, b"y" * MAX_MESSAGE)))
    assert (stream_id, code) == (1, Code.RESOURCE_EXHAUSTED)
    assert message.endswith(f"bytes exceeds the maximum of {MAX_MESSAGE} bytes")


def test_handler_errors_keep_their_status_and_anything_else_is_unknown() -> None:
    pair = Pair()
    (start,) = pair.server_gets(raw(1))
    assert isinstance(start, StartCall)
    own = TtrpcError(Code.NOT_FOUND, "no such container")
    assert status_of(Reply(pair.server.answer_error(start, own))) == (1, Code.NOT_FOUND, "no such container")
    assert status_of(Reply(pair.server.answer_error(start, ValueError("boom")))) == (1, Code.UNKNOWN, "boom")
    assert status_of(Reply(pair.server.answer_error(start, KeyError()))) == (1, Code.UNKNOWN, "KeyError")


# -- client --------------------------------------------------------------------------------------------------


def test_a_stray_response_is_dropped_and_a_late_one_too() -> None:
    pair = Pair()
    pair.request()
    pair.request()
    assert pair.client_gets(encode_frame(7, MessageType.RESPONSE, 0, b"")) == [None]
    pair.client.give_up(3)
    assert pair.client_gets(encode_frame(3, MessageType.RESPONSE, 0, b"")) == [None]
    assert pair.client_gets(encode_frame(1, MessageType.DATA, 0, b"")) == [None]
    assert pair.client.pending == {1}
    assert pair.client.frames == 3


def test_an_oversized_response_fails_its_own_call_only() -> None:
    pair = Pair()
    pair.request()
    pair.request()
    header = struct.pack(">IIBB", MAX_MESSAGE + 1, 3, MessageType.RESPONSE, 0)
    (outcome,) = pair.client_gets(header)
    assert isinstance(outcome, Failed)
    assert outcome.stream_id == 3
    assert outcome.error.code == Code.RESOURCE_EXHAUSTED
    assert outcome.error.message == f"{PEER}: response of {MAX_MESSAGE + 1} bytes is over the ttrpc limit"
    assert pair.client.pending == {1}
    assert pair.client.error is None
    assert pair.client.receive(OversizedFrame(99, MessageType.RESPONSE, MAX_MESSAGE + 1)) is None


def test_answers_carry_statuses_and_junk_is_internal() -> None:
    client = ClientConnection(PEER)
    call = StartCall(1, SERVICE, "Echo", "handler", b"")
    refused = Pair().server.answer_error(call, TtrpcError(Code.NOT_FOUND, "gone"))
    with pytest.raises(TtrpcError) as caught:
        client.result(SERVICE, "Echo", refused[HEADER_LEN:])
    assert (caught.value.code, caught.value.message) == (Code.NOT_FOUND, "gone")
    with pytest.raises(TtrpcError) as caught:
        client.result(SERVICE, "Echo", b"\xff\xff")
    assert caught.value.code == Code.INTERNAL
    assert caught.value.message.startswith(f"{SERVICE}/Echo from {PEER}: undecodable response envelope")


def test_a_timeout_that_is_not_positive_fails_before_sending() -> None:
    client = ClientConnection(PEER)
    for timeout in (0, -1.0):
        with pytest.raises(TtrpcError) as caught:
            client.encode(SERVICE, "Echo", b"", timeout=timeout, metadata=())
        assert caught.value.code == Code.DEADLINE_EXCEEDED
    assert client.next_id == 1
    assert client.pending == set()


def test_losing_the_connection_fails_every_pending_call_and_every_later_one() -> None:
    pair = Pair()
    for _ in range(3):
        pair.request()
    pair.client_gets(encode_frame(3, MessageType.RESPONSE, 0, b""))
    failures = pair.client.lost(None)
    assert [f.stream_id for f in failures] == [1, 5]
    expected = f"ttrpc connection to {PEER} lost: the server closed the connection"
    assert {(f.error.code, f.error.message) for f in failures} == {(Code.UNAVAILABLE, expected)}
    with pytest.raises(TtrpcError) as caught:
        pair.request()
    assert (caught.value.code, caught.value.message) == (Code.UNAVAILABLE, expected)
    assert pair.client.lost(OSError("again")) == []


def test_a_lost_connection_names_its_reason_and_a_client_close_wins() -> None:
    client = ClientConnection(PEER)
    client.send(b"")
    (failure,) = client.lost(ConnectionResetError())
    assert failure.error.message == f"ttrpc connection to {PEER} lost: ConnectionResetError"
    closed = ClientConnection(PEER)
    closed.send(b"")
    closed.close()
    (failure,) = closed.lost(None)
    assert failure.error.message == f"ttrpc connection to {PEER} closed by the client"


def test_an_expired_call_closes_the_connection_only_if_stuck_inside_one_frame() -> None:
    pair = Pair()
    pair.request()
    at_send = pair.client.frames
    assert pair.client.stalled(at_send, mid_frame=False) is False  # quiet, not broken: only the call goes
    pair.client_gets(encode_frame(9, MessageType.RESPONSE, 0, b""))
    assert pair.client.stalled(at_send, mid_frame=True) is False  # a frame arrived since: the stream moves
    assert pair.client.error is None
    assert pair.client.stalled(pair.client.frames, mid_frame=True) is True
    assert pair.client.error is not None
    assert pair.client.error.code == Code.UNAVAILABLE
    assert pair.client.stalled(pair.client.frames, mid_frame=True) is False  # already closed


def test_refusals_reach_the_client_as_errors() -> None:
    pair = Pair()
    request = encode_request("test.v1.Nope", "Echo", b"")
    (reply,) = pair.server_gets(pair.client.send(request).data)
    assert isinstance(reply, Reply)
    (outcome,) = pair.client_gets(reply.data)
    assert isinstance(outcome, Answered)
    with pytest.raises(TtrpcError) as caught:
        pair.client.result("test.v1.Nope", "Echo", outcome.payload)
    assert (caught.value.code, caught.value.message) == (Code.UNIMPLEMENTED, "service test.v1.Nope")


# -- any input -----------------------------------------------------------------------------------------------


frames = st.builds(
    lambda stream_id, mtype, body: encode_frame(stream_id, mtype, 0, body),
    st.integers(0, 12),
    st.sampled_from([MessageType.REQUEST, MessageType.DATA, MessageType.RESPONSE, 0, 9]),
    st.one_of(
        st.binary(max_size=40),
        st.builds(
            lambda m, t: encode_request(SERVICE, m, b"", timeout_nano=t),
            st.sampled_from(["Echo", "X"]),
            st.integers(0, 10**10),
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(frames, st.booleans()), max_size=30))
def test_any_frames_get_a_start_a_well_formed_refusal_or_nothing(script: list[tuple[bytes, bool]]) -> None:
    """Whatever a client sends: one decision per frame, refusals are decodable Responses on the frame's own
    stream, only odd ids that went up start calls, and the in-flight cap holds."""
    pair = Pair()
    started: list[int] = []
    for data, end_oldest in script:
        (event,) = pair.to_server.feed(data)
        action = pair.server.receive(event, 0.0)
        if isinstance(action, StartCall):
            assert action.stream_id % 2 == 1
            assert not started or action.stream_id > max(started)
            started.append(action.stream_id)
        elif isinstance(action, Reply):
            stream_id, code, _ = status_of(action)
            assert stream_id == event.stream_id
            assert code != Code.OK
        assert len(pair.server.active) <= pair.server.max_in_flight
        if end_oldest and pair.server.active:
            pair.server.call_ended(min(pair.server.active))

"""The ttrpc envelope decoders, a live server fed random frame sequences, and random agent replies.

(The frame decoder's own fuzz tests, any bytes in any chunks, live in test_ttrpc_framing.py.)
- Envelopes: any bytes, and valid envelopes with bytes flipped or cut, decode or raise ProtocolError.
- Server: a sequence of whole frames with random stream ids, types, flags and payloads, written to a real
  unix socket, never costs the connection: a well-formed call afterwards is answered, and every answer the
  server sent is for a stream id the client used.
- Agent replies: a StatsContainerResponse with random values in every field translates to v1 and v2
  Metrics, or fails with ValueError (the adapter's INTERNAL), never anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shimstats import cri
from shimstats._proto.kata import agent_pb2
from shimstats.translate import translate
from shimstats.ttrpc import CallContext, Frame, Server
from shimstats.ttrpc.framing import (
    FrameDecoder,
    MessageType,
    ProtocolError,
    decode_request,
    decode_response,
    encode_frame,
    encode_request,
    encode_response,
)
from shimstats.ttrpc.status import error_from_status, make_status

BUDGET = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID_ENVELOPES = [
    encode_request("containerd.task.v2.Task", "Stats", b"\n\x02c1", timeout_nano=5_000_000_000),
    encode_response(b"\x0a\x20" + bytes(32)),
    encode_response(b"", make_status(5, "container 'x': no cgroup found")),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_ENVELOPES)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@BUDGET
@given(data=st.one_of(st.binary(max_size=200), mutated()))
def test_envelopes_decode_or_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        request = decode_request(data)  # a decoded envelope is a usable message
        assert (
            decode_request(encode_request(*request[:3], timeout_nano=request[3], metadata=request[4]))
            == request
        )
    with contextlib.suppress(ProtocolError):
        error_from_status(decode_response(data).status)  # and its status reads as OK or an error


# -- a live server under random frames -----------------------------------------------------------------------

FRAMES = st.lists(
    st.tuples(
        st.integers(0, 2000),  # stream id: odd and even, new and reused
        st.integers(0, 255),  # message type: Request, Response, Data, unknown
        st.integers(0, 255),  # flags
        st.one_of(st.binary(max_size=64), st.sampled_from(VALID_ENVELOPES), mutated()),
    ),
    max_size=25,
)


async def _echo(payload: bytes, ctx: CallContext) -> bytes:
    return b"echo:" + payload


async def _read_until(reader: asyncio.StreamReader, stream_id: int) -> list[Frame]:
    """Every frame the server sends, up to and including the one for ``stream_id``."""
    decoder = FrameDecoder()
    answered: list[Frame] = []
    while not any(f.stream_id == stream_id for f in answered):
        data = await reader.read(65536)
        assert data, "the server closed a connection that only sent whole frames"
        answered += [e for e in decoder.feed(data) if isinstance(e, Frame)]
    return answered


async def _server_survives(frames: list[tuple[int, int, int, bytes]]) -> None:
    directory = tempfile.mkdtemp(prefix="ss-fz-", dir="/tmp")
    server = Server()
    server.register("fuzz.Echo", {"Echo": _echo})
    try:
        await server.start(f"unix://{directory}/s.sock")
        reader, writer = await asyncio.open_unix_connection(f"{directory}/s.sock")
        writer.write(b"".join(encode_frame(*frame) for frame in frames))
        final = max([sid for sid, *_ in frames] + [0]) + 1
        final += 1 - final % 2  # the next odd id above everything used
        request = encode_request("fuzz.Echo", "Echo", b"last", timeout_nano=2_000_000_000)
        writer.write(encode_frame(final, MessageType.REQUEST, 0, request))
        answered = await asyncio.wait_for(_read_until(reader, final), 5)
        used = {sid for sid, *_ in frames} | {final}
        assert all(f.stream_id in used and f.mtype == MessageType.RESPONSE for f in answered)
        last = decode_response(next(f for f in answered if f.stream_id == final).payload)
        assert error_from_status(last.status) is None
        assert last.payload == b"echo:last"
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    finally:
        await server.close(grace=0.5)
        shutil.rmtree(directory, ignore_errors=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=FRAMES)
def test_random_frame_sequences_never_cost_the_connection(frames: list[tuple[int, int, int, bytes]]) -> None:
    asyncio.run(_server_survives(frames))


# -- random agent replies through the translation core -------------------------------------------------------

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_UINT64: st.one_of(
        st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1])
    ),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: st.one_of(
        st.text(max_size=12),
        st.sampled_from(["cache", "total_inactive_file", "inactive_file", "anon", "file"]),
    ),
}


def _repeated(field: FieldDescriptor) -> bool:
    # protobuf 5 has ``label``; its type stubs only know the newer ``is_repeated``.
    return bool(getattr(field, "label", None) == FieldDescriptor.LABEL_REPEATED)


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return messages(field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values])
    return _SCALARS.get(field.type, st.nothing())


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with a random subset of fields set to random values (maps and lists too)."""
    if depth > 4:
        return st.builds(lambda: _instance(descriptor))

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = _instance(descriptor)
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field, value_field = (
                    field.message_type.fields_by_name["key"],
                    field.message_type.fields_by_name["value"],
                )
                entries = draw(
                    st.dictionaries(
                        _field_values(key_field, depth), _field_values(value_field, depth), max_size=8
                    )
                )
                target = getattr(message, field.name)
                for key, value in entries.items():
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        target[key].CopyFrom(value)
                    else:
                        target[key] = value
            elif _repeated(field):
                values = draw(st.lists(_field_values(field, depth), max_size=4))
                getattr(message, field.name).extend(values)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(draw(_field_values(field, depth)))
            else:
                setattr(message, field.name, draw(_field_values(field, depth)))
        return message

    return build()


def _instance(descriptor: Descriptor) -> Message:
    return message_factory.GetMessageClass(descriptor)()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=messages(agent_pb2.StatsContainerResponse.DESCRIPTOR))  # type: ignore[arg-type]
def test_any_agent_reply_translates_or_is_a_value_error(reply: Message) -> None:
    assert isinstance(reply, agent_pb2.StatsContainerResponse)
    wire = agent_pb2.StatsContainerResponse.FromString(reply.SerializeToString())
    for output in ("v1", "v2"):
        try:
            metrics = translate(wire, output)
        except ValueError:
            continue
        decoded = cri.decode_metrics(cri.encode_metrics(metrics))  # what containerd gets decodes
        memory = cri.cri_memory(decoded)
        if memory is not None:
            assert memory.working_set_bytes <= memory.usage_bytes

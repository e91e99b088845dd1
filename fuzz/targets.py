"""The fuzz targets: each takes one input (bytes) and raises only if it found a bug.

Shared with CI: tests/unit/test_fuzz_targets.py runs every target on its seeds (``seeds``), so the harnesses
cannot rot between long runs. Each target checks the same contract as the hypothesis tests do, driven by
coverage-guided bytes instead:
- frames: the frame decoder gives the same events however the bytes are split, and only ProtocolError at EOF;
- envelopes: Request/Response envelopes and the payloads our servers decode (StatsRequest,
  StatsContainerRequest) decode or fail with their documented error;
- parsers: every cgroup file parser returns or raises CgroupFormatError naming the file;
- agent_reply: any bytes an agent could send as a StatsContainerResponse translate to v1 and v2 Metrics or
  fail with ValueError (the adapter's INTERNAL), and what containerd would decode stays within its formulas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from google.protobuf.message import DecodeError

from guest_agent.parse import (
    CgroupFormatError,
    parse_blkio,
    parse_flat_keyed,
    parse_int_list,
    parse_meminfo,
    parse_nested_keyed,
    parse_single,
)
from guest_agent.resources import parse_cpu_list, parse_setting
from shimstats import cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from shimstats.translate import translate
from shimstats.ttrpc.framing import FrameDecoder, ProtocolError, decode_request, decode_response
from shimstats.ttrpc.status import error_from_status

__all__ = ["TARGETS"]

Target = Callable[[bytes], None]


def frames(data: bytes) -> None:
    """The first byte picks where to split; the rest is the stream."""
    if not data:
        return
    cut = data[0] % (len(data))
    stream = data[1:]
    whole, split = FrameDecoder(), FrameDecoder()
    expected = whole.feed(stream)
    got = split.feed(stream[:cut]) + split.feed(stream[cut:])
    if got != expected or split.pending != whole.pending:
        raise AssertionError(f"chunking changed the events: {got!r} != {expected!r}")
    try:
        split.eof()
    except ProtocolError:
        if split.pending == 0:
            raise


def envelopes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_request(data)
    with contextlib.suppress(ProtocolError):
        error_from_status(decode_response(data).status)
    for parse in (shim_pb2.StatsRequest.FromString, agent_pb2.StatsContainerRequest.FromString):
        with contextlib.suppress(DecodeError):
            parse(data)


_PARSERS: tuple[Callable[[str, str], object], ...] = (
    parse_flat_keyed,
    parse_single,
    parse_int_list,
    parse_blkio,
    parse_nested_keyed,
    parse_meminfo,
    parse_cpu_list,
    lambda text, source: parse_setting("cpu.max", 2, text, source),
)


def parsers(data: bytes) -> None:
    """The first byte picks the parser; the rest, as Latin-1 (every byte a character), is the file."""
    if not data:
        return
    parser = _PARSERS[data[0] % len(_PARSERS)]
    try:
        parser(data[1:].decode("latin-1"), "fuzzed.file")
    except CgroupFormatError as exc:
        if not str(exc).startswith("fuzzed.file"):
            raise AssertionError(f"an error that does not name the file: {exc}") from None


def agent_reply(data: bytes) -> None:
    try:
        reply = agent_pb2.StatsContainerResponse.FromString(data)
    except DecodeError:
        return
    for output in ("v1", "v2"):
        try:
            metrics = translate(reply, output)
        except ValueError:
            continue
        memory = cri.cri_memory(cri.decode_metrics(cri.encode_metrics(metrics)))
        if memory is not None and memory.working_set_bytes > memory.usage_bytes:
            raise AssertionError(f"working set above usage: {memory}")


TARGETS: dict[str, Target] = {
    "frames": frames,
    "envelopes": envelopes,
    "parsers": parsers,
    "agent_reply": agent_reply,
}


def seeds(name: str) -> Iterator[bytes]:
    """Starting inputs for ``name``: real files and real messages (written to a corpus by fuzz.run)."""
    from fuzz.seeds import SEEDS

    yield from SEEDS[name]()

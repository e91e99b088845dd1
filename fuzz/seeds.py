"""Seed inputs for every fuzz target, made from the captured kernel trees and real messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from shimstats.ttrpc.framing import MessageType, encode_frame, encode_request, encode_response
from shimstats.ttrpc.status import make_status

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cgroupfs"

# File names per parser, in fuzz.targets._PARSERS order (the first byte of a parsers input picks the parser).
_PARSER_FILES = (
    ("memory.stat", "cpu.stat", "memory.events", "cpuacct.stat"),
    ("memory.current", "memory.max", "pids.max", "memory.usage_in_bytes"),
    ("cpuacct.usage_percpu",),
    ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced"),
    ("io.stat",),
    ("meminfo",),
    ("cpuset.cpus.effective", "cpuset.cpus"),
    ("cpu.max",),
)


def _stats_request() -> bytes:
    return encode_request(
        "containerd.task.v2.Task",
        "Stats",
        shim_pb2.StatsRequest(id="c1").SerializeToString(),
        timeout_nano=5_000_000_000,
    )


def _envelopes() -> Iterator[bytes]:
    yield _stats_request()
    yield encode_response(b"\x0a\x03abc")
    yield encode_response(b"", make_status(5, "not found"))
    yield agent_pb2.StatsContainerRequest(container_id="c1").SerializeToString()


def _frames() -> Iterator[bytes]:
    for cut in (0, 5, 12, 40):
        stream = encode_frame(1, MessageType.REQUEST, 0, _stats_request())
        yield bytes([cut]) + stream + encode_frame(3, MessageType.DATA, 1, b"x")


def _parsers() -> Iterator[bytes]:
    for index, names in enumerate(_PARSER_FILES):
        for name in names:
            for path in sorted(FIXTURES.glob(f"*/**/{name}"))[:3]:
                yield bytes([index]) + path.read_bytes()


def _agent_replies() -> Iterator[bytes]:
    for meta in sorted(FIXTURES.glob("*/meta.json")):
        root = meta.parent
        reader = CgroupReader(detect_layout(str(root / "cgroup")), meminfo=str(root / "meminfo"))
        try:
            path = json.loads(meta.read_text())["container_path"]
            yield to_response(reader.read(path)).SerializeToString()
        finally:
            reader.close()


SEEDS: dict[str, Callable[[], Iterator[bytes]]] = {
    "frames": _frames,
    "envelopes": _envelopes,
    "parsers": _parsers,
    "agent_reply": _agent_replies,
}

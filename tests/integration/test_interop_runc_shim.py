"""Our ttrpc client against a real Go ttrpc server: the runc shim of Debian's containerd.

This is the interop proof of the foundation: we frame the call, the Go server answers, we
decode its Any by type URL and compute CRI's figures. Ground truth is the container's own
memory cgroup, read around our call, and what `ctr task metrics` reports.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.fake_containerd import StatsResult, call_stats
from shimstats.ttrpc import Client, Code, Frame, FrameDecoder, MessageType, TtrpcError, encode_frame
from shimstats.ttrpc.framing import KeyValue, decode_response, encode_request, encode_response
from tests.containerd_env import Container, Containerd

pytestmark = pytest.mark.containerd

REPO = Path(__file__).resolve().parents[2]
#: The container sleeps between our reads; only kernel bookkeeping moves usage (per-cpu charge batches).
USAGE_TOLERANCE = 512 * 1024


def _read_int(path: Path) -> int:
    return int(path.read_text())


def _memory_stat(container: Container) -> dict[str, int]:
    pairs = (line.split() for line in (container.memory_cgroup / "memory.stat").read_text().splitlines())
    return {key: int(value) for key, value in pairs}


async def _stats(container: Container, container_id: str | None = None) -> StatsResult:
    async with await Client.connect(f"unix://{container.shim_socket}", timeout=5) as client:
        return await call_stats(
            client, container_id or container.id, namespace=container.namespace, timeout=5
        )


def test_runc_shim_stats_match_the_cgroup(containerd: Containerd, busybox_container: Container) -> None:
    usage_file = busybox_container.memory_cgroup / "memory.usage_in_bytes"
    before = _read_int(usage_file)
    result = asyncio.run(_stats(busybox_container))
    after = _read_int(usage_file)
    stat = _memory_stat(busybox_container)

    assert result.type_url == cri.V1_TYPE_URL  # this host is cgroup v1: runc sends v1 Metrics
    assert isinstance(result.metrics, v1.Metrics)
    usage = result.metrics.memory.usage.usage
    assert min(before, after) - USAGE_TOLERANCE <= usage <= max(before, after) + USAGE_TOLERANCE
    assert result.memory is not None
    # CRI's working set from the Go shim's answer = usage − total_inactive_file of the same answer,
    # and that inactive figure is the kernel's within the tolerance.
    assert result.memory.working_set_bytes == usage - result.metrics.memory.total_inactive_file
    assert abs(result.metrics.memory.total_inactive_file - stat["total_inactive_file"]) <= USAGE_TOLERANCE
    assert result.memory.rss_bytes == result.metrics.memory.total_rss

    ctr_view = containerd.metrics_json(busybox_container)
    assert abs(ctr_view["memory"]["usage"]["usage"] - usage) <= USAGE_TOLERANCE
    # ctr's JSON omits zero fields (Go omitempty), so an absent key means 0.
    ctr_inactive = ctr_view["memory"].get("total_inactive_file", 0)
    assert abs(ctr_inactive - result.metrics.memory.total_inactive_file) <= USAGE_TOLERANCE
    assert abs(ctr_view["memory"]["total_cache"] - result.metrics.memory.total_cache) <= USAGE_TOLERANCE


def test_runc_shim_unknown_id_is_a_status_not_a_dropped_connection(busybox_container: Container) -> None:
    async def scenario() -> tuple[TtrpcError, int]:
        async with await Client.connect(f"unix://{busybox_container.shim_socket}", timeout=5) as client:
            with pytest.raises(TtrpcError) as info:
                await call_stats(client, "no-such-task", namespace=busybox_container.namespace, timeout=5)
            # The same connection still serves the real id afterwards.
            ok = await call_stats(
                client, busybox_container.id, namespace=busybox_container.namespace, timeout=5
            )
            assert ok.memory is not None
            return info.value, ok.memory.usage_bytes

    error, usage = asyncio.run(scenario())
    assert error.code in (Code.NOT_FOUND, Code.UNKNOWN), error
    assert "no-such-task" in error.message or "not found" in error.message.lower()
    assert usage > 0


def test_runc_shim_unknown_method_is_unimplemented(busybox_container: Container) -> None:
    async def scenario() -> TtrpcError:
        async with await Client.connect(f"unix://{busybox_container.shim_socket}", timeout=5) as client:
            with pytest.raises(TtrpcError) as info:
                await client.call("containerd.task.v2.Task", "NoSuchMethod", b"", timeout=5)
            return info.value

    assert asyncio.run(scenario()).code == Code.UNIMPLEMENTED


def test_stats_cli_json_against_the_runc_shim(busybox_container: Container) -> None:
    usage_file = busybox_container.memory_cgroup / "memory.usage_in_bytes"
    before = _read_int(usage_file)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shimstats.cli",
            "stats",
            "--shim",
            f"unix://{busybox_container.shim_socket}",
            "--id",
            busybox_container.id,
            "--namespace",
            busybox_container.namespace,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    after = _read_int(usage_file)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["id"] == busybox_container.id
    assert out["type_url"] == cri.V1_TYPE_URL
    usage = out["metrics"]["memory"]["usage"]["usage"]
    assert min(before, after) - USAGE_TOLERANCE <= usage <= max(before, after) + USAGE_TOLERANCE
    crij = out["cri"]
    assert crij["usage_bytes"] == usage
    assert crij["working_set_bytes"] == usage - out["metrics"]["memory"].get("total_inactive_file", 0)
    assert crij["rss_bytes"] == out["metrics"]["memory"].get("total_rss", 0)
    assert set(crij) == {
        "usage_bytes",
        "working_set_bytes",
        "available_bytes",
        "rss_bytes",
        "page_faults",
        "major_page_faults",
    }


def test_stats_cli_exit_codes(busybox_container: Container, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shimstats.cli", "stats", *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )

    missing = tmp_path / "nothing.sock"
    gone = run("--shim", f"unix://{missing}", "--id", "x")
    assert gone.returncode == 2
    assert str(missing) in gone.stderr
    status = run(
        "--shim",
        f"unix://{busybox_container.shim_socket}",
        "--id",
        "no-such-task",
        "--namespace",
        busybox_container.namespace,
    )
    assert status.returncode == 1
    assert "no-such-task" in status.stderr


def test_our_ok_envelope_has_the_go_servers_shape(busybox_container: Container) -> None:
    """The Go server leaves the status out of an OK Response; our server encodes OK the same way."""
    request = encode_request(
        "containerd.task.v2.Task",
        "Connect",
        shim_pb2.ConnectRequest(id=busybox_container.id).SerializeToString(),
        metadata=[KeyValue(key="containerd-namespace-ttrpc", value=busybox_container.namespace)],
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(busybox_container.shim_socket))
        sock.sendall(encode_frame(1, MessageType.REQUEST, 0, request))
        decoder = FrameDecoder()
        events: Sequence[object] = []
        while not events:
            chunk = sock.recv(65536)
            assert chunk, "the runc shim closed the connection"
            events = decoder.feed(chunk)
    frame = events[0]
    assert isinstance(frame, Frame)
    go_envelope = frame.payload
    payload = decode_response(go_envelope).payload
    assert shim_pb2.ConnectResponse.FromString(payload).shim_pid > 0
    assert decode_response(go_envelope).status is None
    assert encode_response(payload) == go_envelope

"""Checks on protos/ and the generated code in shimstats/_proto.

The field tables below are the ones in the spec (docs/spec/metrics.md and docs/spec/ttrpc.md, which cite
upstream containerd, containerd/cgroups and kata-containers sources); the shim messages that the spec
does not list were checked against containerd api/runtime/task/v2/shim.proto at 301026e. The byte
strings in the encoding tests are worked out by hand from the protobuf wire rules: a tag is
varint(number << 3 | wire type), with wire type 0 = varint, 1 = fixed64, 2 = length-delimited.
"""

from __future__ import annotations

import importlib.metadata
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import any_pb2, descriptor_pb2
from google.protobuf.descriptor import Descriptor

from shimstats import wire
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats._proto.containerd.services.tasks.v1 import tasks_pb2
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.containerd.types import metrics_pb2, mount_pb2, task_pb2
from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats._proto.shimstats.agent.v1 import diagnostics_pb2, resources_pb2
from shimstats._proto.ttrpc import request_pb2
from tests import hack_scripts
from tests.unit.proto_fields import field_kind

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "shimstats" / "_proto"


def _load_gen_protos() -> ModuleType:
    return hack_scripts.load("gen_protos")


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    fresh_root = tmp_path / "_proto"
    _load_gen_protos().generate(fresh_root)
    fresh, committed = _tree(fresh_root), _tree(GENERATED)
    stale = sorted(
        f"{name} ({'missing' if name not in committed else 'extra' if name not in fresh else 'differs'})"
        for name in fresh.keys() | committed.keys()
        if fresh.get(name) != committed.get(name)
    )
    assert not stale, "shimstats/_proto is stale; run `bash hack/gen-protos.sh` and commit:\n" + "\n".join(
        stale
    )


# ---------------------------------------------------------------------------------------------------------
# Field numbers and types.


V1 = "io.containerd.cgroups.v1"
V2 = "io.containerd.cgroups.v2"
TS = "google.protobuf.Timestamp"
ANY = "google.protobuf.Any"


def _numbered(message: str, names: str, kind: str, first: int = 1) -> list[tuple[str, str, int, str]]:
    """Rows for consecutive fields of one type: the i-th name (from 0) has number first + i."""
    return [(message, name, first + i, kind) for i, name in enumerate(names.split())]


# docs/spec/metrics.md §3.1 MemoryStat table: fields 1-32 uint64 in this order, 33-36 MemoryEntry.
V1_MEMORY_SCALARS = """
    cache rss rss_huge mapped_file dirty writeback pg_pg_in pg_pg_out pg_fault pg_maj_fault inactive_anon
    active_anon inactive_file active_file unevictable hierarchical_memory_limit hierarchical_swap_limit
    total_cache total_rss total_rss_huge total_mapped_file total_dirty total_writeback total_pg_pg_in
    total_pg_pg_out total_pg_fault total_pg_maj_fault total_inactive_anon total_active_anon
    total_inactive_file total_active_file total_unevictable
"""
# docs/spec/metrics.md §3.2 MemoryStat table: 1-37 uint64, 38 psi, 39-42 uint64 (cgroups HEAD).
V2_MEMORY_SCALARS = """
    anon file kernel_stack slab sock shmem file_mapped file_dirty file_writeback anon_thp inactive_anon
    active_anon inactive_file active_file unevictable slab_reclaimable slab_unreclaimable pgfault pgmajfault
    workingset_refault workingset_activate workingset_nodereclaim pgrefill pgscan pgsteal pgactivate
    pgdeactivate pglazyfree pglazyfreed thp_fault_alloc thp_collapse_alloc usage usage_limit swap_usage
    swap_limit max_usage swap_max_usage
"""

FIELDS: list[tuple[str, str, int, str]] = [
    # ttrpc envelope (docs/spec/ttrpc.md §4)
    *_numbered("ttrpc.Request", "service method", "string"),
    ("ttrpc.Request", "payload", 3, "bytes"),
    ("ttrpc.Request", "timeout_nano", 4, "int64"),
    ("ttrpc.Request", "metadata", 5, "repeated ttrpc.KeyValue"),
    *_numbered("ttrpc.KeyValue", "key value", "string"),
    ("ttrpc.Response", "status", 1, "google.rpc.Status"),
    ("ttrpc.Response", "payload", 2, "bytes"),
    # shim task API (docs/spec/metrics.md §1.2)
    ("containerd.task.v2.StatsRequest", "id", 1, "string"),
    ("containerd.task.v2.StatsResponse", "stats", 1, ANY),
    ("containerd.task.v2.ConnectRequest", "id", 1, "string"),
    *_numbered("containerd.task.v2.ConnectResponse", "shim_pid task_pid", "uint32"),
    ("containerd.task.v2.ConnectResponse", "version", 3, "string"),
    *_numbered("containerd.task.v2.StateRequest", "id exec_id", "string"),
    *_numbered("containerd.task.v2.StateResponse", "id bundle", "string"),
    ("containerd.task.v2.StateResponse", "pid", 3, "uint32"),
    ("containerd.task.v2.StateResponse", "status", 4, "containerd.v1.types.Status"),
    *_numbered("containerd.task.v2.StateResponse", "stdin stdout stderr", "string", first=5),
    ("containerd.task.v2.StateResponse", "terminal", 8, "bool"),
    ("containerd.task.v2.StateResponse", "exit_status", 9, "uint32"),
    ("containerd.task.v2.StateResponse", "exited_at", 10, TS),
    ("containerd.task.v2.StateResponse", "exec_id", 11, "string"),
    ("containerd.task.v2.PidsResponse", "processes", 1, "repeated containerd.v1.types.ProcessInfo"),
    ("containerd.task.v2.ShutdownRequest", "now", 2, "bool"),
    ("containerd.task.v2.WaitResponse", "exit_status", 1, "uint32"),
    ("containerd.task.v2.WaitResponse", "exited_at", 2, TS),
    *_numbered("containerd.task.v2.DeleteResponse", "pid exit_status", "uint32"),
    ("containerd.task.v2.DeleteResponse", "exited_at", 3, TS),
    ("containerd.v1.types.ProcessInfo", "pid", 1, "uint32"),
    ("containerd.v1.types.ProcessInfo", "info", 2, ANY),
    # shim task API messages the proxy forwards (containerd api/runtime/task/v2/shim.proto)
    *_numbered("containerd.task.v2.CreateTaskRequest", "id bundle", "string"),
    ("containerd.task.v2.CreateTaskRequest", "rootfs", 3, "repeated containerd.types.Mount"),
    ("containerd.task.v2.CreateTaskRequest", "terminal", 4, "bool"),
    *_numbered(
        "containerd.task.v2.CreateTaskRequest",
        "stdin stdout stderr checkpoint parent_checkpoint",
        "string",
        5,
    ),
    ("containerd.task.v2.CreateTaskRequest", "options", 10, ANY),
    ("containerd.task.v2.ExecProcessRequest", "spec", 7, ANY),
    *_numbered("containerd.task.v2.ResizePtyRequest", "width height", "uint32", first=3),
    ("containerd.task.v2.KillRequest", "signal", 3, "uint32"),
    ("containerd.task.v2.KillRequest", "all", 4, "bool"),
    ("containerd.task.v2.CloseIORequest", "stdin", 3, "bool"),
    ("containerd.task.v2.CheckpointTaskRequest", "options", 3, ANY),
    ("containerd.task.v2.UpdateTaskRequest", "resources", 2, ANY),
    ("containerd.task.v2.UpdateTaskRequest", "annotations", 3, "map<string, string>"),
    *_numbered("containerd.types.Mount", "type source target", "string"),
    ("containerd.types.Mount", "options", 4, "repeated string"),
    # containerd Tasks.Metrics (docs/spec/metrics.md §4.1)
    ("containerd.services.tasks.v1.MetricsRequest", "filters", 1, "repeated string"),
    ("containerd.services.tasks.v1.MetricsResponse", "metrics", 1, "repeated containerd.types.Metric"),
    ("containerd.types.Metric", "timestamp", 1, TS),
    ("containerd.types.Metric", "id", 2, "string"),
    ("containerd.types.Metric", "data", 3, ANY),
    # cgroups v1 (docs/spec/metrics.md §3.1)
    *_numbered(f"{V1}.MemoryStat", V1_MEMORY_SCALARS, "uint64"),
    *_numbered(f"{V1}.MemoryStat", "usage swap kernel kernel_tcp", f"{V1}.MemoryEntry", first=33),
    *_numbered(f"{V1}.MemoryEntry", "limit usage max failcnt", "uint64"),
    ("io.containerd.cgroups.v1.Metrics", "hugetlb", 1, f"repeated {V1}.HugetlbStat"),
    ("io.containerd.cgroups.v1.Metrics", "pids", 2, f"{V1}.PidsStat"),
    ("io.containerd.cgroups.v1.Metrics", "cpu", 3, f"{V1}.CPUStat"),
    ("io.containerd.cgroups.v1.Metrics", "memory", 4, f"{V1}.MemoryStat"),
    ("io.containerd.cgroups.v1.Metrics", "blkio", 5, f"{V1}.BlkIOStat"),
    ("io.containerd.cgroups.v1.Metrics", "network", 7, f"repeated {V1}.NetworkStat"),
    ("io.containerd.cgroups.v1.Metrics", "memory_oom_control", 9, f"{V1}.MemoryOomControl"),
    *_numbered(f"{V1}.CPUUsage", "total kernel user", "uint64"),
    ("io.containerd.cgroups.v1.CPUUsage", "per_cpu", 4, "repeated uint64"),
    *_numbered(f"{V1}.BlkIOEntry", "op device", "string"),
    *_numbered(f"{V1}.BlkIOEntry", "major minor value", "uint64", first=3),
    ("io.containerd.cgroups.v1.HugetlbStat", "pagesize", 4, "string"),
    # cgroups v2 (docs/spec/metrics.md §3.2)
    ("io.containerd.cgroups.v2.Metrics", "pids", 1, f"{V2}.PidsStat"),
    ("io.containerd.cgroups.v2.Metrics", "cpu", 2, f"{V2}.CPUStat"),
    ("io.containerd.cgroups.v2.Metrics", "memory", 4, f"{V2}.MemoryStat"),
    ("io.containerd.cgroups.v2.Metrics", "rdma", 5, f"{V2}.RdmaStat"),
    ("io.containerd.cgroups.v2.Metrics", "io", 6, f"{V2}.IOStat"),
    ("io.containerd.cgroups.v2.Metrics", "hugetlb", 7, f"repeated {V2}.HugeTlbStat"),
    ("io.containerd.cgroups.v2.Metrics", "memory_events", 8, f"{V2}.MemoryEvents"),
    ("io.containerd.cgroups.v2.Metrics", "network", 9, f"repeated {V2}.NetworkStat"),
    *_numbered(f"{V2}.MemoryStat", V2_MEMORY_SCALARS, "uint64"),
    ("io.containerd.cgroups.v2.MemoryStat", "psi", 38, f"{V2}.PSIStats"),
    *_numbered(
        f"{V2}.MemoryStat",
        "workingset_refault_anon workingset_refault_file workingset_activate_anon workingset_activate_file",
        "uint64",
        first=39,
    ),
    *_numbered(f"{V2}.PSIData", "avg10 avg60 avg300", "double"),
    ("io.containerd.cgroups.v2.PSIData", "total", 4, "uint64"),
    *_numbered(
        f"{V2}.CPUStat", "usage_usec user_usec system_usec nr_periods nr_throttled throttled_usec", "uint64"
    ),
    ("io.containerd.cgroups.v2.CPUStat", "psi", 7, f"{V2}.PSIStats"),
    *_numbered(f"{V2}.CPUStat", "nr_bursts burst_usec", "uint64", first=8),
    *_numbered(f"{V2}.MemoryEvents", "low high max oom oom_kill oom_group_kill", "uint64"),
    *_numbered(f"{V2}.IOEntry", "major minor rbytes wbytes rios wios", "uint64"),
    ("io.containerd.cgroups.v2.HugeTlbStat", "pagesize", 3, "string"),
    ("io.containerd.cgroups.v2.HugeTlbStat", "failcnt", 4, "uint64"),
    # Kata agent (docs/spec/metrics.md §5.2)
    ("grpc.StatsContainerRequest", "container_id", 1, "string"),
    ("grpc.StatsContainerResponse", "cgroup_stats", 1, "grpc.CgroupStats"),
    ("grpc.StatsContainerResponse", "network_stats", 2, "repeated grpc.NetworkStats"),
    ("grpc.CgroupStats", "memory_stats", 2, "grpc.MemoryStats"),
    ("grpc.CgroupStats", "hugetlb_stats", 5, "map<string, grpc.HugetlbStats>"),
    ("grpc.CpuUsage", "percpu_usage", 2, "repeated uint64"),
    ("grpc.CpuUsage", "usage_in_kernelmode", 3, "uint64"),
    ("grpc.CpuUsage", "usage_in_usermode", 4, "uint64"),
    ("grpc.MemoryStats", "cache", 1, "uint64"),
    *_numbered("grpc.MemoryStats", "usage swap_usage kernel_usage", "grpc.MemoryData", first=2),
    ("grpc.MemoryStats", "use_hierarchy", 5, "bool"),
    ("grpc.MemoryStats", "stats", 6, "map<string, uint64>"),
    *_numbered("grpc.MemoryData", "usage max_usage failcnt limit", "uint64"),
    *_numbered("grpc.BlkioStatsEntry", "major minor", "uint64"),
    ("grpc.BlkioStatsEntry", "op", 3, "string"),
    ("grpc.BlkioStatsEntry", "value", 4, "uint64"),
    ("grpc.HealthCheckResponse", "status", 1, "grpc.HealthCheckResponse.ServingStatus"),
]

MODULES = [
    request_pb2,
    shim_pb2,
    task_pb2,
    mount_pb2,
    metrics_pb2,
    tasks_pb2,
    v1,
    v2,
    agent_pb2,
    health_pb2,
]


def _message(full_name: str) -> Descriptor:
    package, _, name = full_name.rpartition(".")
    for module in MODULES:
        fd = module.DESCRIPTOR
        if fd.package == package and name in fd.message_types_by_name:
            desc: Descriptor = fd.message_types_by_name[name]
            return desc
    raise AssertionError(f"no generated message {full_name}")


@pytest.mark.parametrize(("message", "field", "number", "kind"), FIELDS, ids=lambda v: str(v))
def test_field_number_and_type(message: str, field: str, number: int, kind: str) -> None:
    desc = _message(message)
    assert field in desc.fields_by_name, f"{message} has no field {field}"
    got = desc.fields_by_name[field]
    assert (got.number, field_kind(got)) == (number, kind)


# Messages that FIELDS lists in full: they must have no field beyond it.
COMPLETE = [
    f"{V1}.MemoryStat",
    f"{V1}.MemoryEntry",
    f"{V1}.BlkIOEntry",
    f"{V2}.Metrics",
    f"{V2}.MemoryStat",
    f"{V2}.PSIData",
    f"{V2}.CPUStat",
    f"{V2}.MemoryEvents",
    f"{V2}.IOEntry",
    "grpc.MemoryStats",
    "grpc.MemoryData",
    "grpc.BlkioStatsEntry",
    "containerd.task.v2.StateResponse",
    "containerd.task.v2.CreateTaskRequest",
    "containerd.types.Mount",
]


@pytest.mark.parametrize("message", COMPLETE)
def test_no_fields_beyond_the_table(message: str) -> None:
    listed = sorted(f for m, f, _, _ in FIELDS if m == message)
    assert sorted(f.name for f in _message(message).fields) == listed


def test_v2_metrics_field_3_is_unused_and_reserved() -> None:
    desc = v2.Metrics.DESCRIPTOR
    assert 3 not in desc.fields_by_number
    file_proto = descriptor_pb2.FileDescriptorProto.FromString(desc.file.serialized_pb)
    (metrics,) = (m for m in file_proto.message_type if m.name == "Metrics")
    assert [(r.start, r.end) for r in metrics.reserved_range] == [(3, 4)]  # end is exclusive


# docs/spec/metrics.md §1.1 (shim Task), §4.1 (Tasks.Metrics), §5.1 (agent, health).
SERVICES = {
    "containerd.task.v2.Task": {
        "State": ("StateRequest", "StateResponse"),
        "Create": ("CreateTaskRequest", "CreateTaskResponse"),
        "Start": ("StartRequest", "StartResponse"),
        "Delete": ("DeleteRequest", "DeleteResponse"),
        "Pids": ("PidsRequest", "PidsResponse"),
        "Pause": ("PauseRequest", "Empty"),
        "Resume": ("ResumeRequest", "Empty"),
        "Checkpoint": ("CheckpointTaskRequest", "Empty"),
        "Kill": ("KillRequest", "Empty"),
        "Exec": ("ExecProcessRequest", "Empty"),
        "ResizePty": ("ResizePtyRequest", "Empty"),
        "CloseIO": ("CloseIORequest", "Empty"),
        "Update": ("UpdateTaskRequest", "Empty"),
        "Wait": ("WaitRequest", "WaitResponse"),
        "Stats": ("StatsRequest", "StatsResponse"),
        "Connect": ("ConnectRequest", "ConnectResponse"),
        "Shutdown": ("ShutdownRequest", "Empty"),
    },
    "containerd.services.tasks.v1.Tasks": {"Metrics": ("MetricsRequest", "MetricsResponse")},
    "grpc.AgentService": {"StatsContainer": ("StatsContainerRequest", "StatsContainerResponse")},
    "grpc.Health": {
        "Check": ("CheckRequest", "HealthCheckResponse"),
        "Version": ("CheckRequest", "VersionCheckResponse"),
    },
}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_methods(service: str) -> None:
    found = [s for m in MODULES for s in m.DESCRIPTOR.services_by_name.values() if s.full_name == service]
    assert len(found) == 1, f"service {service} defined {len(found)} times"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in found[0].methods}
    assert methods == SERVICES[service]


def test_status_and_serving_status_enums() -> None:
    assert dict(task_pb2.Status.items()) == {
        "UNKNOWN": 0,
        "CREATED": 1,
        "RUNNING": 2,
        "STOPPED": 3,
        "PAUSED": 4,
        "PAUSING": 5,
    }
    assert dict(health_pb2.HealthCheckResponse.ServingStatus.items()) == {
        "UNKNOWN": 0,
        "SERVING": 1,
        "NOT_SERVING": 2,
    }


# ---------------------------------------------------------------------------------------------------------
# Byte-exact encodings, derived by hand.


def _ld(number: int, body: bytes) -> bytes:
    """A length-delimited field whose number and length both fit one varint byte."""
    assert number < 16
    assert len(body) < 128
    return bytes([number << 3 | 2, len(body)]) + body


def test_ttrpc_request_example_from_the_fact_sheet() -> None:
    """docs/spec/ttrpc.md §1: a unary request on stream 1, 37-byte Request: header 00000025 00000001 01 00."""
    stats = shim_pb2.StatsRequest(id="c").SerializeToString()
    assert stats == _ld(1, b"c")
    request = request_pb2.Request(service="containerd.task.v2.Task", method="Stats", payload=stats)
    body = request.SerializeToString()
    assert body == _ld(1, b"containerd.task.v2.Task") + _ld(2, b"Stats") + _ld(3, stats)
    assert len(body) == 2 + 23 + 2 + 5 + 2 + 3 == 37
    frame = struct.pack(">IIBB", len(body), 1, 0x01, 0x00) + body
    assert frame[:10] == bytes.fromhex("00000025 00000001 01 00")


def test_v2_psi_average_is_a_fixed64_double() -> None:
    # avg10: tag 1<<3|1 = 0x09, then IEEE-754 1.5 = 0x3FF8000000000000 little-endian.
    # total: tag 4<<3|0 = 0x20, varint 7.
    data = v2.PSIData(avg10=1.5, total=7)
    expected = bytes.fromhex("09 000000000000f83f 20 07")
    assert data.SerializeToString() == expected
    assert v2.PSIData.FromString(expected) == data


def test_per_cpu_is_packed_and_unpacked_form_decodes() -> None:
    # 300 = 0b10_0101100 -> varint ac 02 (low 7 bits first, high bit = more).
    # Packed: one tag 4<<3|2 = 0x22, length 3. Unpacked: tag 4<<3|0 = 0x20 before each value.
    usage = v1.CPUUsage(per_cpu=[1, 300])
    assert usage.SerializeToString() == bytes.fromhex("22 03 01 ac02")
    assert list(v1.CPUUsage.FromString(bytes.fromhex("20 01 20 ac02")).per_cpu) == [1, 300]
    # The agent's percpu_usage is field 2: tag 2<<3|2 = 0x12.
    assert agent_pb2.CpuUsage(percpu_usage=[1, 300]).SerializeToString() == bytes.fromhex("12 03 01 ac02")


def test_blkio_entry_orders_differ_between_kata_and_containerd() -> None:
    kata = agent_pb2.BlkioStatsEntry(major=8, op="Read").SerializeToString()
    containerd = v1.BlkIOEntry(major=8, op="Read").SerializeToString()
    assert kata == bytes.fromhex("08 08") + _ld(3, b"Read")
    assert containerd == _ld(1, b"Read") + bytes.fromhex("18 08")


def test_agent_memory_stats_map_entry() -> None:
    # map<string, uint64> stats = 6: one length-delimited entry {key = 1, value = 2}.
    encoded = agent_pb2.MemoryStats(stats={"cache": 5}).SerializeToString()
    assert encoded == _ld(6, _ld(1, b"cache") + bytes.fromhex("10 05"))


def test_v2_memory_usage_field_32_with_unlimited_value() -> None:
    # Tag 32<<3|0 = 256 -> varint 80 02; 2^64-1 takes ten varint bytes: nine ff (7 bits each), then 01.
    stat = v2.MemoryStat(usage=2**64 - 1).SerializeToString()
    assert stat == bytes.fromhex("8002 ffffffffffffffffff01")
    metrics = v2.Metrics(memory=v2.MemoryStat(usage=2**64 - 1)).SerializeToString()
    assert metrics == _ld(4, stat)


def test_stats_response_carries_bare_type_url() -> None:
    url = b"io.containerd.cgroups.v2.Metrics"
    response = shim_pb2.StatsResponse(stats=any_pb2.Any(type_url=url.decode(), value=b""))
    assert response.SerializeToString() == _ld(1, _ld(1, url))
    assert v2.Metrics.DESCRIPTOR.full_name == url.decode()
    assert v1.Metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v1.Metrics"


# ---------------------------------------------------------------------------------------------------------
# Import hygiene and typing.

_IMPORT_ALL = textwrap.dedent(
    """
    import importlib, io, pkgutil, sys
    import shimstats._proto as root
    names = sorted(m.name for m in pkgutil.walk_packages(root.__path__, root.__name__ + "."))
    wanted = [n for n in names if n.endswith("_pb2") or (sys.argv[1] == "with-grpc" and n.endswith("_grpc"))]
    for name in wanted:
        importlib.import_module(name)
    from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
    from shimstats._proto.containerd.task.v2 import shim_pb2
    assert v1.Metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v1.Metrics"
    assert shim_pb2.DESCRIPTOR.services_by_name["Task"].full_name == "containerd.task.v2.Task"
    assert io.BytesIO is not None  # the stdlib io is not shadowed by a generated package
    print(len(wanted), "grpc" in sys.modules, "psutil" in sys.modules)
    """
)


def _import_all(mode: str) -> tuple[int, bool, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return int(out[0]), out[1] == "True", out[2] == "True"


def test_message_modules_import_without_grpc_or_psutil() -> None:
    count, grpc_loaded, psutil_loaded = _import_all("messages-only")
    assert count == len(list(GENERATED.rglob("*_pb2.py")))
    assert (grpc_loaded, psutil_loaded) == (False, False)


def test_grpc_stub_module_does_pull_in_grpc() -> None:
    """Guards the test above: the probe does see grpc when a *_grpc module is imported."""
    _, grpc_loaded, _ = _import_all("with-grpc")
    assert grpc_loaded


_TYPED_USE = """
from shimstats._proto.cgroups.v1 import metrics_pb2 as v1
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2


def working_set(m: v2.Metrics) -> int:
    return max(m.memory.usage - m.memory.inactive_file, 0)


def v1_rss(m: v1.Metrics) -> int:
    return m.memory.total_rss


def stats_map(r: agent_pb2.StatsContainerResponse) -> dict[str, int]:
    return dict(r.cgroup_stats.memory_stats.stats)


def response(m: v2.Metrics) -> shim_pb2.StatsResponse:
    out = shim_pb2.StatsResponse()
    out.stats.Pack(m, type_url_prefix="")
    return out
"""

_BAD_USE = """
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2


def bad(m: v2.Metrics) -> str:
    return m.memory.usage
"""


def _mypy(tmp_path: Path, files: dict[str, str]) -> tuple[str, int]:
    mypy_api = pytest.importorskip("mypy.api")
    paths = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    out, err, status = mypy_api.run(["--config-file", str(REPO / "pyproject.toml"), *paths])
    return out + err, status


def test_mypy_accepts_generated_stubs_and_rejects_misuse(tmp_path: Path) -> None:
    report, status = _mypy(tmp_path, {"good_use.py": _TYPED_USE, "bad_use.py": _BAD_USE})
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert status == 1
    assert len(errors) == 1, report
    assert 'bad_use.py:6: error: Incompatible return value type (got "int", expected "str")' in errors[0]


def test_mypy_accepts_grpc_stub_use(tmp_path: Path) -> None:
    try:
        importlib.metadata.version("types-grpcio")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("types-grpcio is not installed (it belongs in pyproject's test extra)")
    use = """
import grpc
import grpc.aio

from shimstats._proto.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc


def sync_call(channel: grpc.Channel) -> tasks_pb2.MetricsResponse:
    return tasks_pb2_grpc.TasksStub(channel).Metrics(tasks_pb2.MetricsRequest(filters=["id==c"]), timeout=1.0)


async def async_call(channel: grpc.aio.Channel) -> tasks_pb2.MetricsResponse:
    return await tasks_pb2_grpc.TasksStub(channel).Metrics(tasks_pb2.MetricsRequest())
"""
    report, status = _mypy(tmp_path, {"grpc_use.py": use})
    assert status == 0, report


def test_every_service_name_in_wire_is_the_one_its_proto_file_declares() -> None:
    """shimstats.wire spells the names as plain strings (no protobuf import for the proxy's start): each
    must be the full name the generated descriptor gives its service, the bytes peers put on the wire."""
    declared = {
        wire.TASK_SERVICE: shim_pb2.DESCRIPTOR.services_by_name["Task"],
        wire.AGENT_SERVICE: agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
        wire.HEALTH_SERVICE: health_pb2.DESCRIPTOR.services_by_name["Health"],
        wire.RESOURCES_SERVICE: resources_pb2.DESCRIPTOR.services_by_name["Resources"],
        wire.DIAGNOSTICS_SERVICE: diagnostics_pb2.DESCRIPTOR.services_by_name["Diagnostics"],
    }
    for name, service in declared.items():
        assert name == service.full_name
    assert wire.TASK_SERVICE.replace(".v2.", ".v3.") == wire.TASK_V3_SERVICE
    task = shim_pb2.DESCRIPTOR.services_by_name["Task"]
    assert tuple(method.name for method in task.methods) == wire.TASK_METHODS
    assert wire.NAMESPACE_KEY == "containerd-namespace-ttrpc"  # containerd's pkg/namespaces/ttrpc.go


def test_importing_the_wire_names_loads_no_protobuf() -> None:
    probe = "import sys, shimstats.wire; print(sorted(m for m in sys.modules if m.startswith('google')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"

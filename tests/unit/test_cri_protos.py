"""Field numbers, types and services of our copy of the Kubernetes CRI (protos/cri/runtime/v1/api.proto).

The table below was written from kubernetes/cri-api pkg/apis/runtime/v1/api.proto at 791729b, message by
message; every message of our copy is listed in full (a field we add or drop by mistake fails), and every
number we leave out is `reserved` and listed in RESERVED with the upstream field it stands for. A wrong
number here would make containerd read a figure into the wrong field without any error, which is why the
whole file is pinned rather than sampled.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from shimstats._proto.cri.runtime.v1 import api_pb2
from tests.unit.test_protos import _kind

P = "runtime.v1."
MAP = "map<string, string>"

# message: "field number type, ..." in upstream order; a bare type name is a runtime.v1 message or enum.
TABLE: dict[str, str] = {
    "VersionRequest": "version 1 string",
    "VersionResponse": "version 1 string, runtime_name 2 string, runtime_version 3 string, "
    "runtime_api_version 4 string",
    "StatusRequest": "verbose 1 bool",
    "StatusResponse": f"status 1 RuntimeStatus, info 2 {MAP}",
    "RuntimeStatus": "conditions 1 repeated:RuntimeCondition",
    "RuntimeCondition": "type 1 string, status 2 bool, reason 3 string, message 4 string",
    "PodSandboxMetadata": "name 1 string, uid 2 string, namespace 3 string, attempt 4 uint32",
    "DNSConfig": "servers 1 repeated:string, searches 2 repeated:string, options 3 repeated:string",
    "PortMapping": "protocol 1 Protocol, container_port 2 int32, host_port 3 int32, host_ip 4 string",
    "NamespaceOption": "network 1 NamespaceMode, pid 2 NamespaceMode, ipc 3 NamespaceMode, "
    "target_id 4 string",
    "Int64Value": "value 1 int64",
    "LinuxSandboxSecurityContext": "namespace_options 1 NamespaceOption, run_as_user 3 Int64Value, "
    "readonly_rootfs 4 bool, supplemental_groups 5 repeated:int64, privileged 6 bool, "
    "run_as_group 8 Int64Value",
    "LinuxPodSandboxConfig": f"cgroup_parent 1 string, security_context 2 LinuxSandboxSecurityContext, "
    f"sysctls 3 {MAP}, overhead 4 LinuxContainerResources, resources 5 LinuxContainerResources",
    "PodSandboxConfig": f"metadata 1 PodSandboxMetadata, hostname 2 string, log_directory 3 string, "
    f"dns_config 4 DNSConfig, port_mappings 5 repeated:PortMapping, labels 6 {MAP}, annotations 7 {MAP}, "
    "linux 8 LinuxPodSandboxConfig",
    "RunPodSandboxRequest": "config 1 PodSandboxConfig, runtime_handler 2 string",
    "RunPodSandboxResponse": "pod_sandbox_id 1 string",
    "StopPodSandboxRequest": "pod_sandbox_id 1 string",
    "StopPodSandboxResponse": "",
    "RemovePodSandboxRequest": "pod_sandbox_id 1 string",
    "RemovePodSandboxResponse": "",
    "PodIP": "ip 1 string",
    "PodSandboxNetworkStatus": "ip 1 string, additional_ips 2 repeated:PodIP",
    "Namespace": "options 2 NamespaceOption",
    "LinuxPodSandboxStatus": "namespaces 1 Namespace",
    "PodSandboxStatus": f"id 1 string, metadata 2 PodSandboxMetadata, state 3 PodSandboxState, "
    f"created_at 4 int64, network 5 PodSandboxNetworkStatus, linux 6 LinuxPodSandboxStatus, labels 7 {MAP}, "
    f"annotations 8 {MAP}, runtime_handler 9 string",
    "PodSandboxStatusRequest": "pod_sandbox_id 1 string, verbose 2 bool",
    "PodSandboxStatusResponse": f"status 1 PodSandboxStatus, info 2 {MAP}, "
    "containers_statuses 3 repeated:ContainerStatus, timestamp 4 int64",
    "PodSandboxStateValue": "state 1 PodSandboxState",
    "PodSandboxFilter": f"id 1 string, state 2 PodSandboxStateValue, label_selector 3 {MAP}",
    "ListPodSandboxRequest": "filter 1 PodSandboxFilter",
    "PodSandbox": f"id 1 string, metadata 2 PodSandboxMetadata, state 3 PodSandboxState, created_at 4 int64, "
    f"labels 5 {MAP}, annotations 6 {MAP}, runtime_handler 7 string",
    "ListPodSandboxResponse": "items 1 repeated:PodSandbox",
    "ContainerMetadata": "name 1 string, attempt 2 uint32",
    "ImageSpec": f"image 1 string, annotations 2 {MAP}, user_specified_image 18 string, "
    "runtime_handler 19 string, image_ref 20 string",
    "KeyValue": "key 1 string, value 2 bytes",
    "Mount": "container_path 1 string, host_path 2 string, readonly 3 bool, selinux_relabel 4 bool, "
    "propagation 5 MountPropagation",
    "LinuxContainerResources": "cpu_period 1 int64, cpu_quota 2 int64, cpu_shares 3 int64, "
    "memory_limit_in_bytes 4 int64, oom_score_adj 5 int64, cpuset_cpus 6 string, cpuset_mems 7 string, "
    f"unified 9 {MAP}, memory_swap_limit_in_bytes 10 int64",
    "LinuxContainerSecurityContext": "privileged 2 bool, namespace_options 3 NamespaceOption, "
    "run_as_user 5 Int64Value, run_as_username 6 string, readonly_rootfs 7 bool, "
    "supplemental_groups 8 repeated:int64, no_new_privs 11 bool, run_as_group 12 Int64Value, "
    "masked_paths 13 repeated:string, readonly_paths 14 repeated:string",
    "LinuxContainerConfig": "resources 1 LinuxContainerResources, "
    "security_context 2 LinuxContainerSecurityContext",
    "ContainerConfig": "metadata 1 ContainerMetadata, image 2 ImageSpec, command 3 repeated:string, "
    "args 4 repeated:string, working_dir 5 string, envs 6 repeated:KeyValue, mounts 7 repeated:Mount, "
    f"labels 9 {MAP}, annotations 10 {MAP}, log_path 11 string, stdin 12 bool, stdin_once 13 bool, "
    "tty 14 bool, linux 15 LinuxContainerConfig",
    "CreateContainerRequest": "pod_sandbox_id 1 string, config 2 ContainerConfig, "
    "sandbox_config 3 PodSandboxConfig",
    "CreateContainerResponse": "container_id 1 string",
    "StartContainerRequest": "container_id 1 string",
    "StartContainerResponse": "",
    "StopContainerRequest": "container_id 1 string, timeout 2 int64",
    "StopContainerResponse": "",
    "RemoveContainerRequest": "container_id 1 string",
    "RemoveContainerResponse": "",
    "ContainerStateValue": "state 1 ContainerState",
    "ContainerFilter": f"id 1 string, state 2 ContainerStateValue, pod_sandbox_id 3 string, "
    f"label_selector 4 {MAP}",
    "ListContainersRequest": "filter 1 ContainerFilter",
    "Container": "id 1 string, pod_sandbox_id 2 string, metadata 3 ContainerMetadata, image 4 ImageSpec, "
    f"image_ref 5 string, state 6 ContainerState, created_at 7 int64, labels 8 {MAP}, annotations 9 {MAP}, "
    "image_id 10 string",
    "ListContainersResponse": "containers 1 repeated:Container",
    "ContainerResources": "linux 1 LinuxContainerResources",
    "ContainerStatus": "id 1 string, metadata 2 ContainerMetadata, state 3 ContainerState, "
    "created_at 4 int64, started_at 5 int64, finished_at 6 int64, exit_code 7 int32, image 8 ImageSpec, "
    "image_ref 9 string, "
    f"reason 10 string, message 11 string, labels 12 {MAP}, annotations 13 {MAP}, mounts 14 repeated:Mount, "
    "log_path 15 string, resources 16 ContainerResources, image_id 17 string",
    "ContainerStatusRequest": "container_id 1 string, verbose 2 bool",
    "ContainerStatusResponse": f"status 1 ContainerStatus, info 2 {MAP}",
    "UInt64Value": "value 1 uint64",
    "CpuUsage": "timestamp 1 int64, usage_core_nano_seconds 2 UInt64Value, usage_nano_cores 3 UInt64Value",
    "MemoryUsage": "timestamp 1 int64, working_set_bytes 2 UInt64Value, available_bytes 3 UInt64Value, "
    "usage_bytes 4 UInt64Value, rss_bytes 5 UInt64Value, page_faults 6 UInt64Value, "
    "major_page_faults 7 UInt64Value",
    "SwapUsage": "timestamp 1 int64, swap_available_bytes 2 UInt64Value, swap_usage_bytes 3 UInt64Value",
    "FilesystemIdentifier": "mountpoint 1 string",
    "FilesystemUsage": "timestamp 1 int64, fs_id 2 FilesystemIdentifier, used_bytes 3 UInt64Value, "
    "inodes_used 4 UInt64Value",
    "ContainerAttributes": f"id 1 string, metadata 2 ContainerMetadata, labels 3 {MAP}, annotations 4 {MAP}",
    "ContainerStats": "attributes 1 ContainerAttributes, cpu 2 CpuUsage, memory 3 MemoryUsage, "
    "writable_layer 4 FilesystemUsage, swap 5 SwapUsage",
    "ContainerStatsRequest": "container_id 1 string",
    "ContainerStatsResponse": "stats 1 ContainerStats",
    "ContainerStatsFilter": f"id 1 string, pod_sandbox_id 2 string, label_selector 3 {MAP}",
    "ListContainerStatsRequest": "filter 1 ContainerStatsFilter",
    "ListContainerStatsResponse": "stats 1 repeated:ContainerStats",
    "PodSandboxAttributes": f"id 1 string, metadata 2 PodSandboxMetadata, labels 3 {MAP}, "
    f"annotations 4 {MAP}",
    "NetworkInterfaceUsage": "name 1 string, rx_bytes 2 UInt64Value, rx_errors 3 UInt64Value, "
    "tx_bytes 4 UInt64Value, tx_errors 5 UInt64Value",
    "NetworkUsage": "timestamp 1 int64, default_interface 2 NetworkInterfaceUsage, "
    "interfaces 3 repeated:NetworkInterfaceUsage",
    "ProcessUsage": "timestamp 1 int64, process_count 2 UInt64Value",
    "LinuxPodSandboxStats": "cpu 1 CpuUsage, memory 2 MemoryUsage, network 3 NetworkUsage, "
    "process 4 ProcessUsage, containers 5 repeated:ContainerStats",
    "PodSandboxStats": "attributes 1 PodSandboxAttributes, linux 2 LinuxPodSandboxStats",
    "PodSandboxStatsFilter": f"id 1 string, label_selector 2 {MAP}",
    "ListPodSandboxStatsRequest": "filter 1 PodSandboxStatsFilter",
    "ListPodSandboxStatsResponse": "stats 1 repeated:PodSandboxStats",
    "Image": "id 1 string, repo_tags 2 repeated:string, repo_digests 3 repeated:string, size 4 uint64, "
    "uid 5 Int64Value, username 6 string, spec 7 ImageSpec, pinned 8 bool",
    "ImageFilter": "image 1 ImageSpec",
    "ListImagesRequest": "filter 1 ImageFilter",
    "ListImagesResponse": "images 1 repeated:Image",
    "ImageStatusRequest": "image 1 ImageSpec, verbose 2 bool",
    "ImageStatusResponse": f"image 1 Image, info 2 {MAP}",
}

# Upstream numbers our copy leaves out, with the upstream field each stands for.
RESERVED: dict[str, dict[int, str]] = {
    "StatusResponse": {3: "runtime_handlers", 4: "features"},
    "NamespaceOption": {5: "userns_options"},
    "LinuxSandboxSecurityContext": {
        2: "selinux_options",
        7: "seccomp_profile_path",
        9: "seccomp",
        10: "apparmor",
        11: "supplemental_groups_policy",
    },
    "PodSandboxConfig": {9: "windows"},
    "Mount": {
        6: "uidMappings",
        7: "gidMappings",
        8: "recursive_read_only",
        9: "image",
        10: "image_sub_path",
        11: "mount_options",
    },
    "LinuxContainerResources": {8: "hugepage_limits"},
    "LinuxContainerSecurityContext": {
        1: "capabilities",
        4: "selinux_options",
        9: "apparmor_profile",
        10: "seccomp_profile_path",
        15: "seccomp",
        16: "apparmor",
        17: "supplemental_groups_policy",
    },
    "ContainerConfig": {8: "devices", 16: "windows", 17: "CDI_devices", 18: "stop_signal"},
    "ContainerResources": {2: "windows"},
    "ContainerStatus": {18: "user", 19: "stop_signal"},
    "CpuUsage": {4: "psi"},
    "MemoryUsage": {8: "psi"},
    "ContainerStats": {6: "io"},
    "LinuxPodSandboxStats": {6: "io"},
    "PodSandboxStats": {3: "windows"},
}

ENUMS = {
    "Protocol": {"TCP": 0, "UDP": 1, "SCTP": 2},
    "NamespaceMode": {"POD": 0, "CONTAINER": 1, "NODE": 2, "TARGET": 3},
    "PodSandboxState": {"SANDBOX_READY": 0, "SANDBOX_NOTREADY": 1},
    "MountPropagation": {
        "PROPAGATION_PRIVATE": 0,
        "PROPAGATION_HOST_TO_CONTAINER": 1,
        "PROPAGATION_BIDIRECTIONAL": 2,
    },
    "ContainerState": {
        "CONTAINER_CREATED": 0,
        "CONTAINER_RUNNING": 1,
        "CONTAINER_EXITED": 2,
        "CONTAINER_UNKNOWN": 3,
    },
}

SERVICES = {
    "RuntimeService": [
        "Version",
        "RunPodSandbox",
        "StopPodSandbox",
        "RemovePodSandbox",
        "PodSandboxStatus",
        "ListPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "ListContainers",
        "ContainerStatus",
        "ContainerStats",
        "ListContainerStats",
        "ListPodSandboxStats",
        "Status",
    ],
    "ImageService": ["ListImages", "ImageStatus"],
}


def _expected_kind(word: str) -> str:
    repeated, _, base = word.rpartition(":")
    if base in TABLE or base in ENUMS:
        base = P + base
    return f"repeated {base}" if repeated else base


def _split_row(item: str) -> tuple[str, int, str]:
    name, number, kind = item.split(" ", 2)
    return name, int(number), kind if kind.startswith("map<") else _expected_kind(kind)


def _table(message: str) -> dict[str, tuple[int, str]]:
    # Map types contain ", ": split on the field separator only where a new "name number" starts.
    text, items, depth, cur = TABLE[message], [], 0, ""
    for ch in text:
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        items.append(cur.strip())
    return {name: (number, kind) for name, number, kind in map(_split_row, items)}


def test_the_table_covers_every_message_of_our_copy() -> None:
    assert sorted(api_pb2.DESCRIPTOR.message_types_by_name) == sorted(TABLE)


@pytest.mark.parametrize("message", sorted(TABLE))
def test_fields_numbers_and_types(message: str) -> None:
    desc = api_pb2.DESCRIPTOR.message_types_by_name[message]
    got = {f.name: (f.number, _kind(f)) for f in desc.fields}
    assert got == _table(message)


@pytest.mark.parametrize("message", sorted(TABLE))
def test_left_out_numbers_are_reserved(message: str) -> None:
    proto = descriptor_pb2.DescriptorProto()
    api_pb2.DESCRIPTOR.message_types_by_name[message].CopyToProto(proto)
    reserved = {n for r in proto.reserved_range for n in range(r.start, r.end)}
    assert reserved == set(RESERVED.get(message, {}))
    assert not reserved & {number for number, _ in _table(message).values()}


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values(enum: str) -> None:
    values = {v.name: v.number for v in api_pb2.DESCRIPTOR.enum_types_by_name[enum].values}
    assert values == ENUMS[enum]


def test_enums_are_all_listed() -> None:
    assert sorted(api_pb2.DESCRIPTOR.enum_types_by_name) == sorted(ENUMS)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_methods_and_paths(service: str) -> None:
    desc = api_pb2.DESCRIPTOR.services_by_name[service]
    assert desc.full_name == f"runtime.v1.{service}"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in desc.methods}
    assert methods == {name: (f"{name}Request", f"{name}Response") for name in SERVICES[service]}
    assert all(not (m.client_streaming or m.server_streaming) for m in desc.methods)


def test_memory_usage_encoding_by_hand() -> None:
    """MemoryUsage{working_set_bytes: {value: 300}}: field 2 (tag 0x12), length 3, UInt64Value field 1
    (tag 0x08) with varint 300 = ac 02. Unset wrappers stay absent, which is how CRI says "no figure"."""
    usage = api_pb2.MemoryUsage(working_set_bytes=api_pb2.UInt64Value(value=300))
    assert usage.SerializeToString() == bytes.fromhex("12 03 08 ac02")
    decoded = api_pb2.MemoryUsage.FromString(bytes.fromhex("12 03 08 ac02"))
    assert decoded.HasField("working_set_bytes")
    assert not decoded.HasField("usage_bytes")


def test_env_value_travels_as_the_same_bytes_a_string_would() -> None:
    """KeyValue.value is bytes upstream now and was string before: tag 0x12 either way."""
    assert api_pb2.KeyValue(key="A", value=b"b").SerializeToString() == bytes.fromhex("0a 01 41 12 01 62")

"""Container records as containerd's CRI plugin writes them (labels, sandbox annotation), made with ctr in
a test containerd that runs without the CRI plugin: the names the containers-API fallback reads
(test_discover_cli, test_exporter_discover)."""

from __future__ import annotations

from pathlib import Path

from shimstats.kube_names import (
    CONTAINER_NAME_LABEL,
    KIND_LABEL,
    POD_NAME_LABEL,
    POD_NAMESPACE_LABEL,
    SANDBOX_ID_ANNOTATION,
)
from tests.containerd_env import Containerd, busybox_rootfs

__all__ = ["NS", "delete_record", "pod_record"]

NS = "k8s.io"


def pod_record(
    containerd: Containerd,
    directory: Path,
    cid: str,
    pod: str,
    *,
    kind: str,
    name: str = "",
    sandbox: str = "",
) -> str:
    """A container record as containerd's CRI plugin writes it (labels, sandbox annotation); no task is
    started: the names come from the containers' metadata alone."""
    labels = {KIND_LABEL: kind, POD_NAME_LABEL: pod, POD_NAMESPACE_LABEL: "shop"}
    if name:
        labels[CONTAINER_NAME_LABEL] = name
    flags = [flag for key, value in labels.items() for flag in ("--label", f"{key}={value}")]
    if sandbox:
        flags += ["--annotation", f"{SANDBOX_ID_ANNOTATION}={sandbox}"]
    rootfs = busybox_rootfs(directory / cid)
    containerd.ctr("containers", "create", *flags, "--rootfs", str(rootfs), cid, "sleep", "1", namespace=NS)
    return cid


def delete_record(containerd: Containerd, cid: str) -> None:
    containerd.ctr("containers", "delete", cid, namespace=NS)

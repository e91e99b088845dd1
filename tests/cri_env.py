"""containerd 1.6 with its CRI plugin, for tests: what the kubelet talks to, on private sockets.

A :class:`CriContainerd` is a :class:`tests.containerd_env.Containerd` (own mount namespace, own root,
state and sockets under one temp directory) with the ``io.containerd.grpc.v1.cri`` plugin left on and
configured for this machine. Facts it is built on (found on Debian 12's containerd 1.6.20):

* there is no registry: the pause and busybox images are OCI archives built here from busybox-static and
  imported with ``ctr -n k8s.io images import``; ``sandbox_image`` names the pause image;
* CRI gives the sandbox oom_score_adj -998 and root here lacks CAP_SYS_RESOURCE, so
  ``restrict_oom_score_adj = true`` (clamp to containerd's own);
* pods run in the node's network namespace (no CNI plugin needed); CRI then requires an empty hostname.
  The CNI config and binary directories point into the temp directory, so the host's are never read;
* the overlayfs snapshotter stays off, as in the base harness: images are unpacked with ``native``;
* a CRI plugin that fails to load leaves containerd running and answering every CRI call UNIMPLEMENTED,
  so start() checks ``ctr plugins ls`` and fails with the plugin's error;
* containerd 1.6.20 ignores a runtime's ``runtime_path`` (containerd#8207, fixed in 1.6.21 and 1.7.1): a
  runtime's shim binary must be on containerd's PATH (``env``);
* sandboxes left by a crashed run come back NotReady after a restart: start() removes every pod first.

Pods get a cgroup parent under one root per instance (``/shimstats-cri-<hex>/<pod>``), the way the kubelet
gives each pod its own cgroup, and like the kubelet the harness creates that pod cgroup (with a memory
limit) and removes it after the pod is gone. ListPodSandboxStats needs a cgroup parent: containerd 1.6
reads the pod's figures from that host cgroup directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import tarfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shimstats._proto.cri.runtime.v1 import api_pb2
from shimstats.cri_client import CriClient, CriError, PodSandboxRecord
from tests.containerd_env import (
    BUSYBOX,
    Containerd,
    LeftoversError,
    _alive,
    busybox_rootfs,
    cgroup_mounts,
    controller_root,
    memory_cgroup_root,
)

CRI_NAMESPACE = "k8s.io"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
PAUSE_IMAGE = "shimstats.test/pause:1"
BUSYBOX_IMAGE = "shimstats.test/busybox:1"
POD_NAMESPACE = "shimstats-test"
#: The pod cgroup's limit (the kubelet sets one for Guaranteed and Burstable pods).
POD_MEMORY_LIMIT = 512 * 1024 * 1024
#: CRI calls that start or stop processes get longer than the client's default deadline.
SLOW_CALL = 60.0
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


class CriUnavailable(RuntimeError):
    """containerd started but its CRI plugin did not load, or the images could not be made ready."""


@dataclass(frozen=True)
class Runtime:
    """One runtime handler: a key under ``[...cri.containerd.runtimes]``.

    ``config_path`` goes to the shim as runtime options (``options.ConfigPath``), which CRI sends as
    ``runtimeoptions.v1.Options`` for any runtime type other than runc's. ``runtime_path`` is honoured
    from containerd 1.6.21 and 1.7.1 on only (containerd#8207).
    """

    runtime_type: str
    config_path: Path | None = None
    runtime_path: Path | None = None


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    handler: str
    config: api_pb2.PodSandboxConfig
    cgroup_parent: str  # e.g. /shimstats-cri-1a2b3c4d/web (relative to each hierarchy's mount)
    log_directory: Path


@dataclass(frozen=True)
class CriContainer:
    id: str
    name: str
    pod: Pod
    log_path: Path

    @property
    def cgroup(self) -> str:
        """The container's cgroup path: CRI puts it at <pod cgroup parent>/<container id>."""
        return f"{self.pod.cgroup_parent}/{self.id}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def _layer_tar(rootfs: Path) -> bytes:
    """The rootfs as an uncompressed, reproducible layer tar (owner root, mtime 0, sorted)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(rootfs).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def oci_image_archive(path: Path, name: str, rootfs: Path, entrypoint: Sequence[str]) -> Path:
    """Write an OCI image layout tar of one image (one layer) that ``ctr images import`` names ``name``.

    ctr takes the image's name from the ``io.containerd.image.name`` annotation of the index entry.
    """
    arch = _GO_ARCH.get(platform.machine(), platform.machine())
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def canonical(value: object) -> bytes:
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()

    layer = _layer_tar(rootfs)
    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(canonical(config), "application/vnd.oci.image.config.v1+json"),
        "layers": [layer_desc],
    }
    manifest_desc = blob(canonical(manifest), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["platform"] = {"architecture": arch, "os": "linux"}
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rpartition(":")[2],
    }
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}
    files = {"oci-layout": canonical({"imageLayoutVersion": "1.0.0"}), "index.json": canonical(index)}
    files.update({f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in blobs.items()})
    with tarfile.open(path, "w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cgroup_dirs(path: str) -> list[Path]:
    """``path`` in every mounted cgroup hierarchy (whether or not it exists there)."""
    return [mount / path.lstrip("/") for mount in cgroup_mounts()]


class CriContainerd(Containerd):
    """A test containerd serving the CRI, with the given runtime handlers (``runc`` is always there)."""

    disabled_plugins = tuple(p for p in Containerd.disabled_plugins if p != CRI_PLUGIN)

    def __init__(
        self,
        runtimes: Mapping[str, Runtime] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        default_runtime: str = "runc",
    ) -> None:
        """``default_runtime`` is the handler for pods that name none (one not configured fails CRI)."""
        super().__init__(start_timeout=start_timeout, env=env)
        self.runtimes = {"runc": Runtime("io.containerd.runc.v2"), **(runtimes or {})}
        self.default_runtime = default_runtime
        self.cgroup_root = f"/shimstats-cri-{uuid.uuid4().hex[:8]}"
        self._client: CriClient | None = None
        self.removed_at_start: list[PodSandboxRecord] = []

    @property
    def cri_address(self) -> str:
        return f"unix://{self.address}"

    @property
    def client(self) -> CriClient:
        if self._client is None:
            raise CriUnavailable("the CRI containerd is not started")
        return self._client

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> CriContainerd:
        super().__enter__()
        return self

    def _config(self) -> str:
        base = self.base_dir
        section = 'plugins."io.containerd.grpc.v1.cri"'
        lines = [
            f"[{section}]",
            f"  sandbox_image = {json.dumps(PAUSE_IMAGE)}",
            "  restrict_oom_score_adj = true",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            f"[{section}.containerd]",
            '  snapshotter = "native"',
            f"  default_runtime_name = {json.dumps(self.default_runtime)}",
            f"[{section}.cni]",
            f"  bin_dir = {json.dumps(str(base / 'cni' / 'bin'))}",
            f"  conf_dir = {json.dumps(str(base / 'cni' / 'conf'))}",
        ]
        for name, runtime in self.runtimes.items():
            lines += [
                f"[{section}.containerd.runtimes.{json.dumps(name)}]",
                f"  runtime_type = {json.dumps(runtime.runtime_type)}",
            ]
            if runtime.runtime_path is not None:
                lines.append(f"  runtime_path = {json.dumps(str(runtime.runtime_path))}")
            if runtime.config_path is not None:
                lines += [
                    f"[{section}.containerd.runtimes.{json.dumps(name)}.options]",
                    f"  ConfigPath = {json.dumps(str(runtime.config_path))}",
                ]
        return super()._config() + "\n".join(lines) + "\n"

    def start(self) -> None:
        for sub in ("cni/bin", "cni/conf", "images", "pods"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        super().start()
        self._check_cri_plugin()
        if self._client is not None:  # started again after a crash
            self._client.close()
        self._client = CriClient(self.cri_address, timeout=10.0)
        # containerd restarted over a crashed run's directories lists that run's pods as NotReady.
        self.removed_at_start = self.remove_all_pods()
        self._import_images()

    def _check_cri_plugin(self) -> None:
        """containerd keeps running without a CRI plugin that failed to load: say why it failed."""
        for line in self.ctr("plugins", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields[:2] == [CRI_PLUGIN.rpartition(".")[0], "cri"]:
                if fields[-1] == "ok":
                    return
                errors = [
                    line
                    for line in self.log_path.read_text(errors="replace").splitlines()
                    if "cri" in line and ("error" in line or "fatal" in line)
                ]
                raise CriUnavailable(
                    f"containerd's CRI plugin did not load ({fields[-1]}); from {self.log_path}: "
                    + (" | ".join(errors[-3:]) or "(no error logged)")
                )
        raise CriUnavailable(f"`ctr plugins ls` does not list {CRI_PLUGIN}")

    def _import_images(self) -> None:
        images = self.base_dir / "images"
        pause_root = images / "pause-rootfs" / "bin"
        pause_root.mkdir(parents=True, exist_ok=True)
        (pause_root / "busybox").write_bytes(BUSYBOX.read_bytes())
        (pause_root / "busybox").chmod(0o755)
        archives = [
            oci_image_archive(
                images / "pause.tar",
                PAUSE_IMAGE,
                pause_root.parent,
                # SIGKILL from StopPodSandbox ends it; busybox sleep takes seconds only.
                ["/bin/busybox", "sleep", "2147483647"],
            ),
            oci_image_archive(images / "busybox.tar", BUSYBOX_IMAGE, busybox_rootfs(images / "bb"), ["sh"]),
        ]
        for archive in archives:
            self.ctr("images", "import", "--snapshotter", "native", str(archive), namespace=CRI_NAMESPACE)
        # CRI learns about imported images from containerd's events: wait until it has both.
        deadline = time.monotonic() + 10.0
        for name in (PAUSE_IMAGE, BUSYBOX_IMAGE):
            request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name))
            while not self.client.call(self.client.images.ImageStatus, request, name="ImageStatus").image.id:
                if time.monotonic() > deadline:
                    raise CriUnavailable(f"CRI does not see the imported image {name}")
                time.sleep(0.05)

    def stop(self, *, strict: bool = True) -> None:
        """Remove every pod through the CRI, then stop containerd (base class), then the pod cgroups."""
        left: list[str] = []
        if self._client is not None:
            try:
                self.remove_all_pods()
            except CriError as exc:
                left.append(f"pods not removed through the CRI ({exc})")
            self._client.close()
            self._client = None
        try:
            super().stop(strict=strict)
        finally:
            left += self._remove_cgroup_root()
        if left and strict:
            raise LeftoversError("CRI containerd left: " + "; ".join(left))

    def _remove_cgroup_root(self) -> list[str]:
        left = []
        for top in cgroup_dirs(self.cgroup_root):
            if not top.exists():
                continue
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            try:
                top.rmdir()
            except OSError as exc:
                left.append(f"cgroup {top} ({exc.strerror})")
        return left

    # -- pods and containers -----------------------------------------------------------------

    def run_pod(self, name: str, handler: str) -> Pod:
        """RunPodSandbox in the node's network namespace, in its own cgroup (limit POD_MEMORY_LIMIT)."""
        cgroup_parent = f"{self.cgroup_root}/{name}"
        memory = memory_cgroup_root() / cgroup_parent.lstrip("/")
        memory.mkdir(parents=True)
        (memory / "memory.limit_in_bytes").write_text(str(POD_MEMORY_LIMIT))
        log_directory = self.base_dir / "pods" / name
        log_directory.mkdir(parents=True)
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace=POD_NAMESPACE),
            hostname="",
            log_directory=str(log_directory),
            labels={"shimstats.test/pod": name},
            linux=api_pb2.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
                ),
            ),
        )
        request = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=handler)
        response = self.client.call(
            self.client.runtime.RunPodSandbox, request, name="RunPodSandbox", timeout=SLOW_CALL
        )
        return Pod(response.pod_sandbox_id, name, handler, config, cgroup_parent, log_directory)

    def create_container(
        self, pod: Pod, name: str, command: Sequence[str], *, memory_limit: int = 0
    ) -> CriContainer:
        """CreateContainer from the busybox image; its output goes to ``<pod log dir>/<name>.log``."""
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=BUSYBOX_IMAGE),
            command=list(command),
            log_path=f"{name}.log",
            labels={"shimstats.test/container": name},
            linux=api_pb2.LinuxContainerConfig(
                resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=memory_limit)
            ),
        )
        request = api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
        )
        response = self.client.call(
            self.client.runtime.CreateContainer, request, name="CreateContainer", timeout=SLOW_CALL
        )
        return CriContainer(response.container_id, name, pod, pod.log_directory / f"{name}.log")

    def start_container(self, container: CriContainer) -> None:
        request = api_pb2.StartContainerRequest(container_id=container.id)
        self.client.call(
            self.client.runtime.StartContainer, request, name="StartContainer", timeout=SLOW_CALL
        )

    def remove_pod(self, pod_id: str) -> None:
        """StopPodSandbox then RemovePodSandbox (CRI stops and removes the pod's containers with it)."""
        for method, name in (
            (self.client.runtime.StopPodSandbox, "StopPodSandbox"),
            (self.client.runtime.RemovePodSandbox, "RemovePodSandbox"),
        ):
            request = getattr(api_pb2, f"{name}Request")(pod_sandbox_id=pod_id)
            self.client.call(method, request, name=name, timeout=SLOW_CALL)

    def remove_pod_cgroup(self, pod: Pod) -> list[str]:
        """rmdir the pod's cgroup in every hierarchy, as the kubelet does; what could not go (busy)."""
        left = []
        for directory in cgroup_dirs(pod.cgroup_parent):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                left.append(f"cgroup {directory} ({exc.strerror})")
        return left

    def remove_all_pods(self) -> list[PodSandboxRecord]:
        """Stop and remove every pod; returns them as they were listed."""
        pods = self.client.list_pod_sandboxes()
        for pod in pods:
            self.remove_pod(pod.id)
        return pods

    # -- what a removed pod may have left --------------------------------------------------------

    def mounts_naming(self, ids: Sequence[str]) -> list[str]:
        """Mount points in containerd's mount namespace whose path contains one of ``ids``."""
        if not self.pid or not _alive(self.pid):
            return []
        with open(f"/proc/{self.pid}/mountinfo", encoding="utf-8") as f:
            points = [line.split(" ")[4] for line in f]
        return [point for point in points if any(i in point for i in ids)]

    def leftovers(self, pod: Pod, containers: Sequence[CriContainer], pids: Sequence[int]) -> list[str]:
        """Everything a stopped and removed pod could have left, as one list (empty when clean)."""
        ids = [pod.id, *(c.id for c in containers)]
        left = [f"pod {p.id} still listed" for p in self.client.list_pod_sandboxes() if p.id == pod.id]
        left += [f"container {c.id} still listed" for c in self.client.list_containers() if c.id in ids]
        left += [f"shim pid {pid}" for pid in self.shim_pids()]
        left += [f"process {pid}" for pid in pids if _alive(pid)]
        left += [f"mount {point}" for point in self.mounts_naming(ids)]
        left += [f"cgroup {d}" for c in containers for d in cgroup_dirs(c.cgroup) if d.exists()]
        left += [f"cgroup {d}" for d in cgroup_dirs(f"{pod.cgroup_parent}/{pod.id}") if d.exists()]
        tasks = self.base_dir / "state" / "io.containerd.runtime.v2.task" / CRI_NAMESPACE
        left += [f"bundle {tasks / i}" for i in ids if (tasks / i).exists()]
        sockets = self.run_dir / "containerd" / "s"
        left += [f"socket {entry}" for entry in (sockets.iterdir() if sockets.exists() else [])]
        return left


def cgroup_pids(path: str) -> list[int]:
    """Processes in a cgroup (memory hierarchy), for checking later that they are gone."""
    procs = memory_cgroup_root() / path.lstrip("/") / "cgroup.procs"
    return [int(p) for p in procs.read_text().split()]


def cpuacct_dir(path: str) -> Path:
    root = controller_root("cpuacct")
    if root is None:
        raise CriUnavailable("no cgroup v1 cpuacct hierarchy is mounted")
    return root / path.lstrip("/")

"""What ``shimstats exporter --discover`` exports: every Kata sandbox on the node, its containers, names.

At every scrape (the exporter's TargetSource):

1. the sandboxes: the directories under the Kata roots that hold a shim's ``shim-monitor.sock``
   (shimstats.discovery.list_sandboxes). The roots are listed again at each scrape rather than watched with
   inotify: listing 110 sandbox directories took 1.7 ms against 6 µs for an asyncinotify watch, about 1 % of
   that node's scrape (docs/benchmarks.md, ``python -m bench.sandbox_watch``), with nothing to keep in step,
   no socket that appears before its directory's watch, and nothing missed while a watcher restarts;
2. each sandbox's agent address, asked once from its shim (``GET /agent-url``) and kept while the shim's
   socket is the same file (same inode): the CID or hybrid-vsock path of a VM does not change during its
   life, and a new sandbox under a reused id has a new socket;
3. the containers and their Kubernetes names from the CRI (``ListPodSandbox`` and ``ListContainers`` of the
   running containers; labels ``io.kubernetes.*`` become container, pod, namespace; the image as the CRI
   reports it; ``created_at`` for container_start_time_seconds: the records of shimstats.kube_names that
   ``shimstats discover`` shows too). With a CRI,
   only sandboxes it lists as READY are exported: a stopped pod's VM is going away, and reading it would
   raise a false "agent down".
   When the CRI does not answer, containerd's containers API on the same socket names them
   (shimstats.kube_names.from_containerd: no start times, no readiness). Without either (``--cri none``, or
   neither ever answered), each sandbox is exported as itself: one "container" whose id is the sandbox id,
   which the guest agent reads as the sandbox's pause container. When both stop answering after one has
   answered, the last listing stays in use, and that is logged once.

A sandbox whose shim cannot name its agent (not started yet, a hung shim, a remote hypervisor) is left out
of the scrape and logged once, until it answers. ``gone`` tells the exporter that a sandbox whose agent did
not answer has in fact left (its shim socket vanished), so that it leaves quietly instead of counting as down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shimstats.containerd_grpc import ContainerdError
from shimstats.cri_client import CriClient, CriError
from shimstats.discovery import (
    DEFAULT_ROOTS,
    MONITOR_SOCKET,
    SHIMSTATS_AGENT_PORT,
    DiscoveryError,
    Sandbox,
    list_sandboxes,
    resolve_agent,
)
from shimstats.exporter import AgentTarget, ContainerTarget
from shimstats.kube_names import Names, PodName, cri_names, from_containerd

if TYPE_CHECKING:
    from shimstats.kata_spec import AgentPort

__all__ = ["CriNames", "DiscoveredTargets", "PodNameSource", "PodNames", "pod_names"]

log = logging.getLogger("shimstats.exporter")

NS_PER_S = 1e9


@dataclass(frozen=True)
class PodNames:
    """One pod sandbox as the CRI names it, with its running containers."""

    pod: str
    namespace: str
    ready: bool
    containers: tuple[ContainerTarget, ...] = ()


class PodNameSource(Protocol):
    """Where pod and container names come from (the CRI; a fixed table in bench/exporter_scale.py)."""

    address: str

    def list(self) -> dict[str, PodNames]:
        """Pod sandbox id → names and running containers; CriError when it cannot be asked."""

    def close(self) -> None:
        """Release the connection."""


class CriNames:
    """Kubernetes names from the CRI at ``address`` (shimstats.kube_names.cri_names: one ListPodSandbox and
    one ListContainers per call, on a channel kept open), else from containerd's containers API on the same
    socket (shimstats.kube_names.from_containerd: names, no start times, every pod taken as ready)."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        self._client = CriClient(address, timeout=timeout)

    def list(self) -> dict[str, PodNames]:
        """Pod sandbox id → names and running containers; CriError naming both sources if neither answers."""
        try:
            names = cri_names(self._client)
        except CriError as cri_error:
            try:
                names = from_containerd(self.address, timeout=self.timeout)
            except ContainerdError as containerd_error:
                raise CriError(f"{cri_error}; and {containerd_error}") from None
        return pod_names(names)

    def close(self) -> None:
        self._client.close()


EXPORTED_STATES = ("RUNNING", "")
"""Containers the exporter reads: the CRI's running ones, and every one a source that has no state names."""


def pod_names(names: Names) -> dict[str, PodNames]:
    """Pod sandbox id → its names and the containers to read, from either source of shimstats.kube_names."""
    pods = names.pods()
    groups = names.by_sandbox()
    found: dict[str, PodNames] = {}
    for sandbox_id in pods.keys() | groups.keys():
        pod = pods.get(sandbox_id) or PodName(sandbox_id, "", "")
        targets = sorted(
            (
                ContainerTarget(
                    c.id,
                    c.container,
                    c.pod,
                    c.namespace,
                    c.image,
                    created=c.created_at_ns / NS_PER_S if c.created_at_ns else None,
                )
                for c in groups.get(sandbox_id, ())
                if c.state in EXPORTED_STATES
            ),
            key=lambda t: t.id,
        )
        found[sandbox_id] = PodNames(pod.pod, pod.namespace, pod.ready, tuple(targets))
    return found


@dataclass(frozen=True)
class _Known:
    """A sandbox's agent address, valid while its shim socket is the same file."""

    inode: int
    address: str


class DiscoveredTargets:
    """The exporter's TargetSource for ``--discover`` (see the module docstring)."""

    def __init__(
        self,
        roots: Sequence[str] = DEFAULT_ROOTS,
        *,
        port: AgentPort = SHIMSTATS_AGENT_PORT,
        names: PodNameSource | None = None,
        timeout: float = 3.0,
    ) -> None:
        self.roots = tuple(roots)
        self.port: AgentPort = port
        self.names = names
        self.timeout = timeout
        self._lock = threading.Lock()
        self._known: dict[str, _Known] = {}
        self._unresolved: dict[str, str] = {}
        """sandbox id → the last reason its shim could not name the agent (logged once per reason)."""
        self._pods: dict[str, PodNames] | None = None
        self._cri_error = ""
        self._roots_error = ""

    def targets(self) -> Sequence[AgentTarget]:
        with self._lock:  # concurrent scrapes share the caches
            sandboxes = self._sandboxes()
            pods = self._list_pods()
            if pods is not None:
                sandboxes = [s for s in sandboxes if s.id in pods and pods[s.id].ready]
            addresses = self._addresses(sandboxes)
        found = []
        for s in sandboxes:
            address = addresses.get(s.id)
            if address is None:
                continue
            if pods is None:
                found.append(AgentTarget(address, (ContainerTarget(s.id),), sandbox=s.id))
                continue
            names = pods[s.id]
            found.append(AgentTarget(address, names.containers, s.id, names.pod, names.namespace))
        return found

    def gone(self, target: AgentTarget) -> bool:
        return not any(os.path.exists(os.path.join(r, target.sandbox, MONITOR_SOCKET)) for r in self.roots)

    def close(self) -> None:
        if self.names is not None:
            self.names.close()

    def _sandboxes(self) -> list[Sandbox]:
        try:
            sandboxes = list_sandboxes(self.roots)
        except DiscoveryError as exc:
            if str(exc) != self._roots_error:
                log.error("cannot list the Kata sandboxes: %s", exc)
            self._roots_error = str(exc)
            return []
        self._roots_error = ""
        return sandboxes

    def _list_pods(self) -> dict[str, PodNames] | None:
        """The CRI's pods now; the last good listing when it fails; None without a CRI ever answering."""
        if self.names is None:
            return None
        try:
            self._pods = self.names.list()
        except CriError as exc:
            if str(exc) != self._cri_error:
                kept = "keeping its last listing" if self._pods is not None else "exporting sandboxes by id"
                log.warning("cannot list pods from the CRI, %s: %s", kept, exc)
            self._cri_error = str(exc)
            return self._pods
        if self._cri_error:
            log.info("CRI answering again", extra={"address": self.names.address})
        self._cri_error = ""
        return self._pods

    def _addresses(self, sandboxes: Sequence[Sandbox]) -> dict[str, str]:
        """Each sandbox's agent address: kept from before, or asked from its shim (all new ones at once)."""
        present = {s.id for s in sandboxes}
        for gone in [i for i in self._known if i not in present]:
            del self._known[gone]
        for gone in [i for i in self._unresolved if i not in present]:
            del self._unresolved[gone]
        inodes = {s.id: _inode(s.socket) for s in sandboxes}
        ask = [s for s in sandboxes if s.id not in self._known or self._known[s.id].inode != inodes[s.id]]
        if ask:
            answers = asyncio.run(self._resolve(ask))
            for s, answer in zip(ask, answers):
                if isinstance(answer, str):
                    self._known[s.id] = _Known(inodes[s.id], answer)
                    self._unresolved.pop(s.id, None)
                    continue
                self._known.pop(s.id, None)
                if self._unresolved.get(s.id) != str(answer):
                    log.warning("sandbox left out: %s", answer, extra={"sandbox": s.id})
                self._unresolved[s.id] = str(answer)
        return {i: k.address for i, k in self._known.items()}

    async def _resolve(self, sandboxes: Sequence[Sandbox]) -> list[str | DiscoveryError]:
        async def one(sandbox: Sandbox) -> str | DiscoveryError:
            try:
                return str((await resolve_agent(sandbox, self.port, self.timeout)).address)
            except DiscoveryError as exc:
                return exc

        return list(await asyncio.gather(*(one(s) for s in sandboxes)))


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1

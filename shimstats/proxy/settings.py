"""What ``start`` hands the serving process: its settings and the Task service names it forwards.

A plain dataclass in a module of its own: ``start`` builds the serving process's command line from it and
must not import the server (asyncio, protobuf, the adapter) to do so.
"""

from __future__ import annotations

from dataclasses import dataclass

from shimstats.proxy.config import Fallback

__all__ = ["TASK_V2_SERVICE", "TASK_V3_SERVICE", "DaemonSettings"]

TASK_V2_SERVICE = "containerd.task.v2.Task"
"""The service containerd dials on a shim that printed a plain address (docs/spec/metrics.md §1.1)."""
TASK_V3_SERVICE = "containerd.task.v3.Task"
"""Same messages as v2 (docs/spec/metrics.md §1.1); a shim that answers JSON version 3 serves this name."""


@dataclass(frozen=True)
class DaemonSettings:
    """Everything the serving process needs; ``start`` resolves it and passes it on the command line."""

    listen: str
    inner_address: str
    agent: str
    inner_service: str = TASK_V2_SERVICE
    metrics_format: str = "auto"
    stats_fallback: Fallback = "inner"
    stats_timeout: float = 10.0
    namespace: str = ""
    own_config: str = ""
    inner_config_path: str = ""
    listen_fd: int = -1
    """A socket ``start`` already bound and listens on at ``listen`` (as containerd's own shims hand their
    socket to the serving child), or -1: bind ``listen`` ourselves."""

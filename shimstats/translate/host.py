"""Which Metrics format to send: ``--metrics-format auto|v1|v2``.

Why "auto" means the host's cgroup mode: containerd's CRI plugin decodes either format by its type URL, but
its task-metrics collector (the Prometheus exporter) picks its decoder from the host's own cgroup mode and
fails on the other format (docs/spec/formulas.md §1). The host is v2 when the root of a cgroup2 mount sits
at the cgroupfs root, which shows as a ``cgroup.controllers`` file there (only cgroup2 has it); a hybrid host
(cgroup2 only under ``unified/``) counts as v1, as it does for containerd.
"""

from __future__ import annotations

import os
from typing import Literal

OutputFormat = Literal["v1", "v2"]
SETTINGS = ("auto", "v1", "v2")


def resolve_format(setting: str, cgroupfs_root: str = "/sys/fs/cgroup") -> OutputFormat:
    """ "v1"/"v2" as given; "auto" = the host's cgroup mode under ``cgroupfs_root``."""
    if setting == "v1":
        return "v1"
    if setting == "v2":
        return "v2"
    if setting != "auto":
        raise ValueError(f"metrics format {setting!r}: expected one of {', '.join(SETTINGS)}")
    return "v2" if os.path.isfile(os.path.join(cgroupfs_root, "cgroup.controllers")) else "v1"

"""Names the guest agent and the host's translation both need, apart from the agent's I/O.

translate (on the host) reads the agent's answer by these names; importing them from here keeps the host
from importing the guest's reader, which opens cgroup files.
"""

from __future__ import annotations

__all__ = ["BLKIO_FIELDS", "KERNEL_PARTS"]

KERNEL_PARTS = (
    "kernel_stack",
    "pagetables",
    "sec_pagetables",
    "percpu",
    "slab_reclaimable",
    "slab_unreclaimable",
    "vmalloc",
)
"""v2 memory.stat keys summed as kernel usage when the kernel has no ``kernel`` key (before 5.19)."""

BLKIO_FIELDS = (
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "io_queued_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
    "sectors_recursive",
)
"""kata's BlkioStats lists, in its field order (the file each one is read from is in
guest_agent.reader.BLKIO_GROUPS)."""

"""guest_agent: reads a container's cgroup inside the VM and answers kata-agent's StatsContainer.

Imports only the standard library, protobuf and shimstats' ttrpc/_proto modules:
never grpcio or psutil, so it fits a small guest image.

Modules, in the order data flows:
- ``layout``: where each controller lives under a cgroupfs root (v1, v2 or hybrid);
- ``parse``: pure parsers, one per kernel file format, strict and naming file and line;
- ``files``: keeps kernel files open and re-reads them with pread (cheap on cgroupfs);
- ``reader`` → ``record``: one cgroup's files → a version-aware record (the per-version rules live here);
- ``kata``: the record spelled as kata-agent's StatsContainerResponse (swap semantics table);
- ``lookup``: container id → cgroup path (flags, root ids, cached discovery);
- ``service``: the ttrpc handlers and their statuses; ``logs``: text or JSON log lines;
- ``__main__``: the ``shimstats-agent`` command; ``bench``: its benchmarks.
"""

"""Kernel files the reader could not use, counted per file name and logged once per file.

Why: the reader leaves out a figure whose file is missing or garbled instead of failing the whole answer
(guest_agent.reader), so without a trace such a figure would just look like 0 on the host. Each miss counts
under its kernel file name (``memory.failcnt``, ``hugetlb.2MB.events``: a bounded set, fit for a metric
label) and logs one warning the first time it is seen for a file path, i.e. once per cgroup and file, not
once per call. The counts are served by our own ttrpc service (guest_agent.service, ``ReadErrors``).
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("guest_agent")

MAX_LOGGED = 10_000
"""File paths remembered as already logged; beyond that the memory starts over (a path may log again)."""


class ReadErrors:
    """Counts per kernel file name; remembers which file paths were already logged."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._logged: set[str] = set()

    def add(self, path: str, reason: str, cgroup_path: str) -> None:
        """One read of ``path`` (a file of cgroup ``cgroup_path``) gave no figure because of ``reason``."""
        name = path.rsplit("/", 1)[-1]
        self.counts[name] += 1
        if path in self._logged:
            return
        if len(self._logged) >= MAX_LOGGED:
            self._logged.clear()
        self._logged.add(path)
        log.warning(
            "%s: %s; that figure is left out of the answer (logged once per file)",
            path,
            reason,
            extra={"cgroup_path": cgroup_path, "file": name},
        )

    def forget(self, directory: str) -> None:
        """Forget which files under ``directory`` were logged (its cgroup is gone; a new one logs anew)."""
        prefix = directory.rstrip("/") + "/"
        self._logged = {p for p in self._logged if not p.startswith(prefix)}

    def snapshot(self) -> dict[str, int]:
        """The counts so far, by file name (a copy)."""
        return dict(self.counts)

"""Map a container id to its cgroup path: explicit ``--container ID=PATH`` flags first, then discovery.

Discovery walks the primary hierarchy (memory's, see Layout.primary) breadth-first, directories in sorted
order, for a directory named after the id in one of the usual ways (DISCOVERY_NAMES): the shallowest match
wins, and within one directory the earlier name in DISCOVERY_NAMES. A hit is cached; a cached path is
checked with one stat per lookup and found again if its directory has disappeared. Unknown ids are not
cached: a container may appear at any time.

An id is validated before it touches the filesystem (no ``/``, no ``..``, printable ASCII, at most
MAX_ID_LENGTH characters). The empty id and the ids given with ``--sandbox`` mean the root cgroup ``/``,
i.e. the whole guest.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Mapping

from guest_agent.files import is_dir
from guest_agent.layout import Layout

MAX_ID_LENGTH = 128
"""containerd caps ids at 76 characters; 128 leaves room and keeps ``cri-containerd-<id>.scope`` short."""

DISCOVERY_NAMES = ("{id}", "cri-containerd-{id}.scope", "crio-{id}.scope", "docker-{id}.scope", "kata_{id}")
"""Directory names that mark a container's cgroup, in order of preference within one directory level."""

MAX_DEPTH = 8
MAX_DIRECTORIES = 20_000
"""Bounds of one discovery walk (kubepods paths are 4 levels deep; a guest has a few hundred cgroups)."""


class InvalidId(ValueError):
    """The id is not acceptable as a container id (it would be unsafe as a path component)."""


class UnknownContainer(LookupError):
    """No cgroup was found for the id."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"container {container_id!r}: no cgroup found")
        self.container_id = container_id


def validate_id(container_id: str) -> None:
    """Raise InvalidId unless ``container_id`` is safe to use as a directory name component."""
    if not container_id:
        raise InvalidId("container id is empty (the empty id means the root cgroup and needs no name)")
    if len(container_id) > MAX_ID_LENGTH:
        raise InvalidId(f"container id is {len(container_id)} characters long; the limit is {MAX_ID_LENGTH}")
    if not (container_id.isascii() and container_id.isprintable()) or " " in container_id:
        raise InvalidId(f"container id {container_id!r} must be printable ASCII without spaces")
    if "/" in container_id or ".." in container_id or container_id == ".":
        raise InvalidId(f"container id {container_id!r} must not contain '/' or '..'")


def validate_cgroup_path(path: str) -> str:
    """Check a cgroup path as /proc/PID/cgroup shows it (``/`` or ``/a/b``); return it without a final /."""
    if not path.startswith("/"):
        raise ValueError(f"cgroup path {path!r} must start with '/'")
    if path == "/":
        return path
    trimmed = path.rstrip("/")
    parts = trimmed.split("/")[1:]
    if any(part in ("", ".", "..") for part in parts) or "\0" in path:
        raise ValueError(f"cgroup path {path!r} must not contain empty, '.' or '..' components")
    return trimmed


def parse_mapping(text: str) -> tuple[str, str]:
    """``ID=CGROUP_PATH`` (the --container flag) → (id, path), both validated."""
    container_id, sep, path = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected ID=CGROUP_PATH, e.g. abc123=/kubepods/pod1/abc123")
    validate_id(container_id)
    return container_id, validate_cgroup_path(path)


class ContainerLocator:
    """Resolves ids to cgroup paths under a Layout: explicit map, root ids, then cached discovery."""

    def __init__(
        self, layout: Layout, explicit: Mapping[str, str] | None = None, root_ids: Iterable[str] = ()
    ) -> None:
        self.base = layout.primary.mount
        self.explicit = dict(explicit or {})
        self.root_ids = {"", *root_ids}
        self._found: dict[str, str] = {}

    def resolve(self, container_id: str) -> str:
        """The cgroup path of ``container_id``; InvalidId or UnknownContainer otherwise."""
        if container_id in self.root_ids:
            return "/"
        validate_id(container_id)
        explicit = self.explicit.get(container_id)
        if explicit is not None:
            return explicit
        cached = self._found.get(container_id)
        if cached is not None:
            if is_dir(self.base + cached):
                return cached
            del self._found[container_id]
        path = self._discover(container_id)
        if path is None:
            raise UnknownContainer(container_id)
        self._found[container_id] = path
        return path

    def forget(self, container_id: str) -> None:
        """Drop a cached discovery (its cgroup vanished); the next lookup walks again."""
        self._found.pop(container_id, None)

    def _discover(self, container_id: str) -> str | None:
        wanted = [pattern.format(id=container_id) for pattern in DISCOVERY_NAMES]
        queue: deque[tuple[str, int]] = deque([("", 0)])
        seen = 0
        while queue and seen < MAX_DIRECTORIES:
            relative, depth = queue.popleft()
            try:
                with os.scandir(self.base + relative) as it:
                    names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
                present = set(names)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            seen += len(names)
            for name in wanted:
                if name in present:
                    return f"{relative}/{name}"
            if depth + 1 < MAX_DEPTH:
                queue.extend((f"{relative}/{name}", depth + 1) for name in names)
        return None

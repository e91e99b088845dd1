"""Fixtures shared by the integration tests: a short socket directory, and a real containerd + runc (see
tests/containerd_env.py)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containerd_env import PAGE_CACHE_COMMAND, READY_MARKER, Container, Containerd, unavailable_reason
from tests.integration.harness import short_tmp


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.fixture(scope="session")
def containerd_available() -> None:
    """Skip when this machine cannot run containerd; in CI (CI=true) that is a failure instead."""
    reason = unavailable_reason()
    if reason is None:
        return
    if _in_ci():
        pytest.fail(f"containerd tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def containerd(containerd_available: None) -> Iterator[Containerd]:
    """One test containerd for the whole session, stopped (and checked for leftovers) at the end."""
    with Containerd() as instance:
        yield instance


def unique_container_id(request: pytest.FixtureRequest) -> str:
    """A container id from the test's name, unique so that parallel sessions never collide."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40].rstrip("-")
    return f"{name or 'test'}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def busybox_container(containerd: Containerd, request: pytest.FixtureRequest) -> Iterator[Container]:
    """A running container that has written and re-read PAGE_CACHE_BYTES (its page cache is hot)."""
    container = containerd.run_busybox(unique_container_id(request), list(PAGE_CACHE_COMMAND))
    try:
        container.wait_for_output(READY_MARKER)
        yield container
    finally:
        containerd.kill(container)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (unix socket paths are limited to 107 bytes)."""
    with short_tmp() as path:
        yield path

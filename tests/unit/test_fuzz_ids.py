"""Container ids under hypothesis: no id, however hostile, resolves to a directory outside the cgroup root.

The tree is a v1 layout in a temp directory with real cgroup-like directories and symlinks that point out of
it (at a directory holding cgroups named like ids). For every id the locator either refuses it
(InvalidId), does not find it (UnknownContainer), or returns a path whose every component is a real
directory under the memory hierarchy: never through a symlink, never above the root. The adapter's own id
rule (containerd's identifiers) is stricter than the agent's, so anything the adapter lets through the
agent accepts as a plain name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest_agent.layout import detect_layout
from guest_agent.lookup import ContainerLocator, InvalidId, UnknownContainer, validate_id
from shimstats.adapter import validate_id as adapter_validate_id
from shimstats.ttrpc import TtrpcError

BUDGET = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

REAL = ("ok", "kube/pod1/ok2", "kube/pod1/cri-containerd-ok4.scope")
OUTSIDE = ("evil2", "ok3", "cri-containerd-ok5.scope")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ids")
    root, outside = base / "cgroup", base / "outside"
    for relative in REAL:
        (root / "memory" / relative).mkdir(parents=True)
    (root / "cpu").mkdir()
    for relative in OUTSIDE:
        (outside / relative).mkdir(parents=True)
    (root / "memory" / "evil").symlink_to(outside, target_is_directory=True)
    (root / "memory" / "kube" / "link").symlink_to(outside, target_is_directory=True)
    (root / "memory" / "kube" / "pod1" / "ok3").symlink_to(outside / "ok3", target_is_directory=True)
    return root


NAMES = st.sampled_from(
    [
        "ok",
        "ok2",
        "ok3",
        "ok4",
        "ok5",
        "evil",
        "evil2",
        "link",
        "kube",
        "pod1",
        "..",
        ".",
        "/",
        "\0",
        "memory",
    ]
)
IDS = st.one_of(
    st.text(max_size=140),
    st.lists(st.one_of(NAMES, st.sampled_from(["/", "../", "./", "%2e", "\\"])), max_size=6).map("".join),
    NAMES,
)


def _resolve(locator: ContainerLocator, container_id: str) -> str | None:
    try:
        return locator.resolve(container_id)
    except (InvalidId, UnknownContainer):
        return None


@BUDGET
@given(container_id=IDS)
def test_no_id_resolves_outside_the_root_or_through_a_symlink(tree: Path, container_id: str) -> None:
    locator = ContainerLocator(detect_layout(str(tree)))
    path = _resolve(locator, container_id)
    if path is None or path == "/":
        return
    mount = tree / "memory"
    assert path.startswith("/")
    current = mount
    for part in path.strip("/").split("/"):
        assert part not in ("", ".", ".."), path
        current = current / part
        assert current.is_dir(), path
        assert not current.is_symlink(), f"{container_id!r} resolved through a symlink: {path}"
    assert os.path.realpath(current).startswith(str(mount) + os.sep)


def test_the_tree_does_hold_the_bait_and_real_containers_are_found(tree: Path) -> None:
    # The property above is only worth something if the bait is reachable through the symlinks.
    assert (tree / "memory" / "evil" / "evil2").is_dir()
    assert (tree / "memory" / "kube" / "link" / "cri-containerd-ok5.scope").is_dir()
    locator = ContainerLocator(detect_layout(str(tree)))
    assert locator.resolve("ok2") == "/kube/pod1/ok2"
    assert locator.resolve("ok4") == "/kube/pod1/cri-containerd-ok4.scope"
    for bait in ("evil", "evil2", "ok3", "ok5"):
        with pytest.raises(UnknownContainer):
            locator.resolve(bait)


@BUDGET
@given(container_id=IDS)
def test_what_the_adapter_lets_through_the_agent_takes_as_a_plain_name(container_id: str) -> None:
    try:
        adapter_validate_id(container_id)
    except TtrpcError:
        return
    validate_id(container_id)  # must not raise
    assert "/" not in container_id
    assert ".." not in container_id

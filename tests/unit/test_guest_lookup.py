"""Container id → cgroup path (guest_agent.lookup): validation, explicit maps, discovery and its cache."""

from __future__ import annotations

import shutil

import pytest

from guest_agent.layout import detect_layout
from guest_agent.lookup import (
    DISCOVERY_NAMES,
    MAX_ID_LENGTH,
    ContainerLocator,
    InvalidId,
    UnknownContainer,
    parse_mapping,
    validate_cgroup_path,
    validate_id,
)

CID = "0123456789abcdef" * 4  # a 64-hex container id as containerd makes them


@pytest.fixture
def v1_root(tmp_path):
    (tmp_path / "memory").mkdir()
    (tmp_path / "cpu").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "bad",
    ["a/b", "..", "a..b", ".", "a b", "tab\there", "nul\0", "é", "x" * (MAX_ID_LENGTH + 1), "\n"],
)
def test_unsafe_ids_are_refused_before_touching_the_filesystem(bad, v1_root):
    # Rule: no '/', no '..', printable ASCII without spaces, at most MAX_ID_LENGTH characters.
    with pytest.raises(InvalidId):
        validate_id(bad)
    locator = ContainerLocator(detect_layout(str(v1_root)))
    with pytest.raises(InvalidId):
        locator.resolve(bad)


@pytest.mark.parametrize("good", [CID, "kata-sandbox_1", "a.b", "x" * MAX_ID_LENGTH])
def test_ordinary_ids_are_accepted(good):
    validate_id(good)


@pytest.mark.parametrize("pattern", DISCOVERY_NAMES)
def test_each_naming_convention_is_found_at_depth(pattern, v1_root):
    parent = v1_root / "memory" / "kubepods.slice" / "kubepods-burstable.slice"
    (parent / pattern.format(id=CID)).mkdir(parents=True)
    locator = ContainerLocator(detect_layout(str(v1_root)))
    assert locator.resolve(CID) == f"/kubepods.slice/kubepods-burstable.slice/{pattern.format(id=CID)}"


def test_shallowest_match_wins_then_the_naming_order(v1_root):
    memory = v1_root / "memory"
    (memory / "deep" / CID).mkdir(parents=True)
    (memory / f"docker-{CID}.scope").mkdir()
    (memory / f"cri-containerd-{CID}.scope").mkdir()
    locator = ContainerLocator(detect_layout(str(v1_root)))
    assert locator.resolve(CID) == f"/cri-containerd-{CID}.scope"


def test_a_directory_that_merely_contains_the_id_does_not_match(v1_root):
    (v1_root / "memory" / f"{CID}-extra").mkdir()
    locator = ContainerLocator(detect_layout(str(v1_root)))
    with pytest.raises(UnknownContainer, match=CID):
        locator.resolve(CID)


def test_discovery_is_cached_and_found_again_when_the_directory_moves(v1_root):
    memory = v1_root / "memory"
    (memory / "a" / CID).mkdir(parents=True)
    locator = ContainerLocator(detect_layout(str(v1_root)))
    assert locator.resolve(CID) == f"/a/{CID}"
    (memory / "b").mkdir()
    (memory / "b" / CID).mkdir()  # a second candidate appears: the cached answer stays
    assert locator.resolve(CID) == f"/a/{CID}"
    shutil.rmtree(memory / "a")  # the cached directory disappears: discovery runs again
    assert locator.resolve(CID) == f"/b/{CID}"
    shutil.rmtree(memory / "b")
    with pytest.raises(UnknownContainer):
        locator.resolve(CID)


def test_explicit_mapping_and_root_ids(v1_root):
    (v1_root / "memory" / CID).mkdir()
    locator = ContainerLocator(detect_layout(str(v1_root)), {"web": "/kubepods/pod1/web"}, root_ids=["pod1"])
    assert locator.resolve("web") == "/kubepods/pod1/web"  # explicit wins, without looking at the disk
    assert locator.resolve("") == "/"
    assert locator.resolve("pod1") == "/"
    assert locator.resolve(CID) == f"/{CID}"


def test_parse_mapping():
    assert parse_mapping("abc=/kubepods/pod1/abc") == ("abc", "/kubepods/pod1/abc")
    assert parse_mapping("sbx=/") == ("sbx", "/")
    assert parse_mapping("abc=/a/b/") == ("abc", "/a/b")
    for bad in ("abc", "abc=relative", "abc=/a/../b", "abc=/a//b", "a/b=/x", "=/x"):
        with pytest.raises(ValueError, match=r"expected ID=CGROUP_PATH|must|empty"):
            parse_mapping(bad)


def test_validate_cgroup_path_keeps_root():
    assert validate_cgroup_path("/") == "/"
    with pytest.raises(ValueError, match="must not contain"):
        validate_cgroup_path("/a/./b")

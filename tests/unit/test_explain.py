"""explain on real-kernel fixtures: the breakdown adds up and the story matches what the workload did."""

from __future__ import annotations

import json

import pytest

from shimstats.commands.explain import format_explanation
from shimstats.explain import Explanation, explain
from tests.integration.harness import Fixture
from tests.unit.fixture_truth import CONTAINERS, read_truth

BY_NAME = {fx.name: fx for fx in CONTAINERS}


def explained(fx: Fixture) -> Explanation:
    return explain(read_truth(fx), fx.request_id)


@pytest.mark.parametrize(
    ("name", "story"),
    [
        ("v2-6.1.0-56-amd64-container-active-file", "active_file"),  # 100 MiB read 4 times
        ("v2-6.1.0-56-amd64-container-inactive-file", "inactive_file"),  # 200 MiB written, never read
        ("v2-6.1.0-56-amd64-container-anon", "anon"),  # 64 MiB held in a pipe buffer
        ("v1-6.1.0-56-amd64-qemu-container-anon", "anon"),
    ],
)
def test_the_first_story_is_the_workloads(name: str, story: str) -> None:
    e = explained(BY_NAME[name])
    assert e.stories[0].key == story, [s.text for s in e.stories]


def test_the_active_file_story_names_the_kubelet_issue() -> None:
    e = explained(BY_NAME["v2-6.1.0-56-amd64-container-active-file"])
    active = next(p for p in e.parts if p.key == "active_file")
    assert active.bytes >= 0.9 * e.working_set
    assert "kubernetes#43916" in e.stories[0].text
    assert "active file cache is" in format_explanation(e)


@pytest.mark.parametrize("fx", CONTAINERS, ids=lambda fx: fx.name)
def test_the_named_parts_explain_the_working_set(fx: Fixture) -> None:
    e = explained(fx)
    inside = [p for p in e.parts if p.in_working_set]
    assert sum(p.bytes for p in inside) == e.working_set
    other = next(p for p in inside if p.key == "other")
    # What no memory.stat key names (swap cache, unevictable, files read a moment apart) stays small.
    assert abs(other.bytes) <= 1 << 20, other
    outside = [p for p in e.parts if not p.in_working_set]
    assert [p.key for p in outside] == ["inactive_file"]
    assert e.usage - outside[0].bytes == e.working_set


def test_v1_kernel_memory_is_the_kmem_counter() -> None:
    fx = BY_NAME["v1-6.18.44-fc-v669-container-pagecache"]
    kernel = next(p for p in explained(fx).parts if p.key == "kernel")
    assert kernel.bytes == int(fx.file("memory", "memory.kmem.usage_in_bytes"))


def test_limit_headroom_is_limit_minus_working_set() -> None:
    fx = BY_NAME["v2-6.1.0-56-amd64-container-anon"]
    e = explained(fx)
    assert e.limit == int(fx.file("memory", "memory.max"))
    assert e.available == e.limit - e.working_set
    data = json.loads(json.dumps(e.to_json()))
    assert data["limit"]["available_bytes"] == e.limit - e.working_set
    assert "left (CRI availableBytes)" in format_explanation(e)


def test_no_limit_says_so() -> None:
    e = explained(BY_NAME["v2-6.1.0-56-amd64-container-inactive-file"])
    assert e.limit is None
    assert e.available is None
    assert "no memory limit" in format_explanation(e)
    assert e.to_json()["limit"] is None

"""The guests of tests/translate_builders.py hold to their rules: the invariant tests are only as good as
these guests."""

from __future__ import annotations

import pytest
from hypothesis import given

from tests.translate_builders import (
    NO_DEADLINE,
    PAGE,
    U64_MAX,
    V2_KERNEL_PARTS,
    Guest,
    agent_response,
    example_v1,
    example_v2,
    fixture_guest,
    fixture_names,
    fixture_response,
    kata_agent_v2,
    v1_guests,
    v2_guests,
)

# ---------------------------------------------------------------------------------------------- self-checks
# The invariant tests are only as good as these guests; these checks hold the generators to their rules.


def _check_lru(stats: dict[str, int], prefix: str, anon: str, file: str) -> None:
    s = {k[len(prefix) :]: v for k, v in stats.items() if k.startswith(prefix)} if prefix else stats
    assert s["inactive_anon"] + s["active_anon"] + s["unevictable"] == s[anon] + s["shmem"]
    assert s["inactive_file"] + s["active_file"] == s[file] - s["shmem"]


@NO_DEADLINE
@given(v1_guests())
def test_v1_guests_follow_the_v1_rules(guest: Guest) -> None:
    _check_lru(guest.stats, "", "rss", "cache")
    _check_lru(guest.stats, "total_", "rss", "cache")
    for key in ("cache", "rss", "pgfault", "inactive_file"):
        assert guest.stats["total_" + key] >= guest.stats[key]
    assert guest.usage <= guest.stats["total_rss"] + guest.stats["total_cache"] + guest.kernel + 16 * PAGE
    assert all(v % PAGE == 0 for k, v in guest.stats.items() if "pg" not in k and "workingset" not in k)


@NO_DEADLINE
@given(v2_guests())
def test_v2_guests_follow_the_v2_rules(guest: Guest) -> None:
    s = guest.stats
    _check_lru(s, "", "anon", "file")
    assert s["slab"] == s["slab_reclaimable"] + s["slab_unreclaimable"]
    assert guest.kernel >= s["slab"] + sum(s[k] for k in V2_KERNEL_PARTS)
    assert ("kernel" in s) == (s.get("kernel") == guest.kernel)
    assert guest.usage <= s["anon"] + s["file"] + guest.kernel + s["sock"] + 16 * PAGE


@NO_DEADLINE
@given(v2_guests())
def test_kata_agent_v2_reply_has_the_documented_gaps(guest: Guest) -> None:
    ours = agent_response(guest)
    kata = kata_agent_v2(ours).cgroup_stats.memory_stats
    assert (kata.cache, kata.kernel_usage.usage, kata.usage.failcnt, kata.use_hierarchy) == (0, 0, 0, False)
    assert kata.stats == ours.cgroup_stats.memory_stats.stats
    if guest.swap is not None:
        assert kata.swap_usage.limit == (0 if guest.swap_limit == U64_MAX else guest.swap_limit)


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_reply_agrees_with_the_files(name: str) -> None:
    """The guest agent's reply carries the same usage and memory.stat as the fixture files say."""
    guest, ms = fixture_guest(name), fixture_response(name).cgroup_stats.memory_stats
    assert ms.usage.usage == guest.usage
    assert dict(ms.stats) == guest.stats


def test_examples_follow_their_rules() -> None:
    v1, v2 = example_v1(), example_v2()
    _check_lru(v1.stats, "", "rss", "cache")
    _check_lru(v1.stats, "total_", "rss", "cache")
    _check_lru(v2.stats, "", "anon", "file")
    assert v1.usage == v1.stats["total_rss"] + v1.stats["total_cache"] + v1.kernel
    assert v2.usage == v2.stats["anon"] + v2.stats["file"] + v2.kernel + v2.stats["sock"]

"""shimstats.resources: quantities, the kubelet's CRI values, both cpu.weight rules, expectations, verdicts.

Golden numbers are the ones in the spec docs/spec/mapping.md §2 (its table of cpu.weight values and
the kubelet constants: shares in [2, 262144], 1024 per CPU, period 100000, quota at least 1000). Every
other expected number is derived here from the input by the rule stated next to it.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shimstats import resources as rs
from shimstats._proto.shimstats.agent.v1 import resources_pb2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroupfs"
PAGE = 4096

# docs/spec/mapping.md §2.2 "Example cpu.weight values": shares, linear, quadratic, kubelet's inverse of
# quadratic.
GOLDEN = [
    (2, 1, 1, 2),
    (102, 4, 17, 421),
    (512, 20, 59, 1522),
    (1024, 39, 100, 2597),
    (2048, 79, 174, 4537),
    (262144, 10000, 10000, 262144),
]


@pytest.mark.parametrize(("shares", "linear", "quadratic", "read_back"), GOLDEN)
def test_cpu_weight_golden_table(shares: int, linear: int, quadratic: int, read_back: int) -> None:
    assert rs.linear_weight(shares) == linear
    assert rs.quadratic_weight(shares) == quadratic
    assert rs.weight_to_shares(quadratic) == read_back


def test_weight_rules_at_and_beyond_the_ends() -> None:
    # 0 means "unset" for both; below 2 both give 1 (Go's integer division truncates -9999/262142 to 0);
    # from 262144 on both give 10000.
    for rule in (rs.linear_weight, rs.quadratic_weight):
        assert rule(0) == 0
        assert rule(1) == 1
        assert rule(262144) == rule(10**9) == 10000


@given(st.integers(min_value=2, max_value=262143))
def test_weight_rules_stay_in_range_and_grow(shares: int) -> None:
    for rule in (rs.linear_weight, rs.quadratic_weight):
        assert 1 <= rule(shares) <= 10000
        assert rule(shares) <= rule(shares + 1)
    # The quadratic rule never gives less than the linear one over the kubelet's range
    # (docs/spec/mapping.md §2.1: it was introduced because linear weights were far too small next to system
    # services' 100).
    assert rs.quadratic_weight(shares) >= rs.linear_weight(shares)


# ---------------------------------------------------------------------------------------------------------
# Quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("2", Fraction(2)),
        ("0.1", Fraction(1, 10)),
        (".5", Fraction(1, 2)),
        ("256Mi", Fraction(256 * 2**20)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("1G", Fraction(10**9)),
        ("1k", Fraction(1000)),
        ("1Ki", Fraction(1024)),
        ("1e3", Fraction(1000)),
        ("12e-1", Fraction(6, 5)),
        ("1E", Fraction(10**18)),  # E alone is the exa suffix, not an exponent
        ("100u", Fraction(1, 10**4)),
        ("+3", Fraction(3)),
    ],
)
def test_quantities(text: str, value: Fraction) -> None:
    assert rs.parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1x", "1 Gi", "Gi", "1e", "1e99", "0x10", "1.2.3"])
def test_quantities_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"quantity|suffix|exponent"):
        rs.parse_quantity(text)


def test_quantities_round_up_like_the_api_server() -> None:
    assert rs.milli_value(rs.parse_quantity("0.0001")) == 1  # 0.1 millicore → 1
    assert rs.milli_value(rs.parse_quantity("1500m")) == 1500
    assert rs.byte_value(rs.parse_quantity("0.5")) == 1
    assert rs.byte_value(rs.parse_quantity("1Mi")) == 1 << 20


# ---------------------------------------------------------------------------------------------------------
# The kubelet's CRI values


@pytest.mark.parametrize(
    ("milli", "shares"),
    [(0, 2), (1, 2), (999, 1022), (100, 102), (500, 512), (1000, 1024), (256000, 262144), (300000, 262144)],
)
def test_milli_cpu_to_shares(milli: int, shares: int) -> None:
    # request·1024/1000 (integer), clamped to [2, 262144]
    assert rs.milli_cpu_to_shares(milli) == shares


@pytest.mark.parametrize(("milli", "quota"), [(0, 0), (1, 1000), (10, 1000), (11, 1100), (500, 50000)])
def test_milli_cpu_to_quota_has_a_floor_of_1000(milli: int, quota: int) -> None:
    assert rs.milli_cpu_to_quota(milli) == quota


@pytest.mark.parametrize(
    ("resources", "qos"),
    [
        (rs.ContainerResources(), "BestEffort"),
        (rs.ContainerResources(cpu_request=100), "Burstable"),
        (
            rs.ContainerResources(cpu_limit=1000, memory_limit=2**30),
            "Guaranteed",
        ),  # requests default to limits
        (rs.ContainerResources(1000, 1000, 2**30, 2**30), "Guaranteed"),
        (rs.ContainerResources(500, 1000, 2**30, 2**30), "Burstable"),
        (rs.ContainerResources(cpu_limit=1000), "Burstable"),  # no memory limit
    ],
)
def test_qos_class(resources: rs.ContainerResources, qos: str) -> None:
    assert resources.qos_class() == qos


def test_cri_shares_from_the_limit_when_there_is_no_request() -> None:
    cri = rs.kubelet_cri(rs.ContainerResources(cpu_limit=500), rs.Node())
    assert (cri.cpu_shares, cri.cpu_quota, cri.cpu_period) == (512, 50000, 100000)
    best_effort = rs.kubelet_cri(rs.ContainerResources(), rs.Node())
    assert (best_effort.cpu_shares, best_effort.cpu_quota, best_effort.memory_limit_in_bytes) == (2, 0, 0)


def test_cri_swap_per_node_version_and_behaviour() -> None:
    burstable = rs.ContainerResources(memory_request=2**30, memory_limit=2 * 2**30)
    v1 = rs.kubelet_cri(burstable, rs.Node(cgroup_version=1))
    assert (v1.memory_swap_limit_in_bytes, dict(v1.unified)) == (2 * 2**30, {})  # NoSwap v1: memsw = limit
    v2 = rs.kubelet_cri(burstable, rs.Node(cgroup_version=2))
    assert (v2.memory_swap_limit_in_bytes, dict(v2.unified)) == (0, {"memory.swap.max": "0"})
    node = rs.Node(2, "LimitedSwap", memory_capacity=8 * 2**30, swap_capacity=2 * 2**30)
    # request / node memory · node swap = 1/8 · 2 GiB
    assert rs.kubelet_cri(burstable, node).unified == {"memory.swap.max": str(2**28)}
    guaranteed = rs.ContainerResources(1000, 1000, 2**30, 2**30)
    assert rs.kubelet_cri(guaranteed, node).unified == {"memory.swap.max": "0"}
    equal = rs.ContainerResources(cpu_request=100, memory_request=2**30, memory_limit=2**30)
    assert equal.qos_class() == "Burstable"
    assert rs.kubelet_cri(equal, node).unified == {"memory.swap.max": "0"}  # request == limit: no swap


def test_limited_swap_needs_v2_and_capacities() -> None:
    with pytest.raises(ValueError, match="v2"):
        rs.Node(1, "LimitedSwap", memory_capacity=1, swap_capacity=1)
    with pytest.raises(ValueError, match="capacity"):
        rs.Node(2, "LimitedSwap")


# ---------------------------------------------------------------------------------------------------------
# Expected values


def _expected(resources: rs.ContainerResources, node: rs.Node | None = None, rule: rs.WeightRule = rs.LINEAR):
    node = node or rs.Node()
    return rs.expected_settings(rs.kubelet_cri(resources, node), node, PAGE, rule)


def test_expected_values_per_version() -> None:
    limit = 10**9  # 1G: not a whole number of pages, so the kernel keeps floor(limit / page) pages
    e = _expected(rs.ContainerResources(100, 500, 2**27, limit), rs.Node(cgroup_version=1))
    values = {name: x.value for name, x in e.items()}
    assert values == {
        "cpu.shares": (102,),
        "cpu.cfs_quota_us": (50000,),
        "cpu.cfs_period_us": (100000,),
        "memory.limit_in_bytes": (limit // PAGE * PAGE,),
        "memory.memsw.limit_in_bytes": (limit // PAGE * PAGE,),
        "cpu.weight": (4,),
        "cpu.max": (50000, 100000),
        "memory.max": (limit // PAGE * PAGE,),
        "memory.swap.max": (0,),  # OCI swap − limit from a v1 node
    }
    assert e["cpu.weight"].other == (17,)
    assert e["cpu.weight"].other_rule == rs.QUADRATIC


def test_expected_without_limits_is_unlimited() -> None:
    e = _expected(rs.ContainerResources(cpu_request=250), rs.Node(cgroup_version=1))
    assert e["cpu.cfs_quota_us"].value == (-1,)
    assert e["cpu.max"].value == ("max", 100000)
    assert e["memory.limit_in_bytes"].value == ("max",)
    assert e["memory.max"].value == ("max",)
    assert e["memory.memsw.limit_in_bytes"].value == ("max",)
    assert e["memory.swap.max"].value == ("max",)  # a v1 node sent no swap limit
    v2 = _expected(rs.ContainerResources(cpu_request=250), rs.Node(cgroup_version=2))
    assert v2["memory.swap.max"].value == (0,)  # NoSwap on a v2 node: unified memory.swap.max=0
    assert v2["memory.memsw.limit_in_bytes"].value is None  # not derivable for a v1 guest


def test_quadratic_rule_swaps_expected_and_other() -> None:
    e = _expected(rs.ContainerResources(cpu_request=1000), rule=rs.QUADRATIC)["cpu.weight"]
    assert (e.value, e.other, e.other_rule) == ((100,), (39,), rs.LINEAR)


# ---------------------------------------------------------------------------------------------------------
# Verdicts


def _field(token: str) -> rs.Field:
    return "max" if token == "max" else int(token)


def _applied(file: str, version: int, raw: str) -> rs.Applied:
    return rs.Applied(file, version, raw, tuple(_field(t) for t in raw.split()))


def _rows(expected: dict[str, rs.Expected], *applied: rs.Applied, absent: tuple[str, ...] = ()):
    return {r.file: r for r in rs.compare(expected, list(applied), absent)}


def test_verdicts_ok_mismatch_and_other_rule() -> None:
    e = _expected(rs.ContainerResources(cpu_request=1000, memory_limit=2**28))  # 1024 shares
    rows = _rows(
        e,
        _applied("cpu.weight", 2, "100"),
        _applied("cpu.max", 2, "max 100000"),
        _applied("memory.max", 2, str(2**27)),
        _applied("pids.max", 2, "max"),
    )
    weight = rows["cpu.weight"]
    assert (weight.verdict, weight.fails) == (rs.OTHER_RULE, False)
    assert weight.note.startswith("applied 100 = quadratic rule (runc ≥ 1.3.2, crun);")
    assert "linear rule (Kata agent, kubelet) gives 39" in weight.note
    assert "reads 100 as 2597 shares" in weight.note  # the golden table's read-back column
    assert (rows["cpu.max"].verdict, rows["cpu.max"].fails) == (rs.OK, False)
    memory = rows["memory.max"]
    assert (memory.verdict, memory.fails, memory.expected) == (rs.MISMATCH, True, (2**28,))
    assert (rows["pids.max"].verdict, rows["pids.max"].fails) == (rs.NOT_CHECKED, False)
    assert list(rows) == ["cpu.weight", "cpu.max", "memory.max", "pids.max"]  # checked first


def test_weight_of_neither_rule_is_a_plain_mismatch_naming_both() -> None:
    rows = _rows(_expected(rs.ContainerResources(cpu_request=1000)), _applied("cpu.weight", 2, "50"))
    row = rows["cpu.weight"]
    assert (row.verdict, row.fails) == (rs.MISMATCH, True)
    assert (
        row.note
        == "expected 39 by linear rule (Kata agent, kubelet); quadratic rule (runc ≥ 1.3.2, crun) gives 100"
    )


def test_absent_files() -> None:
    e = _expected(rs.ContainerResources(cpu_request=100, cpu_limit=500))
    rows = _rows(e, absent=("cpu.max", "memory.max", "memory.swap.max", "pids.max"))
    assert (rows["cpu.max"].verdict, rows["cpu.max"].fails) == (rs.ABSENT, True)  # a limit is not in force
    assert (rows["memory.max"].verdict, rows["memory.max"].fails) == (rs.ABSENT, False)  # none was asked for
    assert (rows["memory.swap.max"].verdict, rows["memory.swap.max"].fails) == (rs.ABSENT, False)  # optional
    assert "pids.max" not in rows  # unchecked and absent: nothing to say


def test_a_setting_of_the_other_version_is_not_judged_by_this_one() -> None:
    # cpu.shares is a v1 file: one reported from a v2 hierarchy is not judged by the v1 rule.
    rows = _rows(_expected(rs.ContainerResources()), _applied("cpu.shares", 2, "1024"))
    assert rows["cpu.shares"].verdict == rs.NOT_CHECKED


def test_applied_from_the_agent_keeps_max_and_reads_v1_unlimited_as_max() -> None:
    response = resources_pb2.GetResponse(
        settings=[
            resources_pb2.Setting(
                file="memory.limit_in_bytes",
                cgroup_version=1,
                raw="9223372036854771712",
                values=[resources_pb2.Value(number=9223372036854771712)],
            ),
            resources_pb2.Setting(
                file="cpu.cfs_quota_us", cgroup_version=1, raw="-1", values=[resources_pb2.Value(number=-1)]
            ),
            resources_pb2.Setting(
                file="cpu.max",
                cgroup_version=2,
                raw="max 100000",
                values=[resources_pb2.Value(max=True), resources_pb2.Value(number=100000)],
            ),
        ]
    )
    assert [a.fields for a in rs.applied_settings(response)] == [("max",), (-1,), ("max", 100000)]


def test_row_json_is_serialisable() -> None:
    rows = rs.compare(_expected(rs.ContainerResources()), [_applied("cpu.max", 2, "max 100000")])
    assert json.loads(json.dumps([r.to_json() for r in rows]))[0]["expected"] == "max 100000"


# ---------------------------------------------------------------------------------------------------------
# Against real kernels: the resized v2 fixtures were written for stated requests (their meta.json says which);
# what the kernel shows must be what the rules expect.

RESIZED = {
    # fixture suffix: (rule that wrote cpu.weight, resources the scenario derived its writes from)
    "resized-linear": (rs.LINEAR, rs.ContainerResources(100, 500, 134217728, 1000000000)),
    "resized-quadratic": (rs.QUADRATIC, rs.ContainerResources(2000, 2000, 268435456, 268435456)),
}


def _fixture(suffix: str) -> Path:
    found = sorted(FIXTURES.glob(f"v2-*-container-{suffix}"))
    if not found:
        pytest.skip(f"no v2 fixture *-container-{suffix}")
    return found[-1]


@pytest.mark.parametrize("suffix", sorted(RESIZED))
def test_real_kernel_shows_what_the_rules_expect(suffix: str) -> None:
    fixture = _fixture(suffix)
    meta = json.loads((fixture / "meta.json").read_text())
    directory = fixture / "cgroup" / meta["container_path"].lstrip("/")
    rule, resources = RESIZED[suffix]
    expected = _expected(resources, rs.Node(cgroup_version=2), rule)
    applied = [
        _applied(name, 2, (directory / name).read_text().strip())
        for name in ("cpu.weight", "cpu.max", "memory.max", "memory.swap.max")
    ]
    rows = rs.compare(expected, applied)
    assert [(r.file, r.verdict) for r in rows] == [
        ("cpu.weight", rs.OK),
        ("cpu.max", rs.OK),
        ("memory.max", rs.OK),
        ("memory.swap.max", rs.OK),
    ]
    other = rs.QUADRATIC if rule == rs.LINEAR else rs.LINEAR
    judged_by_other = rs.compare(_expected(resources, rs.Node(cgroup_version=2), other), applied)
    assert judged_by_other[0].verdict == rs.OTHER_RULE


def test_real_kernel_keeps_whole_pages_of_a_memory_limit() -> None:
    fixture = _fixture("resized-linear")
    meta = json.loads((fixture / "meta.json").read_text())
    assert "memory.max 1000000000" in meta["workload"]  # what the scenario wrote
    shown = int((fixture / "cgroup" / meta["container_path"].lstrip("/") / "memory.max").read_text())
    assert shown == 1000000000 // PAGE * PAGE != 1000000000

"""From Kubernetes requests and limits to the cgroup values a guest should show, and the verdict on them.

Pure functions, no I/O: the rules of docs/spec/mapping.md §2, in the order the values travel.

1. Kubernetes quantities (``500m``, ``2``, ``256Mi``, ``1G``, ``1e3``) → millicores and bytes, rounded up as
   the API server's Quantity does (MilliValue, Value).
2. The kubelet's CRI values (``calculateLinuxResources``): shares = request·1024/1000 clamped to [2, 262144]
   (no request: from the limit; neither: 2); quota = limit·period/1000, at least 1000 µs (no limit: 0);
   period 100000; memory limit as given (none: 0). Swap per QoS (``configureContainerSwapResources``):
   NoSwap sends memsw = limit on a v1 node and unified memory.swap.max = 0 on a v2 node; LimitedSwap (v2
   only) gives a Burstable container whose memory request differs from its limit
   int(request / node memory · node swap), every other container 0. QoS is the container's own (the pod is
   taken to be this one container).
3. What the guest kernel then shows, per file and hierarchy version. v1: cpu.shares as sent;
   cpu.cfs_quota_us the quota, or -1 (the kernel's "none") for 0; cpu.cfs_period_us 100000;
   memory.limit_in_bytes and memory.memsw.limit_in_bytes the bytes rounded down to the guest's page size
   (the kernel keeps whole pages), or unlimited. v2: cpu.weight from shares by the linear rule (Kata agent,
   kubelet, runc ≤ 1.3.1) or the quadratic one (runc ≥ 1.3.2, crun); cpu.max ``quota period`` or
   ``max period``; memory.max like v1's limit, ``max`` for none; memory.swap.max the unified value from a v2
   node, or OCI swap − limit = 0 from a v1 node (``max`` when nothing was sent).
4. The verdict per setting: ok, MISMATCH, ``other rule`` (a cpu.weight that is the other rule's value of
   the same shares: the request arrived, another writer converted it), absent, or not checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Union

from shimstats._proto.shimstats.agent.v1 import resources_pb2

Field = Union[int, Literal["max"]]
"""One field of a cgroup file: a number, or the literal ``max`` (no limit)."""
Fields = tuple[Field, ...]

MIN_SHARES, MAX_SHARES, SHARES_PER_CPU = 2, 262144, 1024
QUOTA_PERIOD, MIN_QUOTA = 100_000, 1000
MAX_WEIGHT = 10_000
V1_UNLIMITED_FLOOR = 1 << 62
"""A v1 memory limit at or above this reads as unlimited (the kernel shows 9223372036854771712)."""

WeightRule = Literal["linear", "quadratic"]
LINEAR: WeightRule = "linear"
QUADRATIC: WeightRule = "quadratic"
RULE_NAMES: Mapping[str, str] = {
    LINEAR: "linear rule (Kata agent, kubelet)",
    QUADRATIC: "quadratic rule (runc ≥ 1.3.2, crun)",
}

# ---------------------------------------------------------------------------------------------------------
# 1. Quantities

_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
MAX_EXPONENT = 24
"""Beyond 10**±24 no quantity means anything for a container (Kubernetes itself caps far lower)."""
_QUANTITY = re.compile(r"(?P<num>[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?P<suffix>[A-Za-z]*|[eE][+-]?[0-9]+)")


def _pow10(exponent: int) -> Fraction:
    return Fraction(10**exponent) if exponent >= 0 else Fraction(1, 10**-exponent)


def parse_quantity(text: str) -> Fraction:
    """A Kubernetes quantity, exactly: ``500m`` → 1/2, ``1Gi`` → 2**30, ``1e3`` → 1000; no negatives."""
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 256Mi, 1G)")
    number, suffix = Fraction(match["num"].lstrip("+")), match["suffix"]
    if suffix in _BINARY:
        return number * (1 << _BINARY[suffix])
    if suffix in _DECIMAL:
        return number * _pow10(_DECIMAL[suffix])
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        exponent = int(suffix[1:])
        if abs(exponent) > MAX_EXPONENT:
            raise ValueError(f"{text!r}: exponent out of range (at most ±{MAX_EXPONENT})")
        return number * _pow10(exponent)
    raise ValueError(
        f"{text!r}: unknown suffix {suffix!r} (decimal n u m k M G T P E, binary Ki Mi Gi Ti Pi Ei)"
    )


def milli_value(quantity: Fraction) -> int:
    """Millicores, rounded up (Quantity.MilliValue)."""
    return math.ceil(quantity * 1000)


def byte_value(quantity: Fraction) -> int:
    """Bytes, rounded up (Quantity.Value)."""
    return math.ceil(quantity)


# ---------------------------------------------------------------------------------------------------------
# 2. The kubelet's CRI values


@dataclass(frozen=True)
class ContainerResources:
    """What the pod spec asks for one container: millicores and bytes, None when not given."""

    cpu_request: int | None = None
    cpu_limit: int | None = None
    memory_request: int | None = None
    memory_limit: int | None = None

    def qos_class(self) -> str:
        """Guaranteed (cpu and memory limits, requests equal to them or unset), BestEffort (nothing), else
        Burstable. An unset request defaults to the limit, as the API server does."""
        values = (self.cpu_request, self.cpu_limit, self.memory_request, self.memory_limit)
        if all(v is None or v == 0 for v in values):
            return "BestEffort"
        pairs = ((self.cpu_request, self.cpu_limit), (self.memory_request, self.memory_limit))
        if all(limit and (request is None or request == limit) for request, limit in pairs):
            return "Guaranteed"
        return "Burstable"


SwapBehavior = Literal["NoSwap", "LimitedSwap"]


@dataclass(frozen=True)
class Node:
    """What the kubelet's node contributes: its cgroup version and swap configuration."""

    cgroup_version: Literal[1, 2] = 2
    swap_behavior: SwapBehavior = "NoSwap"
    memory_capacity: int = 0
    swap_capacity: int = 0

    def __post_init__(self) -> None:
        if self.swap_behavior == "LimitedSwap":
            if self.cgroup_version != 2:
                raise ValueError("LimitedSwap works on cgroup v2 nodes only")
            if self.memory_capacity <= 0 or self.swap_capacity < 0:
                raise ValueError("LimitedSwap needs the node's memory capacity and swap capacity")


def milli_cpu_to_shares(milli_cpu: int) -> int:
    """cpu.shares for a request in millicores: ·1024/1000, clamped to [2, 262144]; 0 → 2."""
    return min(max(milli_cpu * SHARES_PER_CPU // 1000, MIN_SHARES), MAX_SHARES)


def milli_cpu_to_quota(milli_cpu: int, period: int = QUOTA_PERIOD) -> int:
    """CFS quota in µs for a limit in millicores: ·period/1000, at least 1000; no limit (0) → 0."""
    if milli_cpu == 0:
        return 0
    return max(milli_cpu * period // 1000, MIN_QUOTA)


@dataclass(frozen=True)
class CriResources:
    """The LinuxContainerResources the kubelet sends (the fields that reach a cgroup), and the QoS class."""

    cpu_shares: int
    cpu_quota: int
    cpu_period: int
    memory_limit_in_bytes: int
    memory_swap_limit_in_bytes: int
    unified: Mapping[str, str]
    qos_class: str

    def to_json(self) -> dict[str, object]:
        return {
            "cpu_shares": self.cpu_shares,
            "cpu_quota": self.cpu_quota,
            "cpu_period": self.cpu_period,
            "memory_limit_in_bytes": self.memory_limit_in_bytes,
            "memory_swap_limit_in_bytes": self.memory_swap_limit_in_bytes,
            "unified": dict(self.unified),
            "qos_class": self.qos_class,
        }


def kubelet_cri(resources: ContainerResources, node: Node) -> CriResources:
    """The kubelet's CRI values for ``resources`` on ``node`` (rules in the module docstring)."""
    cpu_request = resources.cpu_request or resources.cpu_limit or 0
    memory_limit = resources.memory_limit or 0
    memory_request = resources.memory_request if resources.memory_request is not None else memory_limit
    qos = resources.qos_class()
    swap_limit = 0
    unified: dict[str, str] = {}
    if node.cgroup_version == 1:
        swap_limit = memory_limit  # NoSwap: memory+swap may not exceed memory
    elif node.swap_behavior == "LimitedSwap" and qos == "Burstable" and memory_request != memory_limit:
        unified["memory.swap.max"] = str(int(memory_request / node.memory_capacity * node.swap_capacity))
    else:
        unified["memory.swap.max"] = "0"
    return CriResources(
        cpu_shares=milli_cpu_to_shares(cpu_request),
        cpu_quota=milli_cpu_to_quota(resources.cpu_limit or 0),
        cpu_period=QUOTA_PERIOD,
        memory_limit_in_bytes=memory_limit,
        memory_swap_limit_in_bytes=swap_limit,
        unified=unified,
        qos_class=qos,
    )


# ---------------------------------------------------------------------------------------------------------
# 3. cpu.weight rules and the expected cgroup values


def linear_weight(shares: int) -> int:
    """cpu.weight by the linear rule: 1 + (shares−2)·9999/262142, 10000 from 262144 on; 0 (unset) → 0."""
    if shares == 0:
        return 0
    if shares >= MAX_SHARES:
        return MAX_WEIGHT
    return 1 + (max(shares, MIN_SHARES) - 2) * 9999 // 262142


def quadratic_weight(shares: int) -> int:
    """cpu.weight by the quadratic rule: ceil(10^((l²+125·l)/612 − 7/34)) with l = log2(shares)."""
    if shares == 0:
        return 0
    if shares <= MIN_SHARES:
        return 1
    if shares >= MAX_SHARES:
        return MAX_WEIGHT
    log = math.log2(shares)
    return math.ceil(10 ** ((log * log + 125 * log) / 612 - 7 / 34))


WEIGHT_RULES = {LINEAR: linear_weight, QUADRATIC: quadratic_weight}


def weight_to_shares(weight: int) -> int:
    """kubelet's reading of a cpu.weight as shares: the inverse of the linear rule only."""
    return (weight - 1) * 262142 // 9999 + 2


@dataclass(frozen=True)
class Expected:
    """What one cgroup file should show and by which rule; for cpu.weight also the other rule's value."""

    file: str
    version: int
    requested: str
    value: Fields | None
    rule: str
    other: Fields | None = None
    other_rule: WeightRule | None = None
    optional: bool = False
    """An absent file is no failure (swap files exist only with swap accounting)."""


DEFAULTS: Mapping[str, Fields] = {
    "cpu.shares": (1024,),
    "cpu.cfs_quota_us": (-1,),
    "cpu.cfs_period_us": (QUOTA_PERIOD,),
    "memory.limit_in_bytes": ("max",),
    "memory.memsw.limit_in_bytes": ("max",),
    "cpu.weight": (100,),
    "cpu.max": ("max", QUOTA_PERIOD),
    "memory.max": ("max",),
    "memory.swap.max": ("max",),
}
"""What a fresh cgroup shows: an absent file that should show this has nothing missing."""


def _pages(value: int, page_size: int) -> int:
    """Bytes as the kernel keeps a memory limit: rounded down to whole pages."""
    return value // page_size * page_size


def _limit(value: int, page_size: int) -> Fields:
    """A memory limit as the kernel shows it: whole pages, ``max`` for none (0)."""
    return ("max",) if value <= 0 else (_pages(value, page_size),)


def expected_settings(
    cri: CriResources, node: Node, page_size: int, weight_rule: WeightRule = LINEAR
) -> dict[str, Expected]:
    """Every checked file of both versions, keyed by file name (the names never coincide across versions)."""
    shares, quota, period = cri.cpu_shares, cri.cpu_quota, cri.cpu_period
    limit = cri.memory_limit_in_bytes
    cpu_req = f"cpu_shares {shares}"
    mem_req = f"memory_limit_in_bytes {limit}"
    cpu_limit = f"cpu_quota {quota}, cpu_period {period}"
    kernel = "as sent"
    pages = f"whole {page_size} B pages"
    other_rule = QUADRATIC if weight_rule == LINEAR else LINEAR
    weight = WEIGHT_RULES[weight_rule](shares)
    swap_v2: tuple[Fields | None, str]
    if "memory.swap.max" in cri.unified:
        swap_v2 = (_pages(int(cri.unified["memory.swap.max"]), page_size),), "unified, v2 node"
    elif cri.memory_swap_limit_in_bytes > 0:
        swap_v2 = (max(cri.memory_swap_limit_in_bytes - limit, 0),), "OCI swap − limit, v1 node"
    else:
        swap_v2 = ("max",), "nothing sent"
    swap_req = f"{node.swap_behavior}, {cri.qos_class}"
    if "memory.swap.max" in cri.unified:
        swap_req = f"unified memory.swap.max {cri.unified['memory.swap.max']} ({swap_req})"
    elif node.cgroup_version == 1:
        swap_req = f"memory_swap_limit_in_bytes {cri.memory_swap_limit_in_bytes} ({swap_req})"
    memsw: tuple[Fields | None, str]
    if node.cgroup_version == 2:
        memsw = None, "a v2 node sends swap as unified memory.swap.max, which v1 has no file for"
    else:
        memsw = _limit(cri.memory_swap_limit_in_bytes, page_size), f"memory+swap = limit, {pages}"
    entries = [
        Expected("cpu.shares", 1, cpu_req, (shares,), kernel),
        Expected("cpu.cfs_quota_us", 1, cpu_limit, (quota,) if quota > 0 else (-1,), "-1 = no quota"),
        Expected("cpu.cfs_period_us", 1, cpu_limit, (period,), kernel),
        Expected("memory.limit_in_bytes", 1, mem_req, _limit(limit, page_size), pages),
        Expected("memory.memsw.limit_in_bytes", 1, swap_req, memsw[0], memsw[1], optional=True),
        Expected(
            "cpu.weight",
            2,
            cpu_req,
            (weight,),
            RULE_NAMES[weight_rule],
            other=(WEIGHT_RULES[other_rule](shares),),
            other_rule=other_rule,
        ),
        Expected("cpu.max", 2, cpu_limit, (quota if quota > 0 else "max", period), "quota period"),
        Expected("memory.max", 2, mem_req, _limit(limit, page_size), pages),
        Expected("memory.swap.max", 2, swap_req, swap_v2[0], swap_v2[1], optional=True),
    ]
    return {e.file: e for e in entries}


# ---------------------------------------------------------------------------------------------------------
# 4. Applied values and verdicts


@dataclass(frozen=True)
class Applied:
    """One setting as the agent read it: the raw text and its fields."""

    file: str
    version: int
    raw: str
    fields: Fields


def applied_settings(response: resources_pb2.GetResponse) -> list[Applied]:
    """The agent's settings with their fields; a v1 memory limit at or above 2**62 reads as ``max``."""
    out = []
    for s in response.settings:
        v1_memory = s.cgroup_version == 1 and s.file.startswith("memory.")
        fields: list[Field] = []
        for v in s.values:
            if v.WhichOneof("kind") == "max" or (v1_memory and v.number >= V1_UNLIMITED_FLOOR):
                fields.append("max")
            else:
                fields.append(v.number)
        out.append(Applied(s.file, s.cgroup_version, s.raw, tuple(fields)))
    return out


OK, MISMATCH, OTHER_RULE, ABSENT, NOT_CHECKED = "ok", "MISMATCH", "other rule", "absent", "not checked"


@dataclass(frozen=True)
class Row:
    """One line of the report: a setting, what was asked, what the kernel should show, what it shows."""

    file: str
    version: int
    requested: str
    expected: Fields | None
    rule: str
    applied: str | None
    verdict: str
    fails: bool
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "cgroup_version": self.version,
            "requested": self.requested,
            "expected": None if self.expected is None else fields_text(self.expected),
            "rule": self.rule,
            "applied": self.applied,
            "verdict": self.verdict,
            "fails": self.fails,
            "note": self.note,
        }


def fields_text(fields: Fields) -> str:
    """Fields as the kernel writes them: ``max 100000``."""
    return " ".join(str(f) for f in fields)


def _judge(e: Expected, a: Applied) -> Row:
    if e.value is None:
        return Row(a.file, a.version, e.requested, None, e.rule, a.raw, NOT_CHECKED, False, e.rule)
    if a.fields == e.value:
        return Row(a.file, a.version, e.requested, e.value, e.rule, a.raw, OK, False)
    if e.other is not None and e.other_rule is not None and a.fields == e.other:
        note = f"applied {a.raw} = {RULE_NAMES[e.other_rule]}; {e.rule} gives {fields_text(e.value)}"
        if e.other_rule == QUADRATIC:
            note += f" (kubelet's linear inverse reads {a.raw} as {weight_to_shares(int(a.raw))} shares)"
        return Row(a.file, a.version, e.requested, e.value, e.rule, a.raw, OTHER_RULE, False, note)
    note = f"expected {fields_text(e.value)} by {e.rule}"
    if e.other is not None and e.other_rule is not None:
        note += f"; {RULE_NAMES[e.other_rule]} gives {fields_text(e.other)}"
    return Row(a.file, a.version, e.requested, e.value, e.rule, a.raw, MISMATCH, True, note)


def _missing(e: Expected) -> Row:
    default = e.value is None or e.value == DEFAULTS.get(e.file)
    fails = not (default or e.optional)
    note = "the file is absent" + ("" if fails else " (nothing to apply there)" if default else " (optional)")
    return Row(e.file, e.version, e.requested, e.value, e.rule, None, ABSENT, fails, note)


def compare(
    expected: Mapping[str, Expected], applied: Sequence[Applied], absent: Sequence[str] = ()
) -> list[Row]:
    """One row per setting: checked files first (in ``expected`` order), then the others the agent read."""
    by_file = {a.file: a for a in applied}
    rows: list[Row] = []
    for e in expected.values():
        a = by_file.get(e.file)
        if a is not None and a.version == e.version:
            rows.append(_judge(e, a))
        elif e.file in absent:
            rows.append(_missing(e))
    checked = {r.file for r in rows}
    rows += [
        Row(a.file, a.version, "-", None, "", a.raw, NOT_CHECKED, False)
        for a in applied
        if a.file not in checked
    ]
    return rows

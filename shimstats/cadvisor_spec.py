"""cAdvisor's container spec figures from what the guest kernel shows (our agent's Resources/Get answer).

cAdvisor reads a container's spec from its cgroup files (google/cadvisor ``container/common/helpers.go``
``getSpecInternal``) and publishes it in ``metrics/prometheus.go``; the same rules here, per file:

* ``container_spec_cpu_shares``: v1 ``cpu.shares``; v2 ``cpu.weight`` turned back into shares by
  cAdvisor's rule ``2 + (weight - 1) * 262142 / 9999`` (integer division);
* ``container_spec_cpu_period``: v1 ``cpu.cfs_period_us``; v2 the second field of ``cpu.max``;
* ``container_spec_cpu_quota``: v1 ``cpu.cfs_quota_us``, v2 the first field of ``cpu.max``; cAdvisor omits
  the series when the quota is 0, which is what ``-1`` (v1, unsigned parse fails) and ``max`` (v2) become;
* ``container_spec_memory_reservation_limit_bytes``: v1 ``memory.soft_limit_in_bytes``; v2 ``memory.min``;
* ``container_spec_memory_swap_limit_bytes``: v1 ``memory.memsw.limit_in_bytes`` (memory + swap), v2
  ``memory.swap.max`` (swap alone), each as the kernel shows it;
* every memory figure above 2^62 (unlimited, ``max``) is 0, cAdvisor's ``specMemoryValue``.

Two counts ride along in the same answer: ``oom_kills`` (container_oom_events_total) and ``processes``
(container_processes). kata-agent serves no Resources service: with it, none of this is known.
"""

from __future__ import annotations

from dataclasses import dataclass

from shimstats._proto.shimstats.agent.v1 import resources_pb2

__all__ = ["CadvisorSpec", "cadvisor_spec", "shares_from_weight"]

UNLIMITED_ABOVE = 1 << 62


@dataclass(frozen=True)
class CadvisorSpec:
    """One container's spec as cAdvisor would publish it; None where the guest did not show the file."""

    cgroup_path: str
    cpu_shares: int | None = None
    cpu_period: int | None = None
    cpu_quota: int | None = None
    """None also when cAdvisor would omit the series (no quota)."""
    memory_reservation: int | None = None
    swap_limit: int | None = None
    oom_kills: int | None = None
    processes: int | None = None


def shares_from_weight(weight: int) -> int:
    """cAdvisor's cpu.weight [1, 10000] → shares [2, 262144]."""
    return 2 + ((weight - 1) * 262142) // 9999


def _fields(setting: resources_pb2.Setting) -> list[int | None]:
    """The numbers of a setting, ``max`` as None."""
    return [None if v.HasField("max") else v.number for v in setting.values]


def _memory(value: int | None) -> int:
    """cAdvisor's specMemoryValue: ``max`` and anything above 2^62 read as 0 (no limit)."""
    return 0 if value is None or value > UNLIMITED_ABOVE else value


def cadvisor_spec(response: resources_pb2.GetResponse) -> CadvisorSpec:
    """The spec figures of one Resources/Get answer."""
    found: dict[str, list[int | None]] = {s.file: _fields(s) for s in response.settings if s.values}
    shares = found.get("cpu.shares", [None])[0]
    weight = found.get("cpu.weight", [None])[0]
    if shares is None and weight is not None and 1 <= weight <= 10_000:
        shares = shares_from_weight(weight)
    quota: int | None
    if "cpu.max" in found:
        quota, period = (found["cpu.max"] + [None, None])[:2]
    else:
        quota, period = found.get("cpu.cfs_quota_us", [None])[0], found.get("cpu.cfs_period_us", [None])[0]
    if quota is not None and quota <= 0:
        quota = None
    reservation = found.get("memory.soft_limit_in_bytes", found.get("memory.min"))
    swap = found.get("memory.memsw.limit_in_bytes", found.get("memory.swap.max"))
    return CadvisorSpec(
        cgroup_path=response.cgroup_path,
        cpu_shares=shares,
        cpu_period=period,
        cpu_quota=quota,
        memory_reservation=None if reservation is None else _memory(reservation[0]),
        swap_limit=None if swap is None else _memory(swap[0]),
        oom_kills=response.oom_kills if response.HasField("oom_kills") else None,
        processes=response.processes if response.HasField("processes") else None,
    )

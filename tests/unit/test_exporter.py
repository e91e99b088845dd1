"""The exporter's families (shimstats.exporter), rendered and parsed back as Prometheus text.

Every expected value is the guest's own figure moved by the rule the test names: cAdvisor's meanings
(docs/spec/formulas.md §2), seconds = ns / 1e9, unlimited (above 2**62) = 0 in the spec limit. Guests come
from tests/unit/test_translate_builders.py: real fixtures read through the guest agent's reader, and
hand-built examples whose every figure is distinct.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from shimstats._proto.kata import agent_pb2
from shimstats.exporter import (
    BARE_COUNTERS,
    CONTAINER_FAMILIES,
    CONTAINER_LABELS,
    SANDBOX_LABELS,
    AgentPool,
    AgentTarget,
    ContainerTarget,
    Reading,
    SandboxReading,
    container_families,
    exporter_families,
    kata_go_working_set,
)
from shimstats.exporter_http import render
from shimstats.translate import ContainerRecord, OutputFormat
from shimstats.ttrpc import AddressError, Code
from tests.unit.test_translate_builders import (
    DEVICES,
    Case,
    Guest,
    agent_response,
    all_cases,
    example_v1,
    example_v2,
    expected_working_set,
    full_response,
    kata_agent_v2,
)

AGENT = "vsock://3:2048"
TARGET = ContainerTarget("c1", container="web", pod="web-0", namespace="shop", image="nginx:1")
SANDBOX = AgentTarget(AGENT, (TARGET,), sandbox="sb1", pod="web-0", namespace="shop")
LABELS = {
    "id": "c1",
    "name": "c1",
    "container": "web",
    "pod": "web-0",
    "namespace": "shop",
    "image": "nginx:1",
    "sandbox": "sb1",
}

Exposed = dict[str, dict[frozenset[tuple[str, str]], float]]
"""Sample name → {its labels other than CONTAINER_LABELS: value}."""


def exposed(metrics: Sequence[Metric]) -> tuple[Exposed, dict[str, str]]:
    """Render ``metrics`` as /metrics text and parse it back: (samples by name, family type by name)."""

    class Fixed:
        def collect(self) -> Sequence[Metric]:
            return metrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    samples: Exposed = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(render(registry).decode()):
        types[family.name] = family.type
        for s in family.samples:
            rest = {k: v for k, v in s.labels.items() if k not in CONTAINER_LABELS}
            # prometheus_client's parser appends _total to every counter sample; Prometheus keeps the name
            # as written, which for cAdvisor's failcnt counters has none
            name = family.name if family.name in BARE_COUNTERS else s.name
            samples.setdefault(name, {})[frozenset(rest.items())] = s.value
    return samples, types


def reading(
    response: agent_pb2.StatsContainerResponse,
    kata_host: OutputFormat = "v1",
    target: ContainerTarget = TARGET,
) -> Reading:
    record = ContainerRecord.from_agent(response)
    return Reading(SANDBOX, target, record, kata_go_working_set(response, kata_host))


def one(samples: Exposed, name: str, **labels: str) -> float | None:
    """The value of ``name`` with ``labels`` (besides CONTAINER_LABELS), None when there is no such series."""
    return samples.get(name, {}).get(frozenset(labels.items()))


CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_memory_figures_follow_cadvisor(case: Case) -> None:
    samples, _ = exposed(container_families([reading(case.response)]))
    g = case.guest
    assert one(samples, "container_memory_usage_bytes") == g.usage
    assert one(samples, "container_memory_working_set_bytes") == expected_working_set(
        g.usage, g.inactive_file
    )
    assert one(samples, "container_memory_rss") == g.rss  # total_rss (v1), anon (v2)
    assert one(samples, "container_memory_cache") == g.key("cache", "file")
    assert one(samples, "container_memory_mapped_file") == g.key("mapped_file", "file_mapped")
    assert one(samples, "container_memory_total_inactive_file_bytes") == g.inactive_file
    assert one(samples, "container_memory_total_active_file_bytes") == g.key("active_file", "active_file")
    assert one(samples, "container_memory_swap") == g.swap  # swap only on both versions; None: no series
    assert one(samples, "container_spec_memory_limit_bytes") == (0 if g.limit > 1 << 62 else g.limit)
    for failure in ("pgfault", "pgmajfault"):
        hierarchy = one(samples, "container_memory_failures_total", failure_type=failure, scope="hierarchy")
        container = one(samples, "container_memory_failures_total", failure_type=failure, scope="container")
        assert hierarchy == g.key(failure, failure)
        assert container == g.stats[failure]  # the cgroup alone: v1's local key, v2's only key


@pytest.mark.parametrize("guest", [example_v1(), example_v2()], ids=["v1", "v2"])
def test_counters_only_the_guest_reported(guest: Guest) -> None:
    ours, _ = exposed(container_families([reading(agent_response(guest))]))
    assert one(ours, "container_memory_max_usage_bytes") == guest.peak
    assert one(ours, "container_memory_failcnt") == guest.failcnt
    assert one(ours, "container_memory_kernel_usage") == guest.kernel
    if guest.version == "v2":
        # a real kata-agent sends failcnt 0 on v2 without counting: no series rather than a false 0
        kata, _ = exposed(container_families([reading(kata_agent_v2(agent_response(guest)))]))
        assert one(kata, "container_memory_failcnt") is None
        assert one(kata, "container_memory_kernel_usage") == guest.kernel  # rebuilt from memory.stat


@pytest.mark.parametrize("guest", [example_v1(), example_v2()], ids=["v1", "v2"])
def test_cpu_io_hugetlb_network(guest: Guest) -> None:
    response = full_response(guest)
    samples, _ = exposed(container_families([reading(response)]))
    usage = response.cgroup_stats.cpu_stats.cpu_usage
    throttling = response.cgroup_stats.cpu_stats.throttling_data
    assert one(samples, "container_cpu_usage_seconds_total", cpu="total") == usage.total_usage / 1e9
    assert len(samples["container_cpu_usage_seconds_total"]) == 1  # no per-cpu series beside the total
    assert one(samples, "container_cpu_user_seconds_total") == usage.usage_in_usermode / 1e9
    assert one(samples, "container_cpu_system_seconds_total") == usage.usage_in_kernelmode / 1e9
    assert one(samples, "container_cpu_cfs_periods_total") == throttling.periods
    assert one(samples, "container_cpu_cfs_throttled_periods_total") == throttling.throttled_periods
    assert one(samples, "container_cpu_cfs_throttled_seconds_total") == throttling.throttled_time / 1e9

    # block I/O: the bytes of each device and direction, v1 from Read/Write/Discard lines, v2 from io.stat
    entries = response.cgroup_stats.blkio_stats.io_service_bytes_recursive
    ops = {"v1": {"read": "Read", "write": "Write", "discard": "Discard"}}
    ops["v2"] = {"read": "Read", "write": "Write", "dbytes": "Discard"}
    expected = {
        frozenset(
            {
                "device": "",
                "major": str(e.major),
                "minor": str(e.minor),
                "operation": ops[guest.version][e.op],
            }.items()
        ): float(e.value)
        for e in entries
        if e.op in ops[guest.version]
    }
    assert samples["container_blkio_device_usage_total"] == expected
    assert {(int(dict(k)["major"]), int(dict(k)["minor"])) for k in expected} == set(DEVICES)

    for size, h in response.cgroup_stats.hugetlb_stats.items():
        assert one(samples, "container_hugetlb_usage_bytes", pagesize=size) == h.usage
        assert one(samples, "container_hugetlb_failcnt", pagesize=size) == h.failcnt
        assert one(samples, "container_hugetlb_max_usage_bytes", pagesize=size) == (h.max_usage or None)
    for n in response.network_stats:
        assert one(samples, "container_network_receive_bytes_total", interface=n.name) == n.rx_bytes
        assert one(samples, "container_network_receive_packets_total", interface=n.name) == n.rx_packets
        assert one(samples, "container_network_receive_errors_total", interface=n.name) == n.rx_errors
        assert (
            one(samples, "container_network_receive_packets_dropped_total", interface=n.name) == n.rx_dropped
        )
        assert one(samples, "container_network_transmit_bytes_total", interface=n.name) == n.tx_bytes
        assert one(samples, "container_network_transmit_packets_total", interface=n.name) == n.tx_packets
        assert one(samples, "container_network_transmit_errors_total", interface=n.name) == n.tx_errors
        assert (
            one(samples, "container_network_transmit_packets_dropped_total", interface=n.name) == n.tx_dropped
        )


def test_cadvisor_names_and_types_survive_the_text_format() -> None:
    """Between them a v1 and a v2 guest report every family (pgscan and pgsteal exist on v2 only)."""
    v1 = reading(full_response(example_v1()), target=ContainerTarget("v1"))
    v2 = reading(full_response(example_v2()), target=ContainerTarget("v2"))
    samples, types = exposed(container_families([v1, v2]))
    for family in CONTAINER_FAMILIES:
        # prometheus_client names a counter family without its _total; the samples keep cAdvisor's name
        parsed = family.name.removesuffix("_total") if family.kind == "counter" else family.name
        assert types[parsed] == {"gauge": "gauge", "counter": "counter", "untyped": "unknown"}[family.kind]
        assert family.name in samples, family.name
        for labels in samples[family.name]:
            assert {k for k, _ in labels} == set(family.extra_labels)


def test_failcnt_is_a_counter_named_as_cadvisor_names_it() -> None:
    """cAdvisor: ``# TYPE container_memory_failcnt counter`` and samples without _total."""
    registry = CollectorRegistry(auto_describe=False)

    class Fixed:
        def collect(self) -> Sequence[Metric]:
            return container_families([reading(full_response(example_v2()))])

    registry.register(Fixed())
    lines = render(registry).decode().splitlines()
    assert set(BARE_COUNTERS) == {"container_memory_failcnt", "container_hugetlb_failcnt"}
    for name in BARE_COUNTERS:
        assert f"# TYPE {name} counter" in lines
        assert any(line.startswith(name + "{") for line in lines)
        assert not any(line.startswith(f"{name}_total") or f" {name}_total " in line for line in lines)


def test_every_series_carries_the_container_labels() -> None:
    metrics = container_families([reading(full_response(example_v2()))])
    for metric in metrics:
        for s in metric.samples:
            assert {k: s.labels[k] for k in CONTAINER_LABELS} == LABELS


@pytest.mark.parametrize("case", [c for c in CASES if c.guest.version == "v2"], ids=lambda c: c.name)
def test_correction_is_what_the_go_shim_overstates(case: Case) -> None:
    """A v2 guest on a v1 host: the Go shim finds no total_inactive_file and reports usage as working set
    (defect G1), so the correction is usage - working set; on a v2 host it copies inactive_file: 0."""
    ws = expected_working_set(case.guest.usage, case.guest.inactive_file)
    on_v1, _ = exposed(container_families([reading(case.response, "v1")]))
    on_v2, _ = exposed(container_families([reading(case.response, "v2")]))
    assert one(on_v1, "shimstats_working_set_correction_bytes") == case.guest.usage - ws
    assert one(on_v2, "shimstats_working_set_correction_bytes") == 0


@pytest.mark.parametrize("case", [c for c in CASES if c.guest.version == "v1"], ids=lambda c: c.name)
def test_no_correction_for_a_v1_guest_on_a_v1_host(case: Case) -> None:
    samples, _ = exposed(container_families([reading(case.response, "v1")]))
    assert one(samples, "shimstats_working_set_correction_bytes") == 0
    assert one(samples, "shimstats_guest_cgroup_info", version="v1") == 1


def test_a_failed_read_has_no_series_and_a_down_agent_counts_per_sandbox() -> None:
    good = reading(full_response(example_v2()))
    other = ContainerTarget("c2")
    down_sandbox = AgentTarget(AGENT, (other,), sandbox="sb2", pod="db-0", namespace="shop")
    answering = AgentTarget("unix:///a.sock", (other,))
    gone = AgentTarget("unix:///gone.sock", (other,), sandbox="sb4")
    failed = [
        Reading(down_sandbox, other, None, error=Code.UNAVAILABLE, message="refused"),
        Reading(answering, other, None, error=Code.NOT_FOUND, message="no such container"),
    ]
    for metric in container_families([good, *failed]):
        assert {s.labels["id"] for s in metric.samples} == {"c1"}, metric.name

    sandboxes = [
        SandboxReading(SANDBOX, (good,)),
        SandboxReading(down_sandbox, (failed[0],), Code.UNAVAILABLE, "refused"),
        SandboxReading(answering, (failed[1],)),
        SandboxReading(gone, (), Code.UNAVAILABLE, "no such file", gone=True),
    ]
    errors = {("sb2", "UNAVAILABLE"): 2}
    own = {m.name: m for m in exporter_families(sandboxes, errors, 0.25)}
    assert [s.value for s in own["shimstats_scrape_duration_seconds"].samples] == [0.25]
    up = {tuple(s.labels[k] for k in SANDBOX_LABELS): s.value for s in own["shimstats_agent_up"].samples}
    # sb2 did not answer (down); the unix agent answered NOT_FOUND itself (up, and named by its address
    # without a sandbox id); the gone sandbox has no series at all
    assert up == {
        ("sb1", "web-0", "shop"): 1.0,
        ("sb2", "db-0", "shop"): 0.0,
        ("unix:///a.sock", "", ""): 1.0,
    }
    counted = {
        (s.labels["sandbox"], s.labels["code"]): s.value for s in own["shimstats_agent_errors"].samples
    }
    assert counted == {k: float(v) for k, v in errors.items()}


def test_a_pool_refuses_a_bad_address_in_the_callers_thread() -> None:
    with AgentPool(timeout=1.0, kata_host="v1") as pool, pytest.raises(AddressError, match="tcp://agent:1"):
        pool.read([AgentTarget("tcp://agent:1", (TARGET,))])


def test_a_closed_pool_leaves_no_thread_behind() -> None:
    before = {t.ident for t in threading.enumerate()}
    with AgentPool(timeout=1.0, kata_host="v1"):
        pass
    assert {t.ident for t in threading.enumerate()} == before


def test_render_says_what_prometheus_clients_writer_says_but_failcnt() -> None:
    """Our writer against prometheus_client's generate_latest on the same families, label values that need
    escaping included: the same families, types, samples, labels and values once parsed; only the bare
    counters' header lines differ (generate_latest appends _total there)."""
    awkward = ContainerTarget('c"1', container="we\\b", pod="line\nbreak", namespace="shop", image="nginx:1")
    sandbox = AgentTarget(AGENT, (awkward,), sandbox="sb1")
    one_reading = Reading(sandbox, awkward, ContainerRecord.from_agent(full_response(example_v1())), 7)
    sandboxes = [SandboxReading(sandbox, (one_reading,)), SandboxReading(SANDBOX, (), Code.UNAVAILABLE, "x")]
    families = [
        *container_families([one_reading, reading(full_response(example_v2()))]),
        *exporter_families(sandboxes, {("sb1", "UNAVAILABLE"): 3}, 0.5),
    ]

    class Fixed:
        def collect(self) -> Sequence[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())

    def parsed(text: str) -> list[tuple[str, str, list[tuple[str, dict[str, str], float]]]]:
        return [
            (f.name, f.type, [(s.name, s.labels, s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)
        ]

    ours = render(registry).decode()
    theirs = generate_latest(registry).decode()
    for name in BARE_COUNTERS:  # the one intended difference
        theirs = theirs.replace(f"# HELP {name}_total ", f"# HELP {name} ")
        theirs = theirs.replace(f"# TYPE {name}_total counter", f"# TYPE {name} counter")
    assert parsed(ours) == parsed(theirs)
    assert len(parsed(ours)) == len(families)

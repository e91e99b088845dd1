"""deploy/prometheus with Debian's Prometheus: promtool checks and unit-tests the rules, and a real Prometheus
scrapes a real exporter and evaluates them.

The live test: a guest agent reads a real child cgroup of this machine (cgroup v1) that holds a page-cache
workload (tests/integration/test_adapter_live.py's fixtures); ``shimstats exporter`` serves it; Prometheus
(127.0.0.1, a free port, its own storage directory, scrape and rule interval 1 s) scrapes it with
deploy/prometheus/rules.yaml loaded. The working set Prometheus returns must lie between the kernel's own
figure (usage - total_inactive_file) read before and after, give or take TOLERANCE, and every rule must
evaluate without error.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shimstats.exporter import CONTAINER_LABELS, SANDBOX_LABELS
from tests.integration.exporter_helpers import ExporterProcess
from tests.integration.harness import AgentProcess, end_process, free_port, short_tmp, skip_unless
from tests.integration.live_workload import (  # noqa: F401 (fixtures used by name)
    CGROUPFS,
    TOLERANCE,
    kernel_working_set,
    live_cgroup,
    page_cache_workload,
)

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yaml"
PROMETHEUS_RULE = REPO / "deploy" / "kubernetes" / "prometheusrule.yaml"
SERVICE_MONITOR = REPO / "deploy" / "kubernetes" / "servicemonitor.yaml"
JOB = "shimstats-exporter"
READY_TIMEOUT = 30.0
QUERY_TIMEOUT = 30.0
LIMIT = 1 << 30
"""memory.limit_in_bytes of the live cgroup: far above the page-cache workload, so nothing is reclaimed."""


def tool(name: str) -> str:
    """The path of Debian's ``name`` (package prometheus); skip without it, fail in CI."""
    path = shutil.which(name)
    skip_unless(None if path else f"{name} is not installed (apt-get install prometheus)")
    assert path is not None
    return path


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- promtool -----------------------------------------------------------------------------------------------


def test_promtool_checks_the_rule_file_and_the_prometheus_rule_object(tmp_path: Path) -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    groups = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]
    extracted = tmp_path / "prometheusrule-groups.yaml"
    extracted.write_text(yaml.safe_dump({"groups": groups}))
    done = promtool("check", "rules", str(extracted))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 15 rules found" in done.stdout


def test_promtool_unit_tests_cover_every_alert() -> None:
    done = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing = {
        case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert firing == alerts, "every alert has a case where it fires"
    assert quiet == alerts, "every alert has a case where it must stay quiet"


def test_the_unit_tests_catch_a_pressure_alert_on_the_working_set(tmp_path: Path) -> None:
    """kubernetes#43916 is what the non-reclaimable figure is for: a pressure alert on the plain working set
    must fail the unit tests (the log-file case would page)."""
    naive = RULES.read_text().replace(
        "expr: shimstats:container_memory_nonreclaimable:ratio_limit > 0.9",
        "expr: shimstats:container_memory_working_set:ratio_limit > 0.9",
    )
    assert naive != RULES.read_text()
    (tmp_path / "rules.yaml").write_text(naive)
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    done = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "active file cache at 99 % of the limit" in done.stdout + done.stderr


# -- a real Prometheus --------------------------------------------------------------------------------------


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


OPERATOR_TARGET_LABELS = {
    "namespace": "shimstats",
    "pod": "shimstats-exporter-x7k2p",
    "container": "exporter",
    "service": JOB,
    "endpoint": "metrics",
    "__meta_kubernetes_pod_node_name": "node-1",
}
"""The labels prometheus-operator gives a ServiceMonitor's target before the endpoint's own relabelings
(prometheus-operator#3315: namespace, service, pod, container, endpoint), and the node name meta label the
endpoint's instance relabelling reads; values as for the DaemonSet's pod on node-1."""


def service_monitor_job(target: str) -> dict[str, Any]:
    """A scrape job for ``target`` as prometheus-operator makes it from servicemonitor.yaml's endpoint: its
    honorLabels and relabelings, applied to a target that carries the operator's own labels."""
    (endpoint,) = yaml.safe_load(SERVICE_MONITOR.read_text())["spec"]["endpoints"]
    snake = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    relabel = [{snake.get(k, k): v for k, v in rule.items()} for rule in endpoint["relabelings"]]
    return {
        "job_name": JOB,
        "honor_labels": endpoint.get("honorLabels", False),
        "static_configs": [{"targets": [target], "labels": OPERATOR_TARGET_LABELS}],
        "relabel_configs": relabel,
    }


@contextlib.contextmanager
def prometheus(directory: Path, target: str) -> Iterator[str]:
    """Debian's prometheus scraping ``target`` (host:port) every second with rules.yaml; yields its URL."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [service_monitor_job(target)],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    argv = [
        tool("prometheus"),
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    ]
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=2) as ready:
                if ready.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not get ready:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        end_process(process)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = get_json(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def wait_for(url: str, expr: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + QUERY_TIMEOUT
    while not (result := query(url, expr)):
        assert time.monotonic() < deadline, f"no result for {expr}"
        time.sleep(0.5)
    return result


def evaluated_rules(url: str) -> list[dict[str, Any]]:
    """Every loaded rule, once each has been evaluated at least once (health no longer "unknown")."""
    deadline = time.monotonic() + QUERY_TIMEOUT
    while True:
        rules = [r for g in get_json(f"{url}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        if all(r["health"] != "unknown" for r in rules) or time.monotonic() > deadline:
            return rules
        time.sleep(0.5)


@pytest.mark.live_cgroup
@pytest.mark.slow
def test_prometheus_scrapes_the_exporter_and_evaluates_the_rules(page_cache_workload: str) -> None:  # noqa: F811
    name = page_cache_workload
    tool("prometheus")
    # a limit well above the workload, so the ratio rules have a series to join on the exporter's real labels
    (CGROUPFS / "memory" / name / "memory.limit_in_bytes").write_text(str(LIMIT))
    with short_tmp() as directory:
        agent_args = ["--cgroupfs-root", str(CGROUPFS), "--container", f"{name}=/{name}"]
        with (
            AgentProcess(directory, agent_args) as agent,
            ExporterProcess(directory, "--agent", agent.address, "--container", name) as exporter,
        ):
            target = urllib.parse.urlsplit(exporter.url).netloc
            with prometheus(directory, target) as url:
                before, inactive = kernel_working_set(name)
                (sample,) = wait_for(url, f'container_memory_working_set_bytes{{job="{JOB}"}}')
                after, _ = kernel_working_set(name)
                (nonreclaimable,) = wait_for(
                    url, f'shimstats:container_memory_nonreclaimable_bytes{{job="{JOB}"}}'
                )
                active = query(url, f'container_memory_total_active_file_bytes{{job="{JOB}"}}')
                up = query(url, f'up{{job="{JOB}"}}')
                (ratio,) = wait_for(url, f'shimstats:container_memory_working_set:ratio_limit{{job="{JOB}"}}')
                (agent_up,) = wait_for(url, f'shimstats_agent_up{{job="{JOB}"}}')
                rules = evaluated_rules(url)
                alerts = get_json(f"{url}/api/v1/alerts")["data"]["alerts"]
            assert exporter.stop() == 0

    reported = float(sample["value"][1])
    low, high = min(before, after) - TOLERANCE, max(before, after) + TOLERANCE
    assert low <= reported <= high, (before, after, reported)
    # the one container exported; its id is in one of cAdvisor's labels (id, or name when id holds the path)
    assert name in (sample["metric"].get("id"), sample["metric"].get("name"))
    # the workload's cache is really there: the working set is not simply the usage
    assert inactive > 10 << 20
    # the recording rule saw the same scrape's figures: working set - active file, never negative
    assert len(active) == 1
    assert 0 <= float(nonreclaimable["value"][1]) <= reported
    assert [float(u["value"][1]) for u in up] == [1.0]
    # the rules join on the labels the exporter really serves (Prometheus drops the empty pod, namespace and
    # image of --agent mode): the ratio series exists, with the sample's own labels, and is the working set
    # over the cgroup's limit
    scraped = {"instance", "job"}
    assert (
        {"id", "name", "sandbox"} <= set(sample["metric"]) - {"__name__"} <= set(CONTAINER_LABELS) | scraped
    )
    assert {k: v for k, v in ratio["metric"].items() if k != "__name__"} == {
        k: v for k, v in sample["metric"].items() if k != "__name__"
    }
    assert low <= float(ratio["value"][1]) * LIMIT <= high
    assert {"sandbox"} <= set(agent_up["metric"]) - {"__name__"} <= set(SANDBOX_LABELS) | scraped
    assert float(agent_up["value"][1]) == 1.0
    # scraped as the ServiceMonitor's endpoint makes prometheus-operator scrape it: the exporter pod's own
    # pod, namespace and container never land on (or rename) the Kata containers' labels; instance = node
    for series in (sample, agent_up):
        assert not any(k.startswith("exported_") for k in series["metric"]), series["metric"]
        for label in ("pod", "namespace", "container"):
            assert series["metric"].get(label) != OPERATOR_TARGET_LABELS[label], series["metric"]
        assert series["metric"]["instance"] == "node-1"
    # every rule loaded and evaluated without error; nothing fires for a small idle cgroup
    assert len(rules) == 15
    assert [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"] == []

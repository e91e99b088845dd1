"""deploy/: Kubernetes manifests against Kubernetes' own schemas, yamllint, the objects' references to each
other, the generated files being current, and every dashboard query parsing and naming only metrics the
exporter serves.

Schemas: kubernetes-validate's copies of the OpenAPI schemas of KUBERNETES_VERSIONS, strict (an unknown
field is an error). prometheus-operator's kinds (ServiceMonitor, PrometheusRule) have no schema there: their
references are checked below and the PrometheusRule's groups by promtool (tests/integration/
test_deploy_prometheus.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml
from yamllint import config as yamllint_config
from yamllint import linter

from shimstats import cli, exporter
from tests import hack_scripts

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSIONS = ("1.28.0", "1.33.0")
"""The oldest release still common in managed clusters when this was written, and a current one."""
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
KATA_LABEL = "katacontainers.io/kata-runtime"


gen_deploy = hack_scripts.load("gen_deploy")


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every YAML document under deploy/kubernetes, by file name."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBERNETES.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def objects() -> dict[str, dict[str, Any]]:
    """kind → the one object of that kind."""
    found: dict[str, dict[str, Any]] = {}
    for docs in manifests().values():
        for doc in docs:
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def exported_metric_names() -> set[str]:
    """Sample names the exporter serves, from its own family tables."""
    return set(exported_label_names())


# -- Kubernetes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_object_validates_strictly_against_the_kubernetes_schema(version: str) -> None:
    checked = []
    for name, docs in manifests().items():
        for doc in docs:
            if doc["kind"] in OPERATOR_KINDS:
                continue
            kubernetes_validate.validate(doc, version, strict=True)
            checked.append((name, doc["kind"]))
    assert {kind for _, kind in checked} == {"Namespace", "DaemonSet", "Service", "RuntimeClass"}


def test_the_validator_rejects_a_wrong_field() -> None:
    """The check above can fail: a misspelt field in the DaemonSet is an error under strict validation."""
    daemonset = json.loads(json.dumps(objects()["DaemonSet"]))
    daemonset["spec"]["template"]["spec"]["nodeSelektor"] = {KATA_LABEL: "true"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[0], strict=True)


def test_every_yaml_file_under_deploy_passes_yamllint() -> None:
    conf = yamllint_config.YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 10
    problems = [
        f"{path.relative_to(REPO)}:{p.line}:{p.column} {p.desc} ({p.rule})"
        for path in files
        for p in linter.run(path.read_text(), conf, str(path))
    ]
    assert problems == []


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(manifests())


def test_objects_refer_to_each_other_by_the_same_names() -> None:
    o = objects()
    daemonset, service, monitor = o["DaemonSet"], o["Service"], o["ServiceMonitor"]
    namespace = o["Namespace"]["metadata"]["name"]
    for kind in ("DaemonSet", "Service", "ServiceMonitor", "PrometheusRule"):
        assert o[kind]["metadata"]["namespace"] == namespace, kind
    pod = daemonset["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [namespace]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ports
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service_port["name"]]
    # the plain-annotations alternative scrapes the same port and path
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    args = container["args"]
    listen = args[args.index("--listen-http") + 1]
    assert listen.rsplit(":", 1)[1] == str(ports["metrics"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    # the alert that watches the exporter names the job the ServiceMonitor's Service gives it
    rules = (DEPLOY / "prometheus" / "rules.yaml").read_text()
    assert f'up{{job="{service["metadata"]["name"]}"}}' in rules


def test_the_exporter_runs_on_kata_nodes_only_with_no_capabilities_and_read_only_mounts() -> None:
    daemonset = objects()["DaemonSet"]
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["nodeSelector"][KATA_LABEL] == "true"
    assert "runtimeClassName" not in spec, "the exporter reads the host's sockets: it must not run in Kata"
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork")
    assert not spec.get("hostPID")
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for name, path in host_paths.items():
        assert mounts[name]["mountPath"] == path, name
        assert mounts[name]["readOnly"] is True, name
    # every directory the exporter is told to read is inside a hostPath mount
    args = container["args"]
    roots = [args[i + 1] for i, a in enumerate(args) if a == "--kata-root"]
    cri_socket = args[args.index("--cri") + 1].removeprefix("unix://")
    assert roots == ["/run/vc/sbs", "/run/kata"]
    for path in [*roots, cri_socket]:
        assert any(Path(path).is_relative_to(mount) for mount in host_paths.values()), path
    assert "--discover" in args
    # requests and limits exist; the memory limit holds the --discover exporter's RSS at 200 sandboxes
    # (90.4 MiB, bench.exporter_scale) plus its CRI client (3.4 MiB) with room to spare, the request at least
    # its 110-sandbox figure (75.4 + 3.4 MiB): deploy/README.md "Requests and limits"
    resources = container["resources"]
    assert set(resources) == {"requests", "limits"}
    assert mebibytes(resources["limits"]["memory"]) >= 1.5 * (90.4 + 3.4)
    assert mebibytes(resources["requests"]["memory"]) >= 75.4 + 3.4


def test_the_images_default_command_is_what_the_exporter_accepts() -> None:
    """The Containerfile's ENTRYPOINT + CMD parse with main's parser: a pod without args runs them."""
    lines = (DEPLOY / "image" / "Containerfile").read_text().splitlines()
    entrypoint = json.loads(next(x for x in lines if x.startswith("ENTRYPOINT ")).split(" ", 1)[1])
    command = json.loads(next(x for x in lines if x.startswith("CMD ")).split(" ", 1)[1])
    assert entrypoint == ["shimstats"]
    args = cli.build_parser().parse_args(command)
    assert args.discover is True
    assert args.listen_http[1] == 9110


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity written in Mi or Gi, in MiB."""
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def test_the_daemonset_args_are_what_the_exporter_accepts() -> None:
    """The container's args parse with main's own `shimstats exporter` parser, as --discover."""
    (container,) = objects()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser().parse_args(container["args"])
    assert args.discover is True
    assert args.kata_root == ["/run/vc/sbs", "/run/kata"]
    assert args.cri == "unix:///run/containerd/containerd.sock"
    assert args.listen_http[1] == container["ports"][0]["containerPort"]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*container["args"], "--no-such-flag"])


def test_runtime_class_names_the_containerd_runtime_of_the_proxy_shim() -> None:
    runtime_class = objects()["RuntimeClass"]
    drop_in = tomllib.loads((KUBERNETES / "containerd-kata-stats.toml").read_text())
    assert drop_in["version"] == 2
    runtimes = drop_in["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    runtime = runtimes[runtime_class["handler"]]
    # containerd turns runtime_type io.containerd.NAME.v2 into the binary containerd-shim-NAME-v2
    match = re.fullmatch(r"io\.containerd\.([a-z0-9-]+)\.v2", runtime["runtime_type"])
    assert match is not None
    binary = f"containerd-shim-{match.group(1)}-v2"
    # containerd 1.6.0-1.6.20 and 1.7.0 ignore runtime_path (containerd#8207): the drop-in relies on PATH
    assert "runtime_path" not in runtime
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert binary in scripts
    assert runtime_class["scheduling"]["nodeSelector"] == {KATA_LABEL: "true"}


def test_the_annotation_scrape_job_rewrites_the_address_to_the_annotated_port() -> None:
    """Debian's promtool cannot check kubernetes_sd_configs; the address relabelling is checked here."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "scrape-kubernetes-pods.yaml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == objects()["Service"]["metadata"]["name"]
    (address,) = [r for r in job["relabel_configs"] if r.get("target_label") == "__address__"]
    joined = ";".join(["10.0.0.7:8080", "9110"])
    rewritten = re.sub(f"^(?:{address['regex']})$", address["replacement"].replace("$", "\\"), joined)
    assert rewritten == "10.0.0.7:9110"


# -- generated files ----------------------------------------------------------------------------------------


def test_generated_files_are_current() -> None:
    """The PrometheusRule and the dashboard are made by hack/gen_deploy.py; stale copies fail here."""
    for path, make in gen_deploy.OUTPUTS.items():
        assert path.read_text() == make(), f"{path} is stale: run python3 hack/gen_deploy.py"


def test_prometheus_rule_carries_the_rule_file_groups() -> None:
    rule = objects()["PrometheusRule"]
    rule_file = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())
    assert rule["spec"]["groups"] == rule_file["groups"]


# -- dashboard ----------------------------------------------------------------------------------------------

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
"""What Grafana substitutes before a query reaches Prometheus (label-value variables sit inside strings)."""


def dashboard_queries() -> list[str]:
    board = json.loads(gen_deploy.DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            assert inner is not None, variable["query"]
            queries.append(inner.group(1))
    return queries


def metric_names(query: str) -> set[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {query}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(query), visit)
    return names


def exported_label_names() -> dict[str, set[str]]:
    """Sample name → its label names, from the exporter's own families (one sample of each built)."""
    labels = {f.name: {*exporter.CONTAINER_LABELS, *f.extra_labels} for f in exporter.CONTAINER_FAMILIES}
    labels |= {f.name: set(exporter.CONTAINER_LABELS) for f in exporter.SPEC_FAMILIES}
    labels[exporter.CORRECTION[0]] = set(exporter.CONTAINER_LABELS)
    target = exporter.AgentTarget("unix:///agent.sock", (), "sb1", "web-0", "prod")
    reading = exporter.SandboxReading(target, (), read_errors={"memory.stat": 1})
    families = exporter.exporter_families([reading], {("sb1", "UNAVAILABLE"): 1}, 0.1)
    for metric in [*families, exporter.read_errors_family([reading])]:
        for sample in metric.samples:
            labels.setdefault(sample.name, set(sample.labels))
    return labels


def test_rule_unit_tests_use_the_exporters_label_names() -> None:
    """Every series in rules_test.yaml carries exactly the labels the exporter gives its family, plus the
    instance and job Prometheus adds: rules written against other labels would pass promtool and never
    match in a cluster."""
    exported = exported_label_names()
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yaml").read_text())["tests"]
    checked = set()
    for case in tests:
        for entry in case["input_series"]:
            name, _, rest = entry["series"].partition("{")
            given = set(re.findall(r'(\w+)="', rest))
            if name == "up":
                assert given == {"instance", "job"}, entry["series"]
                continue
            assert name in exported, f"{name} is not a metric the exporter serves"
            assert given == exported[name] | {"instance", "job"}, entry["series"]
            checked.add(name)
    assert {
        "shimstats_agent_up",
        "shimstats_agent_read_errors_total",
        "container_memory_working_set_bytes",
    } <= checked


def test_every_dashboard_query_parses_and_names_only_exported_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    exported = exported_metric_names()
    used: set[str] = set()
    for query in queries:
        names = metric_names(query)
        assert names, query
        assert names <= exported, (query, names - exported)
        used |= names
    # what the issue asks the dashboard to show
    assert {
        "container_memory_working_set_bytes",
        "container_spec_memory_limit_bytes",
        "container_memory_rss",
        "container_memory_total_active_file_bytes",
        "container_memory_total_inactive_file_bytes",
        "container_memory_kernel_usage",
        "shimstats_working_set_correction_bytes",
        "shimstats_agent_up",
    } <= used


def test_every_legend_names_labels_the_exporter_serves() -> None:
    """A legend's {{label}} that no series carries prints empty in Grafana: each must be one the exporter
    gives some family, or instance/job from the scrape."""
    board = json.loads(gen_deploy.DASHBOARD.read_text())
    served = set().union(*exported_label_names().values()) | {"instance", "job"}
    legends = [t["legendFormat"] for p in board["panels"] for t in p.get("targets", [])]
    used = {name for legend in legends for name in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)}
    assert {"sandbox", "pod", "namespace", "code", "file"} <= used
    assert used <= served, used - served


def test_the_metric_name_check_can_fail() -> None:
    assert metric_names("sum(rate(node_cpu_seconds_total[$__rate_interval]))") == {"node_cpu_seconds_total"}
    assert "node_cpu_seconds_total" not in exported_metric_names()
    with pytest.raises(ValueError, match="parenthesis"):
        metric_names("sum(rate(container_memory_rss[5m])")

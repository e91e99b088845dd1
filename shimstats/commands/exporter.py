"""`shimstats exporter`: Prometheus /metrics with cAdvisor's container metrics, read from guest agents.

Every scrape asks each configured container's guest agent once (all concurrently, within --timeout) and
answers with container_memory_working_set_bytes and the other cAdvisor names, labelled with the container id,
the Kubernetes names given in --config, and the agent's address. Serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from guest_agent import logs
from shimstats.commands._args import add_timeout, address
from shimstats.exporter import AgentPool, AgentTarget, ContainerCollector, ContainerTarget
from shimstats.translate import resolve_format
from shimstats.ttrpc import AddressError, parse_address

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's dependency on tomli covers 3.9 and 3.10
    import tomli as tomllib

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LABEL_KEYS = ("container", "pod", "namespace", "image")
"""Optional per-container keys of the config file; each becomes the label of the same name."""

log = logging.getLogger("shimstats.exporter")

EPILOG = """\
examples:
  # one Kata VM: the guest agent on vsock port 2048 of guest CID 3, two containers
  shimstats exporter --listen-http 127.0.0.1:9110 --agent vsock://3:2048 --container web-1 --container db-1

  # many VMs, with pod/namespace/container labels (see contrib/exporter-config.example.toml), JSON logs
  shimstats exporter --listen-http 0.0.0.0:9110 --config /etc/shimstats/exporter.toml --log-format json

  # then
  curl -s http://127.0.0.1:9110/metrics | grep container_memory_working_set_bytes

--agent takes any agent address serve takes: vsock://CID:PORT, hvsock:///path/kata.hvsock:PORT (Firecracker,
Cloud Hypervisor) or unix:///path; kata-agent itself (port 1024) answers too, with its gaps on v2 guests.
Port 0 in --listen-http picks a free port; the log line "serving /metrics" names it.

Set --timeout below Prometheus' scrape_timeout (10 s by default): a dead agent costs a scrape this long at
most, its containers' series disappear and shimstats_agent_errors_total{agent,code} counts the failure.

shimstats_working_set_correction_bytes = the Kata Go shim's working set minus ours for the same guest reply;
the Go shim chooses its output by the host's cgroup mode (--kata-host-cgroup, default: this host's)."""


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the entry at fault."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "exporter",
        help="serve Prometheus /metrics with cAdvisor's container metrics from guest agents",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--listen-http",
        required=True,
        type=host_port,
        metavar="HOST:PORT",
        help="where to serve /metrics, e.g. 127.0.0.1:9110 or [::1]:9110",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--agent", type=address, metavar="ADDR", help="one guest agent; name its containers with --container"
    )
    source.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file listing agents and their containers with Kubernetes labels (instead of --agent)",
    )
    p.add_argument(
        "--container",
        "--id",
        dest="container",
        action="append",
        default=[],
        metavar="ID",
        help="a container id to export from --agent, repeatable (--id: the same flag)",
    )
    add_timeout(p, 5.0, "deadline of one scrape, shared by every container")
    p.add_argument(
        "--kata-host-cgroup",
        choices=("auto", "v1", "v2"),
        default="auto",
        help="cgroup mode the Kata Go shim would see, for the correction metric (default: %(default)s = "
        "this host's)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text for people, json (one object per line) for log collectors (default: %(default)s)",
    )
    p.set_defaults(run=run)


def host_port(text: str) -> tuple[str, int]:
    """argparse type: ``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (port 0-65535)")
    return host, int(port_text)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    try:
        agents = targets(args.agent, args.container, args.config)
    except ConfigError as exc:
        print(f"shimstats exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, port = args.listen_http
    kata_host = resolve_format(args.kata_host_cgroup)
    with AgentPool(agents, timeout=args.timeout, kata_host=kata_host) as pool:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ContainerCollector(pool))
        ProcessCollector(registry=registry)
        try:
            server, thread = start_http_server(port, host, registry)
        except OSError as exc:
            log.error("cannot serve /metrics: %s", exc, extra={"address": f"{host}:{port}"})
            return EXIT_FAILED
        try:
            url = f"http://{_url_host(host)}:{server.server_address[1]}/metrics"
            count = sum(len(a.containers) for a in agents)
            log.info(
                "serving /metrics (%d containers, %d agents)", count, len(agents), extra={"address": url}
            )
            _wait_for_signal()
            log.info("stopping", extra={"address": url})
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
    return EXIT_OK


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _wait_for_signal() -> None:
    """Block the main thread until SIGTERM or SIGINT."""
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def targets(agent: str | None, containers: Sequence[str], config: str | None) -> tuple[AgentTarget, ...]:
    """What to export: ``--agent`` with its ``--container`` ids, or the agents of the ``--config`` file."""
    if config is not None:
        if containers:
            raise ConfigError("--container goes with --agent; with --config, list containers in the file")
        return load_config(config)
    if not containers:
        raise ConfigError("--agent needs at least one --container ID")
    assert agent is not None  # argparse requires --agent or --config
    return (AgentTarget(agent, _unique(agent, [ContainerTarget(c) for c in containers])),)


def load_config(path: str) -> tuple[AgentTarget, ...]:
    """The agents of a config file (format: contrib/exporter-config.example.toml)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes itself: UTF-8 or nothing
        raise ConfigError(f"config {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: str) -> tuple[AgentTarget, ...]:
    """Check a decoded config: [[agents]] with an address and [[agents.containers]] with an id each."""
    _only(data, ("agents",), path)
    agents = data.get("agents")
    if not isinstance(agents, list) or not agents:
        raise ConfigError(f"{path}: no [[agents]]")
    found: list[AgentTarget] = []
    for n, agent in enumerate(agents, 1):
        where = f"{path}: agents #{n}"
        if not isinstance(agent, dict):
            raise ConfigError(f"{where}: not a table")
        _only(agent, ("address", "containers"), where)
        address = agent.get("address")
        if not isinstance(address, str):
            raise ConfigError(f"{where}: address must be a string such as vsock://3:2048")
        try:
            parse_address(address)
        except AddressError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if any(a.address == address for a in found):
            raise ConfigError(f"{where}: address {address} is listed twice")
        containers = agent.get("containers")
        if not isinstance(containers, list) or not containers:
            raise ConfigError(f"{where} ({address}): no [[agents.containers]]")
        listed = [_container(c, f"{where} ({address}) container #{i}") for i, c in enumerate(containers, 1)]
        found.append(AgentTarget(address, _unique(f"{where} ({address})", listed)))
    return tuple(found)


def _container(entry: object, where: str) -> ContainerTarget:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: not a table")
    _only(entry, ("id", *LABEL_KEYS), where)
    values = {key: entry.get(key, "") for key in ("id", *LABEL_KEYS)}
    for key, value in values.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string")
    if not values["id"]:
        raise ConfigError(f"{where}: id is missing or empty")
    return ContainerTarget(**values)


def _unique(where: str, containers: Sequence[ContainerTarget]) -> tuple[ContainerTarget, ...]:
    """Refuse an id listed twice for one agent: it would be read twice and export duplicate series."""
    seen: set[str] = set()
    for c in containers:
        if c.id in seen:
            raise ConfigError(f"{where}: container {c.id!r} is listed twice")
        seen.add(c.id)
    return tuple(containers)


def _only(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")

"""`shimstats exporter`: Prometheus /metrics with cAdvisor's container metrics, read from guest agents.

Every scrape asks each container's guest agent once (sandboxes concurrently, each within --timeout) and
answers with container_memory_working_set_bytes and the other cAdvisor names, labelled as the kubelet's
/metrics/cadvisor labels them (container, pod, namespace, image, name, id) plus the sandbox. What to read:
--discover (every Kata sandbox on this node, names from the CRI), --config FILE, or --agent with
--container. Serves until SIGTERM or SIGINT; SIGHUP reloads --config.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector

from guest_agent import logs
from shimstats.commands._args import NO_CRI, add_timeout, address, cri_address
from shimstats.cri_client import DEFAULT_ADDRESS as CRI_DEFAULT
from shimstats.cri_client import CriError
from shimstats.discovered_targets import CriNames, DiscoveredTargets
from shimstats.discovery import DEFAULT_ROOTS, SHIMSTATS_AGENT_PORT, parse_agent_port
from shimstats.exporter import AgentPool, AgentTarget, ContainerCollector, ContainerTarget, StaticTargets
from shimstats.exporter_http import MetricsServer
from shimstats.toml_file import TomlFileError, read_toml
from shimstats.translate import resolve_format
from shimstats.ttrpc import AddressError, parse_address

if TYPE_CHECKING:
    from shimstats.kata_spec import AgentPort

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LABEL_KEYS = ("container", "pod", "namespace", "image")
"""Optional per-container keys of the config file; each becomes the label of the same name."""
SANDBOX_KEYS = ("sandbox", "pod", "namespace")
"""Optional per-agent keys of the config file: the labels of shimstats_agent_up."""
DEFAULT_TIMEOUT = 3.0
"""Seconds per sandbox: kata-monitor's deadline per shim (src/runtime/pkg/kata-monitor/shim_client.go)."""

log = logging.getLogger("shimstats.exporter")

EPILOG = """\
examples:
  # a Kata node: every sandbox, its agent (asked from its shim) and its pods' names (CRI), as root
  shimstats --log-level info exporter --listen-http 127.0.0.1:9110 --discover

  # the same with the stock kata-agent in the guests (no shimstats agent in the image)
  shimstats exporter --listen-http 127.0.0.1:9110 --discover --agent-port kata-agent

  # one Kata VM by hand: the guest agent on vsock port 2048 of guest CID 3, two containers
  shimstats exporter --listen-http 127.0.0.1:9110 --agent vsock://3:2048 --container web-1 --container db-1

  # many VMs from a file (see contrib/exporter-config.example.toml; SIGHUP reloads it), JSON logs
  shimstats exporter --listen-http 0.0.0.0:9110 --config /etc/shimstats/exporter.toml --log-format json

  # then
  curl -s http://127.0.0.1:9110/metrics | grep container_memory_working_set_bytes
  curl -s http://127.0.0.1:9110/healthz        # reads no agent: for liveness probes

--agent takes any agent address serve takes: vsock://CID:PORT, hvsock:///path/kata.hvsock:PORT (Firecracker,
Cloud Hypervisor) or unix:///path; kata-agent itself (port 1024) answers too, with its gaps on v2 guests.
Port 0 in --listen-http picks a free port; the log line "serving /metrics on ADDR" names it.

Sandboxes are read concurrently, each within --timeout: a paused VM costs its own series and one
shimstats_agent_up{sandbox,pod,namespace} 0, not the others'. A container or sandbox that is gone (NOT_FOUND,
its shim socket vanished, the CRI no longer lists it) just leaves the output: no error, no log line.
Set --timeout below Prometheus' scrape_timeout (10 s by default).

shimstats_working_set_correction_bytes = the Kata Go shim's working set minus ours for the same guest reply;
the Go shim chooses its output by the host's cgroup mode (--kata-host-cgroup, default: this host's).

exit codes: 0 stopped by SIGTERM or SIGINT; 1 cannot serve /metrics (the address is taken or not ours);
2 bad arguments or a refused --config (the message names the file and the entry)."""


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
    source.add_argument(
        "--discover",
        action="store_true",
        help="find every Kata sandbox under --kata-root, its agent (asked from its shim) and its containers "
        "and names (from --cri), again at every scrape",
    )
    p.add_argument(
        "--kata-root",
        action="append",
        default=[],
        metavar="DIR",
        help="with --discover: a directory of Kata sandboxes, repeatable (default: "
        + " and ".join(DEFAULT_ROOTS)
        + ")",
    )
    p.add_argument(
        "--cri",
        type=cri_address,
        default=CRI_DEFAULT,
        metavar="ADDR|none",
        help="with --discover: the CRI socket naming pods and containers (default: %(default)s); 'none' "
        "exports each sandbox by its id alone",
    )
    p.add_argument(
        "--agent-port",
        type=agent_port,
        default=SHIMSTATS_AGENT_PORT,
        metavar="PORT|kata-agent",
        help="with --discover: the guest port of our agent (default: %(default)s), or kata-agent to read "
        "Kata's own agent on the port its shim reports",
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
    add_timeout(
        p,
        DEFAULT_TIMEOUT,
        "deadline per sandbox: its agent's answers for all its containers (kata-monitor's per shim); "
        "sandboxes are read concurrently",
    )
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


def agent_port(text: str) -> AgentPort:
    """argparse type: a guest port, or ``kata-agent``."""
    try:
        return parse_agent_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    try:
        source = _source(args)
    except (ConfigError, CriError) as exc:
        print(f"shimstats exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _serve(args, source)
    finally:
        if isinstance(source, DiscoveredTargets):
            source.close()


def _source(args: argparse.Namespace) -> StaticTargets | DiscoveredTargets:
    """What to export: the sandboxes found on this node (--discover), or the fixed list."""
    given = (
        ("--kata-root", bool(args.kata_root)),
        ("--cri", args.cri != CRI_DEFAULT),
        ("--agent-port", args.agent_port != SHIMSTATS_AGENT_PORT),
    )
    discover_only = [flag for flag, set_ in given if set_]
    if not args.discover:
        if discover_only:
            raise ConfigError(f"{', '.join(discover_only)} goes with --discover")
        return StaticTargets(targets(args.agent, args.container, args.config))
    if args.container:
        raise ConfigError("--container goes with --agent; --discover finds the containers itself")
    names = None if args.cri == NO_CRI else CriNames(args.cri, timeout=args.timeout)
    roots = args.kata_root or DEFAULT_ROOTS
    return DiscoveredTargets(roots, port=args.agent_port, names=names, timeout=args.timeout)


def _serve(args: argparse.Namespace, source: StaticTargets | DiscoveredTargets) -> int:
    host, port = args.listen_http
    kata_host = resolve_format(args.kata_host_cgroup)
    with AgentPool(timeout=args.timeout, kata_host=kata_host) as pool:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ContainerCollector(pool, source))
        ProcessCollector(registry=registry)
        try:
            server = MetricsServer(host, port, registry)
        except OSError as exc:
            log.error("cannot serve /metrics: %s", exc, extra={"address": f"{host}:{port}"})
            return EXIT_FAILED
        with server:
            if isinstance(source, DiscoveredTargets):
                where = ", ".join(source.roots)
                log.info(
                    "serving /metrics on %s (sandboxes found under %s)",
                    server.url,
                    where,
                    extra={"address": server.url},
                )
                _serve_until_stopped(lambda: log.info("SIGHUP: nothing to reload with --discover"))
            else:
                agents = source.targets()
                count = sum(len(a.containers) for a in agents)
                log.info(
                    "serving /metrics on %s (%d containers, %d agents)",
                    server.url,
                    count,
                    len(agents),
                    extra={"address": server.url},
                )
                _serve_until_stopped(lambda: _reload(args.config, source))
            log.info("stopping", extra={"address": server.url})
    return EXIT_OK


def _reload(config: str | None, source: StaticTargets) -> None:
    """SIGHUP: read the config file again; a file that is now wrong keeps the previous list."""
    if config is None:
        log.info("SIGHUP: nothing to reload (no --config)")
        return
    try:
        agents = load_config(config)
    except ConfigError as exc:
        log.error("config not reloaded, the previous one stays: %s", exc, extra={"path": config})
        return
    source.replace(agents)
    count = sum(len(a.containers) for a in agents)
    log.info("config reloaded (%d containers, %d agents)", count, len(agents), extra={"path": config})


def _serve_until_stopped(reload: Callable[[], None]) -> None:
    """Block the main thread until SIGTERM or SIGINT; call ``reload`` (on this thread) at each SIGHUP."""
    stop, hup = threading.Event(), threading.Event()
    wake = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        (hup if signum == signal.SIGHUP else stop).set()
        wake.set()

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    try:
        while not stop.is_set():
            wake.wait()
            wake.clear()
            if hup.is_set() and not stop.is_set():
                hup.clear()
                reload()
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
        data = read_toml(
            path,
            "cannot read config {path}: {reason}",
            "config {path} is not valid TOML: {reason}",
            "config {path} is not UTF-8 text: {reason}",
        )
    except TomlFileError as exc:
        raise ConfigError(str(exc)) from None
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
        _only(agent, ("address", "containers", *SANDBOX_KEYS), where)
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
        names = {key: agent.get(key, "") for key in SANDBOX_KEYS}
        for key, value in names.items():
            if not isinstance(value, str):
                raise ConfigError(f"{where} ({address}): {key} must be a string")
        for key in ("pod", "namespace"):  # one pod per sandbox: its containers' own value when they agree
            given = {getattr(c, key) for c in listed} - {""}
            if not names[key] and len(given) == 1:
                names[key] = given.pop()
        found.append(AgentTarget(address, _unique(f"{where} ({address})", listed), **names))
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

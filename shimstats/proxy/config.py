"""The proxy's TOML file: which shim to start, how to reach the guest agent, what to answer Stats with.

```toml
inner_shim = "containerd-shim-kata-v2"                          # name on PATH, or an absolute path
agent = "hvsock:///run/vc/vm/{sandbox}/clh.sock:2048"           # {id} {sandbox} {namespace} expand
metrics_format = "auto"                                         # auto | v1 | v2
stats_fallback = "inner"                                        # inner | error
inner_config_path = "/opt/kata/share/defaults/kata-containers/configuration-clh.toml"   # optional
stats_timeout = 10.0                                            # optional, seconds
```

Or, to have each sandbox's Kata shim say where its agent is (every hypervisor, QEMU included; see
shimstats.discovery):

```toml
agent = "kata"                      # ask the Kata shim of {sandbox} (GET /agent-url on shim-monitor.sock)
agent_port = 2048                   # shimstats-agent's port; "kata-agent" keeps Kata's (stock kata-agent)
kata_roots = ["/run/vc/sbs", "/run/kata"]   # optional: where the shims' sockets are (Go, runtime-rs)
```

Every mistake is refused at load time with the file and key named: a missing or unknown key (typos must not
pass silently), a placeholder other than the three, a template that does not expand to an address.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from shimstats.identifiers import identifier_problem
from shimstats.kata_spec import DEFAULT_ROOTS, SHIMSTATS_AGENT_PORT, kata_spec, parse_agent_port
from shimstats.named_tuple import NamedTuple  # typing's, without importing typing (start, delete)
from shimstats.proxy import BINARY
from shimstats.proxy.settings import FALLBACKS, FORMATS
from shimstats.ttrpc.address import AddressError, parse_address  # not the package's lazy names (importlib)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for type checkers only here (start loads this module)
    from typing import Any

    from shimstats.kata_spec import AgentPort
    from shimstats.proxy.settings import Fallback

__all__ = [
    "FALLBACKS",
    "FORMATS",
    "KATA",
    "ConfigError",
    "ProxyConfig",
    "expand_agent",
    "load_config",
    "parse_config",
    "resolve_inner_shim",
]

_PLACEHOLDERS = ("id", "sandbox", "namespace")
_REQUIRED = ("inner_shim", "agent")
_OPTIONAL = (
    "metrics_format",
    "stats_fallback",
    "inner_config_path",
    "stats_timeout",
    "agent_port",
    "kata_roots",
)
KATA = "kata"
"""The ``agent`` value that means: ask the sandbox's Kata shim where its agent is."""


class ConfigError(ValueError):
    """The proxy's configuration is missing or wrong; the message names the file and the key."""


class ProxyConfig(NamedTuple):
    """One proxy runtime's settings (see the module doc for the file they come from).

    NamedTuples here and in the modules ``start`` and ``delete`` load: dataclasses costs them ~9 ms."""

    inner_shim: str
    agent: str
    metrics_format: str = "auto"
    stats_fallback: Fallback = "inner"
    inner_config_path: str = ""
    stats_timeout: float = 10.0
    path: str = ""
    """The file these settings were read from ("" when built in code)."""
    agent_port: AgentPort = SHIMSTATS_AGENT_PORT
    """With ``agent = "kata"``: the guest port we dial, or "kata-agent" for Kata's own."""
    kata_roots: tuple[str, ...] = DEFAULT_ROOTS
    """With ``agent = "kata"``: the directories holding ``<sandbox>/shim-monitor.sock``, searched in order."""

    def agent_address(self, *, container_id: str, sandbox: str, namespace: str) -> str:
        """The guest agent for one shim: the template filled in, or with ``agent = "kata"`` a ``kata://``
        spec the serving process resolves through the sandbox's Kata shim (shimstats.discovery)."""
        if self.agent == KATA:
            _check_value("sandbox", sandbox)
            return kata_spec(sandbox, self.agent_port, self.kata_roots)
        return expand_agent(self.agent, container_id=container_id, sandbox=sandbox, namespace=namespace)


def _check_value(name: str, value: str) -> None:
    problem = identifier_problem(value)
    if problem is not None:
        raise ConfigError(f"agent address: cannot put {name} {value!r} in it: {problem}")


def expand_agent(template: str, *, container_id: str, sandbox: str, namespace: str) -> str:
    """Fill ``{id}``, ``{sandbox}``, ``{namespace}``; each value must be a containerd identifier.

    The values land in socket paths, so an id with ``/`` or ``..`` is refused rather than followed.
    """
    values = {"id": container_id, "sandbox": sandbox, "namespace": namespace}
    for name, value in values.items():
        _check_value(name, value)
    try:
        text = template.format_map(values)
    except KeyError as exc:
        raise ConfigError(
            f"agent address {template!r}: unknown placeholder {{{exc.args[0]}}}; use "
            + ", ".join(f"{{{p}}}" for p in _PLACEHOLDERS)
        ) from None
    except (ValueError, IndexError) as exc:
        raise ConfigError(
            f"agent address {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
        ) from None
    try:
        parse_address(text)
    except AddressError as exc:
        raise ConfigError(f"agent address {template!r} expands to {text!r}: {exc}") from None
    return text


def parse_config(data: Mapping[str, Any], path: str = "") -> ProxyConfig:
    """Check a decoded TOML table and turn it into a ProxyConfig."""
    where = path or "proxy config"
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_REQUIRED + _OPTIONAL)}"
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    for key in ("inner_shim", "agent", "metrics_format", "stats_fallback", "inner_config_path"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{where}: {key} must be a string, not {type(data[key]).__name__}")
    if not data["inner_shim"]:
        raise ConfigError(f"{where}: inner_shim must name the real shim")
    metrics_format = data.get("metrics_format", "auto")
    if metrics_format not in FORMATS:
        raise ConfigError(f"{where}: metrics_format {metrics_format!r}: expected one of {', '.join(FORMATS)}")
    fallback = data.get("stats_fallback", "inner")
    if fallback not in FALLBACKS:
        raise ConfigError(f"{where}: stats_fallback {fallback!r}: expected one of {', '.join(FALLBACKS)}")
    timeout = data.get("stats_timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"{where}: stats_timeout must be a positive number of seconds, not {timeout!r}")
    agent_port, kata_roots = _kata_settings(data, where)
    try:
        # Sample identifiers: catches bad placeholders and non-addresses now, not at the first Stats.
        if data["agent"] != KATA:
            expand_agent(data["agent"], container_id="id", sandbox="sandbox", namespace="namespace")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return ProxyConfig(
        inner_shim=data["inner_shim"],
        agent=data["agent"],
        metrics_format=metrics_format,
        stats_fallback=fallback,  # one of FALLBACKS, checked above
        inner_config_path=data.get("inner_config_path", ""),
        stats_timeout=float(timeout),
        path=path,
        agent_port=agent_port,
        kata_roots=kata_roots,
    )


def _kata_settings(data: Mapping[str, Any], where: str) -> tuple[AgentPort, tuple[str, ...]]:
    """``agent_port`` and ``kata_roots``: checked, and refused unless ``agent = "kata"`` (they would be
    silently ignored otherwise)."""
    given = [key for key in ("agent_port", "kata_roots") if key in data]
    if data["agent"] != KATA:
        if given:
            raise ConfigError(f"{where}: {', '.join(given)} only apply with agent = {KATA!r}")
        return SHIMSTATS_AGENT_PORT, DEFAULT_ROOTS
    try:
        port = parse_agent_port(data.get("agent_port", SHIMSTATS_AGENT_PORT))
    except ValueError as exc:
        raise ConfigError(f"{where}: agent_port: {exc}") from None
    roots = data.get("kata_roots", list(DEFAULT_ROOTS))
    if (
        not isinstance(roots, list)
        or not roots
        or not all(isinstance(r, str) and os.path.isabs(r) for r in roots)
    ):
        raise ConfigError(
            f"{where}: kata_roots must be a non-empty list of absolute directories, not {roots!r}"
        )
    return port, tuple(roots)


def load_config(path: str) -> ProxyConfig:
    """Read and check the TOML file at ``path``."""
    # Here, not at the top: ``start`` forks its serving process before it reads the config, and the TOML
    # parser (with typing's rest, datetime and its regular expressions) is for start alone.
    from shimstats.toml_file import TomlFileError, read_toml

    try:
        data = read_toml(
            path, "cannot read the proxy config {path}: {reason}", "{path}: not valid TOML: {reason}"
        )
    except TomlFileError as exc:
        raise ConfigError(str(exc)) from None
    return parse_config(data, path)


def resolve_inner_shim(name: str, search_path: str | None = None) -> str:
    """The absolute path of the inner shim: ``name`` itself if it has a ``/``, else looked up on PATH.

    Refuses the proxy's own binary: starting ourselves as our inner shim would recurse.
    """
    if os.path.basename(name) == BINARY:
        raise ConfigError(
            f"inner_shim {name!r} is the proxy itself; name the real shim (e.g. containerd-shim-kata-v2)"
        )
    if "/" in name:
        if not os.path.isabs(name):
            raise ConfigError(f"inner_shim {name!r}: a path must be absolute")
        if not (os.path.isfile(name) and os.access(name, os.X_OK)):
            raise ConfigError(f"inner_shim {name}: not an executable file")
        return name
    found = _on_path(name, search_path if search_path is not None else os.environ.get("PATH", os.defpath))
    if found is None:
        raise ConfigError(
            f"inner_shim {name!r}: not found on PATH ({search_path or os.environ.get('PATH', '')})"
        )
    return os.path.abspath(found)


def _on_path(name: str, search_path: str) -> str | None:
    """What ``shutil.which(name, path=search_path)`` finds for a name without a ``/``: the first file of that
    name, executable and not a directory, in the path's directories (each looked in once, in order).

    Written out: importing shutil, with the compression modules it loads, cost every ``start`` about 7M
    instructions (docs/benchmarks.md); tests/unit/test_proxy_config.py holds it to shutil's answers."""
    if not search_path:
        return None
    for directory in dict.fromkeys(search_path.split(os.pathsep)):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.F_OK | os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None

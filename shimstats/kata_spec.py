"""The proxy's agent spec and the settings it carries: the light half of shimstats.discovery.

``start`` and the proxy's config check these before any asyncio or agent client is imported (the proxy's
start-up cost is paid per container), so they live apart from the discovery that dials.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from shimstats.named_tuple import NamedTuple  # typing's, without importing typing (start)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for type checkers only here (the proxy's start loads this module)
    from typing import Literal, Union

    AgentPort = Union[int, Literal["kata-agent"]]

__all__ = [
    "DEFAULT_ROOTS",
    "KATA_AGENT",
    "KATA_SPEC_SCHEME",
    "SHIMSTATS_AGENT_PORT",
    "KataSpec",
    "kata_spec",
    "parse_agent_port",
    "parse_kata_spec",
]

DEFAULT_ROOTS: tuple[str, ...] = ("/run/vc/sbs", "/run/kata")
"""Where the Go runtime and runtime-rs keep one directory per sandbox (Go first, as Kata's client looks)."""
SHIMSTATS_AGENT_PORT = 2048
"""Where shimstats-agent listens in the guest (kata-agent owns 1024-1027)."""
KATA_AGENT: Literal["kata-agent"] = "kata-agent"
"""The agent port setting that keeps Kata's own port: talk to the stock kata-agent."""
KATA_SPEC_SCHEME = "kata"

_U32_MAX = 0xFFFFFFFF


def parse_agent_port(value: object) -> AgentPort:
    """A port setting: 1 to 2^32-1 (an int or its digits) or ``"kata-agent"``; ValueError if neither."""
    if value == KATA_AGENT:
        return KATA_AGENT
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _U32_MAX:
        raise ValueError(f"agent port {value!r}: expected a port from 1 to {_U32_MAX} or {KATA_AGENT!r}")
    return value


# -- the proxy's agent spec: one string from ``start`` to the serving process ------------------------------


class KataSpec(NamedTuple):
    """ "Ask the Kata shim of this sandbox": what the proxy's ``agent = "kata"`` becomes for one shim.

    A NamedTuple, and urllib.parse imported where used: the proxy's ``start`` loads this module."""

    sandbox_id: str
    port: AgentPort = SHIMSTATS_AGENT_PORT
    roots: tuple[str, ...] = DEFAULT_ROOTS

    def __str__(self) -> str:
        import urllib.parse

        query = urllib.parse.urlencode([("port", str(self.port)), *(("root", r) for r in self.roots)])
        return f"{KATA_SPEC_SCHEME}://{self.sandbox_id}?{query}"


def kata_spec(
    sandbox_id: str, port: AgentPort = SHIMSTATS_AGENT_PORT, roots: Sequence[str] = DEFAULT_ROOTS
) -> str:
    """The spec text for ``sandbox_id``: ``kata://<id>?port=2048&root=/run/vc/sbs&root=/run/kata``."""
    return str(KataSpec(sandbox_id, port, tuple(roots)))


def parse_kata_spec(text: str) -> KataSpec | None:
    """The KataSpec in ``text``, None when ``text`` is a plain address; ValueError for a broken spec."""
    prefix = f"{KATA_SPEC_SCHEME}://"
    if not text.startswith(prefix):
        return None
    import urllib.parse

    sandbox_id, _, query = text[len(prefix) :].partition("?")
    fields = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    unknown = set(fields) - {"port", "root"}
    if not sandbox_id or "/" in sandbox_id or unknown or len(fields.get("port", [])) > 1:
        raise ValueError(f"{text!r}: expected kata://SANDBOX?port=PORT&root=DIR...")
    port = parse_agent_port(fields.get("port", [str(SHIMSTATS_AGENT_PORT)])[0])
    roots = tuple(fields.get("root", DEFAULT_ROOTS))
    if not all(os.path.isabs(root) for root in roots):
        raise ValueError(f"{text!r}: every root must be an absolute directory")
    return KataSpec(sandbox_id, port, roots)

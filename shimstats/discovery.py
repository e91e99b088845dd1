"""Find Kata sandboxes on this node and the address of each one's guest agent, by asking Kata's own shim.

Every Kata shim serves a management API, HTTP on a unix socket in its sandbox's run directory
(kata-containers ``src/runtime/pkg/containerd-shim-v2/shim_management.go``: ``SocketPath``,
``GetSandboxesStoragePath`` = ``/run/vc/sbs`` for the Go runtime, ``GetSandboxesStoragePathRust`` =
``/run/kata`` for runtime-rs; the file is ``shim-monitor.sock``). ``GET /agent-url`` answers, as plain
text, the URL the shim itself dials its agent on:

* ``vsock://<cid>:<port>`` (QEMU: a real vsock, the CID random per VM; ``types/sandbox.go`` ``VSock.String``);
* ``hvsock://<uds path>:<port>`` (Cloud Hypervisor, Firecracker, Dragonball: ``HybridVSock.String``);
* ``remote://<tunnel socket>`` (peer pods: the agent is on another machine; we cannot dial it).

The Go shim answers 500 with the error text when it has no agent URL; runtime-rs answers 200 with an empty
body (``runtime-rs/crates/runtimes/src/shim_mgmt/handlers.rs``). kata-monitor and ``kata-runtime exec``
ask the same question with a 3 s deadline per shim (``kata-monitor/shim_client.go``).

We dial the same CID or socket with the port replaced by ours (2048 for shimstats-agent), or kept when the
guest runs only the stock kata-agent (``agent_port = "kata-agent"``). Every failure is a DiscoveryError
naming the shim's socket: a gone shim, an HTTP error, a body that is no URL, a slow answer, a scheme we
cannot dial.

API (what the proxy, ``shimstats discover`` and the exporter build on):

* ``list_sandboxes(roots)``: every sandbox whose directory holds ``shim-monitor.sock``;
* ``find_sandbox(sandbox_id, roots)``: one sandbox's socket (the Go root first, as Kata's own client does);
* ``await read_agent_url(socket, timeout)``: the shim's ``/agent-url`` answer;
* ``dial_address(agent_url, port, socket=...)``: the Address we dial for that answer;
* ``await resolve_agent(sandbox, port, timeout)``: the two above in one step (an ``AgentTarget``);
* ``KataAgentClient``: an AgentClient that asks the shim again at every dial; ``agent_client(spec)`` builds
  one from a proxy agent spec (``kata_spec``) or a plain address.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from shimstats.agent_client import AgentClient, Backoff
from shimstats.kata_spec import (
    DEFAULT_ROOTS,
    KATA_AGENT,
    KATA_SPEC_SCHEME,
    SHIMSTATS_AGENT_PORT,
    KataSpec,
    kata_spec,
    parse_agent_port,
    parse_kata_spec,
)
from shimstats.sandboxes import (
    AGENT_URL_PATH,
    AGENT_URL_REQUEST,
    ANSWER_MAX,
    DEFAULT_TIMEOUT,
    MONITOR_SOCKET,
    AgentTarget,
    DiscoveryError,
    Sandbox,
    agent_url_answer,
    broken_answer,
    dial_address,
    find_sandbox,
    first_shim_socket,
    list_sandboxes,
    lookup_failed,
    unreachable_shim,
)

if TYPE_CHECKING:
    from shimstats.kata_spec import AgentPort  # a type alias for type checkers only (typing-free at run time)
from shimstats.ttrpc import Address

__all__ = [
    "AGENT_URL_PATH",
    "DEFAULT_ROOTS",
    "DEFAULT_TIMEOUT",
    "KATA_AGENT",
    "KATA_SPEC_SCHEME",
    "MONITOR_SOCKET",
    "SHIMSTATS_AGENT_PORT",
    "AgentTarget",
    "DiscoveryError",
    "KataAgentClient",
    "KataSpec",
    "Sandbox",
    "agent_client",
    "dial_address",
    "find_sandbox",
    "kata_spec",
    "list_sandboxes",
    "parse_agent_port",
    "parse_kata_spec",
    "read_agent_url",
    "resolve_agent",
]


async def _exchange(socket: str) -> bytes:
    try:
        reader, writer = await asyncio.open_unix_connection(socket)
    except OSError as exc:
        raise unreachable_shim(socket, exc) from None
    try:
        writer.write(AGENT_URL_REQUEST)
        await writer.drain()
        raw = await reader.read(ANSWER_MAX + 1)
        while raw and len(raw) <= ANSWER_MAX:
            more = await reader.read(ANSWER_MAX + 1 - len(raw))
            if not more:
                break
            raw += more
    except OSError as exc:
        raise broken_answer(socket, exc) from None
    finally:
        writer.close()
    return raw


async def read_agent_url(socket: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """``GET /agent-url`` on a shim's management socket: the agent URL, stripped; DiscoveryError otherwise.

    ``timeout`` bounds the whole exchange (a paused or hung shim must not hold the caller).
    """
    try:
        raw = await asyncio.wait_for(_exchange(socket), timeout)
    except asyncio.TimeoutError:
        raise DiscoveryError(socket, f"no answer to GET {AGENT_URL_PATH} within {timeout:g}s") from None
    return agent_url_answer(raw, socket)


async def resolve_agent(
    sandbox: Sandbox, port: AgentPort = SHIMSTATS_AGENT_PORT, timeout: float = DEFAULT_TIMEOUT
) -> AgentTarget:
    """Ask ``sandbox``'s shim for its agent URL and turn it into the address we dial."""
    url = await read_agent_url(sandbox.socket, timeout)
    return AgentTarget(sandbox, url, dial_address(url, port, socket=sandbox.socket))


class KataAgentClient(AgentClient):
    """An AgentClient whose every dial first asks the sandbox's Kata shim where the agent is.

    Kata serves ``/agent-url`` only once the sandbox runs (the proxy starts before that), and the answer
    holds a per-VM CID: so it is looked up when a connection is needed, not when the client is made. Until
    the first dial ``address`` is the shim socket we will ask; after, the agent address last dialled.
    """

    def __init__(
        self,
        spec: KataSpec,
        *,
        connect_timeout: float = 2.0,
        default_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(
            Address("unix", path=first_shim_socket(spec)),
            connect_timeout=connect_timeout,
            default_timeout=default_timeout,
            backoff=backoff,
        )
        self.spec = spec
        self.target: AgentTarget | None = None
        """The last answer the shim gave (None before the first dial)."""

    async def _target_address(self) -> Address:
        try:
            sandbox = find_sandbox(self.spec.sandbox_id, self.spec.roots)
            self.target = await resolve_agent(sandbox, self.spec.port, self.connect_timeout)
        except DiscoveryError as exc:
            raise lookup_failed(self.spec.sandbox_id, exc) from None
        return self.target.address


def agent_client(
    spec: str, *, connect_timeout: float = 2.0, default_timeout: float = 10.0, backoff: Backoff | None = None
) -> AgentClient:
    """An AgentClient for a proxy agent setting: a plain address, or a ``kata://`` spec (KataAgentClient)."""
    kata = parse_kata_spec(spec)
    if kata is None:
        return AgentClient(
            spec, connect_timeout=connect_timeout, default_timeout=default_timeout, backoff=backoff
        )
    return KataAgentClient(
        kata, connect_timeout=connect_timeout, default_timeout=default_timeout, backoff=backoff
    )

"""Our own ttrpc (containerd's lightweight RPC over unix sockets and vsock), in asyncio.

Layers, bottom up: ``framing`` (bytes in, frames out, no I/O), ``status`` (codes and TtrpcError),
``connection`` (the connection rules, no I/O), ``address`` and ``transport`` (addresses), ``dial``/``hvsock``,
``listen``/``serial`` and ``peer`` (sockets), ``client`` and ``server`` (unary calls, in asyncio; ``later``:
an answer a handler gives from a callback).
Importing this package pulls in protobuf only: no grpcio, no psutil, so the guest agent can use it. Names load
on first use (PEP 562): ``from shimstats.ttrpc import parse_address`` costs no asyncio and no protobuf,
which keeps the proxy shim's ``start`` quick.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for type checkers only here (the proxy's start and delete load this package)
    from typing import Any

    from shimstats.ttrpc._deadline import wait_until
    from shimstats.ttrpc.address import Address, AddressError, parse_address
    from shimstats.ttrpc.client import Client
    from shimstats.ttrpc.dial import create_connection
    from shimstats.ttrpc.framing import (
        FLAG_NO_DATA,
        FLAG_REMOTE_CLOSED,
        FLAG_REMOTE_OPEN,
        HEADER_LEN,
        MAX_MESSAGE,
        Frame,
        FrameDecoder,
        MessageType,
        Metadata,
        OversizedFrame,
        ProtocolError,
        encode_frame,
    )
    from shimstats.ttrpc.later import Later
    from shimstats.ttrpc.listen import create_listener, stop_listener
    from shimstats.ttrpc.peer import Peer
    from shimstats.ttrpc.server import CallContext, Handler, Server
    from shimstats.ttrpc.status import Code, TtrpcError, error_from_status, make_status
    from shimstats.ttrpc.sync_client import SyncClient
    from shimstats.ttrpc.transport import TransportError

__all__ = [
    "FLAG_NO_DATA",
    "FLAG_REMOTE_CLOSED",
    "FLAG_REMOTE_OPEN",
    "HEADER_LEN",
    "MAX_MESSAGE",
    "Address",
    "AddressError",
    "CallContext",
    "Client",
    "Code",
    "Frame",
    "FrameDecoder",
    "Handler",
    "Later",
    "MessageType",
    "Metadata",
    "OversizedFrame",
    "Peer",
    "ProtocolError",
    "Server",
    "SyncClient",
    "TransportError",
    "TtrpcError",
    "create_connection",
    "create_listener",
    "encode_frame",
    "error_from_status",
    "make_status",
    "parse_address",
    "stop_listener",
    "wait_until",
]

_WHERE = {
    "wait_until": "shimstats.ttrpc._deadline",
    "Client": "shimstats.ttrpc.client",
    "SyncClient": "shimstats.ttrpc.sync_client",
    "FLAG_NO_DATA": "shimstats.ttrpc.framing",
    "FLAG_REMOTE_CLOSED": "shimstats.ttrpc.framing",
    "FLAG_REMOTE_OPEN": "shimstats.ttrpc.framing",
    "Frame": "shimstats.ttrpc.framing",
    "FrameDecoder": "shimstats.ttrpc.framing",
    "HEADER_LEN": "shimstats.ttrpc.framing",
    "MAX_MESSAGE": "shimstats.ttrpc.framing",
    "MessageType": "shimstats.ttrpc.framing",
    "Metadata": "shimstats.ttrpc.framing",
    "OversizedFrame": "shimstats.ttrpc.framing",
    "ProtocolError": "shimstats.ttrpc.framing",
    "encode_frame": "shimstats.ttrpc.framing",
    "CallContext": "shimstats.ttrpc.server",
    "Handler": "shimstats.ttrpc.server",
    "Server": "shimstats.ttrpc.server",
    "Code": "shimstats.ttrpc.status",
    "TtrpcError": "shimstats.ttrpc.status",
    "error_from_status": "shimstats.ttrpc.status",
    "make_status": "shimstats.ttrpc.status",
    "Address": "shimstats.ttrpc.address",
    "AddressError": "shimstats.ttrpc.address",
    "Later": "shimstats.ttrpc.later",
    "Peer": "shimstats.ttrpc.peer",
    "TransportError": "shimstats.ttrpc.transport",
    "create_connection": "shimstats.ttrpc.dial",
    "create_listener": "shimstats.ttrpc.listen",
    "parse_address": "shimstats.ttrpc.address",
    "stop_listener": "shimstats.ttrpc.listen",
}
"""Which module defines each public name."""


def __getattr__(name: str) -> Any:
    """Import the module defining ``name`` on first use, and keep the name here."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # here: the proxy's start and delete import their modules directly, without it

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

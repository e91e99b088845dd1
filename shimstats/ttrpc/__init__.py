"""Our own ttrpc (containerd's lightweight RPC over unix sockets and vsock), in asyncio.

Layers, bottom up: ``framing`` (bytes in, frames out, no I/O), ``status`` (codes and TtrpcError),
``connection`` (the connection rules, no I/O), ``transport`` (addresses), ``dial``/``hvsock``,
``listen``/``serial`` and ``peer`` (sockets), ``client`` and ``server`` (unary calls, in asyncio).
Importing this package pulls in protobuf only: no grpcio, no psutil, so the guest agent can use it.
"""

from shimstats.ttrpc._deadline import wait_until
from shimstats.ttrpc.client import Client, SyncClient
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
from shimstats.ttrpc.listen import create_listener, stop_listener
from shimstats.ttrpc.peer import Peer
from shimstats.ttrpc.server import CallContext, Handler, Server
from shimstats.ttrpc.status import Code, TtrpcError, error_from_status, make_status
from shimstats.ttrpc.transport import Address, AddressError, TransportError, parse_address

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

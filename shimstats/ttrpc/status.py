"""ttrpc status codes and the error that carries one.

ttrpc reuses gRPC's code numbers and puts a ``google.rpc.Status`` in a Response; this module is the one
place that turns that message into a Python exception and back, and reads and writes it.

``google.rpc.Status`` is ``{int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3}``
(googleapis google/rpc/status.proto), read and written by shimstats.protowire's rules, without the protobuf
runtime (the serving process of the proxy answers containerd's first call without importing it).
"""

# No ``from __future__ import annotations``: Status is a NamedTuple (see shimstats.protowire).

import enum
from collections.abc import Iterable
from typing import NamedTuple

from shimstats.protowire import (
    AnyMessage,
    Fields,
    HasAny,
    any_message,
    fields,
    int32,
    message_field,
    string_field,
    utf8,
    varint_field,
)

__all__ = [
    "AnyMessage",
    "Code",
    "Status",
    "TtrpcError",
    "encode_status",
    "error_from_status",
    "make_status",
    "status_from_fields",
]


class Code(enum.IntEnum):
    """gRPC status codes, which ttrpc uses unchanged on the wire."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class TtrpcError(Exception):
    """A call that ended with a non-OK status; raise it from a handler to answer with that status."""

    code: Code
    message: str
    details: "list[HasAny]"

    def __init__(self, code: "Code | int", message: str = "", details: Iterable[HasAny] = ()) -> None:
        try:
            resolved = Code(code)
        except ValueError:
            # A peer sent a number outside gRPC's table: keep it readable rather than failing to decode.
            resolved = Code.UNKNOWN
            message = f"unknown status code {int(code)}: {message}"
        super().__init__(resolved, message)
        self.code = resolved
        self.message = message
        self.details = list(details)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"TtrpcError({self.code.name}, {self.message!r})"

    def to_status(self) -> "Status":
        """The ``google.rpc.Status`` a server puts in its Response for this error."""
        return make_status(self.code, self.message, self.details)


class Status(NamedTuple):
    """A ``google.rpc.Status``: the code (an int32: a peer may send a number outside Code), a message, and
    details (packed ``google.protobuf.Any`` values)."""

    code: int = 0
    message: str = ""
    details: tuple[AnyMessage, ...] = ()


def make_status(code: "Code | int", message: str = "", details: Iterable[HasAny] = ()) -> Status:
    """A ``google.rpc.Status`` with these fields (details protobuf's Any or ours)."""
    return Status(int(code), message, tuple(AnyMessage(d.type_url, d.value) for d in details))


def encode_status(status: Status) -> bytes:
    """The Status's bytes, as protobuf writes them (ValueError for a code outside int32, as protobuf)."""
    out = varint_field(1, status.code, 32) + string_field(2, status.message)
    for detail in status.details:
        out += message_field(3, detail.encode())
    return out


def status_from_fields(found: Fields) -> Status:
    """The Status the fields of one message make (or of every occurrence of a Status field, merged: the last
    code and message, every detail); WireError where protobuf refuses it."""
    code, message, details = 0, "", []
    for number, value in found:
        if isinstance(value, bytes):
            if number == 2:
                message = utf8(value, 2)
            elif number == 3:
                details.append(any_message(fields(value)))
        elif number == 1:
            code = int32(value)
    return Status(code, message, tuple(details))


def error_from_status(status: "Status | None") -> "TtrpcError | None":
    """The error a Response status stands for, or None for OK (an absent and an empty status both mean OK)."""
    if status is None or status.code == Code.OK:
        return None
    return TtrpcError(status.code, status.message, status.details)

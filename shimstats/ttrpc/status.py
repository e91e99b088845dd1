# googleapis-common-protos ships no type stubs; Status is typed as Any until a stubs package is installed.
# mypy: disable-error-code="import-untyped"
"""ttrpc status codes and the error that carries one.

ttrpc reuses gRPC's code numbers and puts a ``google.rpc.Status`` in every Response; this module is the one
place that turns that message into a Python exception and back.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from google.protobuf.any_pb2 import Any
from google.rpc.status_pb2 import Status

__all__ = ["Code", "Status", "TtrpcError", "error_from_status", "make_status"]


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
    details: list[Any]

    def __init__(self, code: Code | int, message: str = "", details: Iterable[Any] = ()) -> None:
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

    def to_status(self) -> Status:
        """The ``google.rpc.Status`` a server puts in its Response for this error."""
        return make_status(self.code, self.message, self.details)


def make_status(code: Code | int, message: str = "", details: Iterable[Any] = ()) -> Status:
    """Build a ``google.rpc.Status`` (details are packed ``google.protobuf.Any`` values)."""
    status = Status(code=int(code), message=message)
    status.details.extend(details)
    return status


def error_from_status(status: Status | None) -> TtrpcError | None:
    """The error a Response status stands for, or None for OK (an absent and an empty status both mean OK)."""
    if status is None or status.code == Code.OK:
        return None
    return TtrpcError(status.code, status.message, status.details)

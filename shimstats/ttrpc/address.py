"""Address syntax: ``unix://``, ``vsock://``, ``hvsock://`` and ``serial://`` text to an Address and back.

Apart from the dial/listen code (shimstats.ttrpc.transport) so that reading an address costs no asyncio: the
proxy shim's ``start`` parses addresses and must stay quick.
"""

from __future__ import annotations

from shimstats.named_tuple import NamedTuple  # typing's, without importing typing (start, delete)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

__all__ = ["Address", "AddressError", "is_digits", "parse_address"]

U32_MAX = 0xFFFFFFFF
_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux


class AddressError(ValueError):
    """The text is not an address we understand."""


class Address(NamedTuple):
    """A parsed address; ``str()`` gives the canonical text back, and parsing that gives an equal Address.

    A NamedTuple rather than a dataclass: importing dataclasses (inspect, ast) costs the proxy shim's
    ``start`` and ``delete`` about 9 ms, paid on every container start and delete."""

    kind: Literal["unix", "vsock", "hvsock", "serial"]
    path: str = ""
    cid: int = 0
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        if self.kind == "vsock":
            return f"vsock://{self.cid}:{self.port}"
        if self.kind == "serial":
            return f"serial://{self.path}"
        return f"hvsock://{self.path}:{self.port}"


def _socket_path(path: str, text: str) -> str:
    if not path.startswith("/"):
        raise AddressError(f"{text!r}: the socket path must be absolute")
    if "\0" in path or len(path.encode()) > _SUN_PATH_MAX:
        raise AddressError(
            f"{text!r}: not a usable unix socket path (NUL byte or over {_SUN_PATH_MAX} bytes)"
        )
    return path


def is_digits(text: str) -> bool:
    """``text`` is ASCII digits, one or more (what ``[0-9]+`` matches in full; ``isdigit`` alone also takes
    other scripts' digits). Without regular expressions: compiling them cost every proxy start and delete."""
    return text.isascii() and text.isdigit()


def _u32(digits: str, what: str, text: str) -> int:
    if not is_digits(digits) or int(digits) > U32_MAX:
        raise AddressError(f"{text!r}: {what} must be a number from 0 to {U32_MAX}, not {digits!r}")
    return int(digits)


def parse_address(text: str) -> Address:
    """Parse ``unix:///path``, a bare absolute path, ``vsock://CID:PORT`` or ``hvsock:///path:PORT``."""
    if text.startswith("/"):
        return Address("unix", path=_socket_path(text, text))
    scheme, sep, rest = text.partition("://")
    if scheme == "unix" and sep:
        return Address("unix", path=_socket_path(rest, text))
    if scheme == "vsock" and sep:
        cid_text, colon, port_text = rest.partition(":")
        if not colon:
            raise AddressError(f"{text!r}: expected vsock://CID:PORT")
        if not (cid_text == "-1" or is_digits(cid_text)) or int(cid_text) > U32_MAX:
            raise AddressError(f"{text!r}: CID must be -1 (any) or a number from 0 to {U32_MAX}")
        return Address("vsock", cid=int(cid_text), port=_u32(port_text, "port", text))
    if scheme == "hvsock" and sep:
        path, colon, port_text = rest.rpartition(":")
        if not colon:
            raise AddressError(
                f"{text!r}: the guest port is missing; expected hvsock:///path/to/vmm.sock:PORT"
            )
        return Address("hvsock", path=_socket_path(path, text), port=_u32(port_text, "port", text))
    if scheme == "serial" and sep:
        if not rest.startswith("/") or "\0" in rest:
            raise AddressError(f"{text!r}: expected serial:///dev/PORT, an absolute character device path")
        return Address("serial", path=rest)
    raise AddressError(
        f"{text!r}: expected unix:///path, vsock://CID:PORT, hvsock:///path:PORT or serial:///dev/PORT"
    )

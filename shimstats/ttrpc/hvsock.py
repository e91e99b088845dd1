"""The hybrid vsock handshake without I/O: the line we send and a reader for the VMM's answer.

Firecracker and Cloud Hypervisor expose a guest's vsock ports through one unix socket: the host sends
``CONNECT <port>\\n`` and the VMM answers ``OK <host port>\\n`` once the guest has accepted (the dialer kata's
runtime uses: kata-containers src/runtime/virtcontainers/pkg/agent/protocols/client/client.go,
``HybridVSockDialer``; it takes any line containing "OK", we want "OK" and a number). After the newline
the socket carries raw ttrpc, so the dialer feeds bytes one at a time and nothing after the line is lost
(docs/spec/ttrpc.md §7.1).
"""

from __future__ import annotations

import re

__all__ = ["HANDSHAKE_MAX", "HandshakeError", "HandshakeReply", "connect_request"]

HANDSHAKE_MAX = 64
"""Longest answer line we wait for: "OK " plus a u32 is 13 bytes; Firecracker caps its request line at 32."""

_OK = re.compile(rb"OK [0-9]+")


class HandshakeError(Exception):
    """The VMM did not accept: the message says what it did instead (the dialer prefixes the address)."""


def connect_request(port: int) -> bytes:
    """The line asking the VMM for guest vsock ``port``."""
    return f"CONNECT {port}\n".encode()


class HandshakeReply:
    """The VMM's answer line, fed as it arrives: ``feed`` returns the bytes after it once it is complete."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.line = bytearray()

    def feed(self, data: bytes) -> bytes | None:
        """None while the line is incomplete; once it is an OK line, what came after it (often b"")."""
        for index, byte in enumerate(data):
            if byte == ord("\n"):
                if _OK.fullmatch(self.line):
                    return data[index + 1 :]
                raise self._refused()
            self.line.append(byte)
            if len(self.line) > HANDSHAKE_MAX:
                raise self._refused()
        return None

    def eof(self) -> None:
        """The VMM hung up before a whole line: always an error."""
        got = f"; it sent {bytes(self.line)!r} first" if self.line else ""
        raise HandshakeError(
            f"closed the connection instead of answering CONNECT {self.port}{got} "
            f"(is anything listening on guest vsock port {self.port}?)"
        )

    def _refused(self) -> HandshakeError:
        return HandshakeError(f"answered CONNECT {self.port} with {bytes(self.line)!r}, expected 'OK <port>'")

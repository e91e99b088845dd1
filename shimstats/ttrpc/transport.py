"""Where ttrpc bytes travel: the address kinds, and the error dialling or listening raises.

* ``unix:///abs/path`` (or a bare absolute path): a unix stream socket, as containerd shims use.
* ``vsock://CID:PORT``: AF_VSOCK, as kata-agent listens (``vsock://-1:1024``; CID -1 = any, for listening).
* ``hvsock:///path/to/kata.hvsock:PORT``: hybrid vsock (Firecracker, Cloud Hypervisor). Dial only: connect to
  the VMM's unix socket, send ``CONNECT <port>\\n``, and the VMM answers ``OK <host port>\\n`` once the guest
  has accepted; after that line the socket carries raw ttrpc.
* ``serial:///dev/vport0p1``: a virtio-serial port in a guest (how Kata 1.x reached its agent). Listen only:
  the port is one byte stream, served as one connection for as long as the host end is open; the host dials
  the unix socket the VMM made for it (qemu ``-chardev socket``), so the host side is a plain ``unix://``.

The grammar is ``address.py``; dialling is ``dial.py`` (with ``hvsock.py``, the handshake without I/O),
listening ``listen.py`` (serial ports: ``serial.py``), who the peer is ``peer.py``. Every error names the
address, so a log line says which socket is at fault.
"""

from __future__ import annotations

from shimstats.ttrpc.address import Address, AddressError, parse_address

__all__ = ["Address", "AddressError", "TransportError", "as_address", "parse_address"]


class TransportError(ConnectionError):
    """Dialing or listening failed; the message names the address and the reason."""


def as_address(addr: Address | str) -> Address:
    """``addr`` itself, or the Address its text parses to."""
    return addr if isinstance(addr, Address) else parse_address(addr)

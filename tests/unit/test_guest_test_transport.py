"""The ``serial:///dev/...`` address kind guest-test's agent listens on (virtio-serial ports)."""

from __future__ import annotations

import pytest

from shimstats.ttrpc.transport import Address, AddressError, parse_address


def test_serial_address_round_trips() -> None:
    address = parse_address("serial:///dev/vport0p1")
    assert address == Address("serial", path="/dev/vport0p1")
    assert str(address) == "serial:///dev/vport0p1"
    assert parse_address(str(address)) == address


@pytest.mark.parametrize("text", ["serial://dev/vport0p1", "serial://", "serial:///dev/bad\0port"])
def test_serial_address_needs_an_absolute_device_path(text: str) -> None:
    with pytest.raises(AddressError, match="serial:///dev/PORT"):
        parse_address(text)


def test_unknown_schemes_name_serial_among_the_choices() -> None:
    with pytest.raises(AddressError, match="or serial:///dev/PORT"):
        parse_address("tcp://127.0.0.1:1")

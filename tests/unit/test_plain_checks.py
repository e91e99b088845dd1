"""The address and identifier checks the proxy's start and delete run, written without regular expressions
(compiling them cost every start and delete): held here to the expressions they replace, on any text."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shimstats.identifiers import IDENTIFIER_MAX, identifier_problem, is_identifier
from shimstats.ttrpc.address import U32_MAX, AddressError, is_digits, parse_address

DIGITS = re.compile(r"[0-9]+")
CID = re.compile(r"-1|[0-9]+")
IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
"""containerd's pkg/identifiers rule, as shimstats.identifiers held it before."""

NEAR = st.text(alphabet="09aZ._-/:\n ٣²１ßİ\x00", max_size=12)
"""Text made of what each rule turns on: ASCII and other scripts' digits and letters, the separators,
a newline (where ``$`` would differ from a full match), and what may never appear."""
ANY = st.one_of(NEAR, st.text(max_size=12))


@given(ANY)
@example("")
@example("0")
@example("-1")
@example("1\n")
@example("٣")
def test_digits_as_the_expression(text: str) -> None:
    assert is_digits(text) == (DIGITS.fullmatch(text) is not None)


@given(ANY)
@example("a")
@example("a.b-c_d")
@example("a..b")
@example(".a")
@example("a-")
@example("ß")
@example("a\n")
def test_identifier_as_the_expression(value: str) -> None:
    assert is_identifier(value) == (IDENTIFIER.fullmatch(value) is not None)
    expected = bool(value) and len(value) <= IDENTIFIER_MAX and IDENTIFIER.fullmatch(value) is not None
    assert (identifier_problem(value) is None) == expected


def _old_vsock(cid_text: str, port_text: str) -> tuple[int, int] | None:
    """vsock://CID:PORT as parse_address accepted it with the expressions."""
    if not CID.fullmatch(cid_text) or int(cid_text) > U32_MAX:
        return None
    if not DIGITS.fullmatch(port_text) or int(port_text) > U32_MAX:
        return None
    return int(cid_text), int(port_text)


CIDS = st.one_of(NEAR, st.integers(-2, U32_MAX + 1).map(str))
PORTS = st.one_of(NEAR, st.integers(0, 2**33).map(str))


@given(CIDS, PORTS)
@example("-1", "1024")
@example("-0", "1")
@example("3", "4294967296")
@example("٣", "1024")
def test_vsock_addresses_accepted_and_refused_as_before(cid_text: str, port_text: str) -> None:
    rest = f"{cid_text}:{port_text}"
    cid, _, port = rest.partition(":")
    try:
        address = parse_address(f"vsock://{rest}")
    except AddressError:
        got = None
    else:
        got = (address.cid, address.port)
    assert got == _old_vsock(cid, port)


@pytest.mark.parametrize("port", ["1024", "0", "4294967295"])
def test_hvsock_ports(port: str) -> None:
    assert parse_address(f"hvsock:///run/vc/clh.sock:{port}").port == int(port)


@pytest.mark.parametrize("port", ["", "-1", "4294967296", "1e3", "٣", " 1", "1\n"])
def test_hvsock_ports_refused(port: str) -> None:
    with pytest.raises(AddressError):
        parse_address(f"hvsock:///run/vc/clh.sock:{port}")

"""shimstats.ttrpc address syntax: one parser for unix, vsock and hybrid vsock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shimstats.ttrpc.transport import Address, AddressError, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:///run/containerd/s/abc", Address("unix", path="/run/containerd/s/abc")),
        ("/run/shimstats.sock", Address("unix", path="/run/shimstats.sock")),
        ("vsock://-1:1024", Address("vsock", cid=-1, port=1024)),
        ("vsock://3:1024", Address("vsock", cid=3, port=1024)),
        ("vsock://4294967295:4294967295", Address("vsock", cid=0xFFFFFFFF, port=0xFFFFFFFF)),
        (
            "hvsock:///run/vc/firecracker/abc/root/kata.hvsock:1024",
            Address("hvsock", path="/run/vc/firecracker/abc/root/kata.hvsock", port=1024),
        ),
        # The port is after the last colon, so a colon inside the path is kept.
        ("hvsock:///tmp/a:b/kata.hvsock:2", Address("hvsock", path="/tmp/a:b/kata.hvsock", port=2)),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    ["unix:///run/x.sock", "vsock://-1:1024", "vsock://2:5", "hvsock:///run/kata.hvsock:1024"],
)
def test_str_is_canonical_text(text: str) -> None:
    assert str(parse_address(text)) == text


def test_bare_path_prints_as_unix_url() -> None:
    assert str(parse_address("/run/x.sock")) == "unix:///run/x.sock"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("unix://relative/path", "absolute"),
        ("relative.sock", "expected unix"),
        ("tcp://127.0.0.1:80", "expected unix"),
        ("vsock://3", "CID:PORT"),
        ("vsock://-2:1024", "CID"),
        ("vsock://x:1024", "CID"),
        ("vsock://3:+5", "port"),
        ("vsock://3:4294967296", "port"),
        ("vsock://4294967296:1", "CID"),
        ("hvsock:///run/kata.hvsock", "port"),
        ("hvsock://kata.hvsock:1024", "absolute"),
        ("unix:///" + "a" * 200, "107"),
        ("unix:///bad\0path", "NUL"),
    ],
)
def test_bad_addresses_name_the_text(text: str, complaint: str) -> None:
    with pytest.raises(AddressError, match=complaint) as caught:
        parse_address(text)
    assert repr(text) in str(caught.value)


# The fields a kind does not use are pinned to their defaults: hypothesis fills a NamedTuple's optional
# fields from their annotations when they are real types (shimstats.ttrpc.address has no future import).
addresses = st.one_of(
    st.builds(
        Address,
        kind=st.just("unix"),
        path=st.from_regex(r"/[a-z0-9._:/-]{0,60}", fullmatch=True),
        cid=st.just(0),
        port=st.just(0),
    ),
    st.builds(
        Address,
        kind=st.just("vsock"),
        path=st.just(""),
        cid=st.integers(-1, 0xFFFFFFFF),
        port=st.integers(0, 0xFFFFFFFF),
    ),
    st.builds(
        Address,
        kind=st.just("hvsock"),
        path=st.from_regex(r"/[a-z0-9._:/-]{0,60}", fullmatch=True),
        cid=st.just(0),
        port=st.integers(0, 0xFFFFFFFF),
    ),
)


@given(addresses)
def test_str_round_trips(address: Address) -> None:
    assert parse_address(str(address)) == address

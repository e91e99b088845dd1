"""shimstats.discovery without a shim: listing sandbox directories, agent URL → our address, the proxy spec.

The vsock form (QEMU) is tested here only as a mapping: vhost-vsock needs a VM with a vsock device, which
these machines cannot run, so no test dials a real CID. The hybrid-vsock form is dialled end to end in
tests/integration/test_discovery.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shimstats.discovery import (
    DEFAULT_ROOTS,
    KATA_AGENT,
    MONITOR_SOCKET,
    DiscoveryError,
    KataSpec,
    Sandbox,
    dial_address,
    find_sandbox,
    kata_spec,
    list_sandboxes,
    parse_agent_port,
    parse_kata_spec,
)
from shimstats.ttrpc import Address, parse_address


@pytest.fixture
def bound() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for s in sockets:
        s.close()


def make_sandbox(root: Path, sandbox_id: str, bound: list[socket.socket]) -> Path:
    """A sandbox directory holding a real (bound) unix socket file, as a Kata shim leaves it."""
    (root / sandbox_id).mkdir(parents=True)
    path = root / sandbox_id / MONITOR_SOCKET
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    bound.append(s)
    return path


# -- agent URL → address ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "port", "expected"),
    [
        # QEMU (Go VSock.String, runtime-rs qemu "vsock://{cid}" + ":{port}"): CID kept, port replaced.
        ("vsock://1234567:1024", 2048, "vsock://1234567:2048"),
        ("vsock://3:1024", KATA_AGENT, "vsock://3:1024"),
        ("vsock://4294967295:1024", 9999, "vsock://4294967295:9999"),
        # Cloud Hypervisor / Firecracker (HybridVSock.String): socket kept, guest port replaced.
        ("hvsock:///run/vc/vm/abc/clh.sock:1024", 2048, "hvsock:///run/vc/vm/abc/clh.sock:2048"),
        (
            "hvsock:///run/vc/firecracker/abc/root/kata.hvsock:1024",
            KATA_AGENT,
            "hvsock:///run/vc/firecracker/abc/root/kata.hvsock:1024",
        ),
        (
            "  hvsock:///run/kata/abc/root/kata.hvsock:1024\n".strip(),
            7,
            "hvsock:///run/kata/abc/root/kata.hvsock:7",
        ),
    ],
)
def test_agent_url_maps_to_the_address_we_dial(url: str, port: int | str, expected: str) -> None:
    address = dial_address(url, parse_agent_port(port))
    assert address == parse_address(expected)
    assert str(address) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("remote:///run/peerpod/abc/agent.sock:1024", "scheme remote (a remote hypervisor"),
        ("mock:///tmp/x", "scheme mock is not one we can dial"),
        ("unix:///run/agent.sock", "scheme unix is not one we can dial"),
        (":1024", "is not a URL"),  # runtime-rs before the agent has a socket address
        ("<html>busy</html>", "is not a URL"),
        ("vsock://abc:1024", "does not parse"),
        ("vsock://3", "does not parse"),
        ("hvsock://relative/path:1024", "does not parse"),
        ("vsock://3:99999999999", "does not parse"),
    ],
)
def test_agent_urls_we_cannot_dial_name_the_socket(url: str, complaint: str) -> None:
    with pytest.raises(DiscoveryError) as caught:
        dial_address(url, 2048, socket="/run/vc/sbs/abc/shim-monitor.sock")
    assert complaint in str(caught.value)
    assert "/run/vc/sbs/abc/shim-monitor.sock" in str(caught.value)
    assert caught.value.socket == "/run/vc/sbs/abc/shim-monitor.sock"


@pytest.mark.parametrize(
    ("value", "expected"), [(2048, 2048), ("2048", 2048), ("kata-agent", "kata-agent"), (1, 1)]
)
def test_agent_port_settings(value: object, expected: object) -> None:
    assert parse_agent_port(value) == expected


@pytest.mark.parametrize("value", [0, -1, 2**32, "", "kata", "20x", True, 2048.0, None])
def test_bad_agent_ports_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="agent port"):
        parse_agent_port(value)


# -- sandbox directories ------------------------------------------------------------------------------------


def test_default_roots_are_the_go_runtime_then_runtime_rs() -> None:
    # shim_management.go: GetSandboxesStoragePath, then GetSandboxesStoragePathRust (as ClientSocketAddress).
    assert DEFAULT_ROOTS == ("/run/vc/sbs", "/run/kata")


def test_list_sandboxes_finds_directories_holding_the_shim_socket(
    tmp_path: Path, bound: list[socket.socket]
) -> None:
    go, rs = tmp_path / "vc-sbs", tmp_path / "kata"
    a = make_sandbox(go, "aaa", bound)
    b = make_sandbox(rs, "bbb", bound)
    make_sandbox(rs, "aaa", bound)  # the same id under both: the first root wins
    (go / "persist-only").mkdir()  # a sandbox directory without a shim socket: not a running sandbox
    (go / "plain-file").mkdir()
    (go / "plain-file" / MONITOR_SOCKET).write_text("not a socket")
    found = list_sandboxes([str(go), str(rs), str(tmp_path / "missing")])
    assert found == [Sandbox("aaa", str(a)), Sandbox("bbb", str(b))]
    assert found[0].root == str(go)
    assert found[1].root == str(rs)


def test_list_sandboxes_of_missing_roots_is_empty(tmp_path: Path) -> None:
    assert list_sandboxes([str(tmp_path / "none"), str(tmp_path / "also-none")]) == []


def test_a_root_that_cannot_be_listed_is_an_error_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    root.symlink_to(root)  # ELOOP, for root too (root reads any mode-0 directory)
    with pytest.raises(DiscoveryError) as caught:
        list_sandboxes([str(root)])
    assert str(root) in str(caught.value)
    assert "cannot list" in str(caught.value)


def test_find_sandbox_prefers_the_first_root(tmp_path: Path, bound: list[socket.socket]) -> None:
    go, rs = tmp_path / "vc-sbs", tmp_path / "kata"
    only_rs = make_sandbox(rs, "rs-only", bound)
    both_go = make_sandbox(go, "both", bound)
    make_sandbox(rs, "both", bound)
    roots = [str(go), str(rs)]
    assert find_sandbox("rs-only", roots) == Sandbox("rs-only", str(only_rs))
    assert find_sandbox("both", roots) == Sandbox("both", str(both_go))
    with pytest.raises(DiscoveryError) as caught:
        find_sandbox("gone", roots)
    assert str(go / "gone" / MONITOR_SOCKET) in str(caught.value)
    assert str(rs / "gone" / MONITOR_SOCKET) in str(caught.value)
    for bad in ("", "..", "a/b"):
        with pytest.raises(DiscoveryError, match="not a sandbox id"):
            find_sandbox(bad, roots)


# -- the proxy's spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        KataSpec("abc"),
        KataSpec("abc", KATA_AGENT, ("/run/kata",)),
        KataSpec("a.b_c-d", 4000, ("/srv/with space", "/run/vc/sbs")),
    ],
)
def test_kata_spec_round_trips(spec: KataSpec) -> None:
    text = kata_spec(spec.sandbox_id, spec.port, spec.roots)
    assert text.startswith(f"kata://{spec.sandbox_id}?")
    assert parse_kata_spec(text) == spec


def test_plain_addresses_are_not_kata_specs() -> None:
    assert parse_kata_spec("hvsock:///run/vc/vm/x/clh.sock:2048") is None
    assert parse_kata_spec("unix:///tmp/a.sock") is None


@pytest.mark.parametrize(
    "text",
    [
        "kata://",
        "kata://a/b?port=1",
        "kata://a?port=0",
        "kata://a?port=1&port=2",
        "kata://a?x=1",
        "kata://a?root=rel",
    ],
)
def test_broken_kata_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"kata://|agent port|absolute"):
        parse_kata_spec(text)


def test_dial_address_keeps_the_kind() -> None:
    assert dial_address("vsock://7:1024", 2048) == Address("vsock", cid=7, port=2048)

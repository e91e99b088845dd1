"""guest-test's control channel: messages, and captures packed for the trip out of the guest."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from pathlib import Path

import pytest

from shimstats.guest_test import protocol

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroupfs"


def test_messages_are_one_line_each_way() -> None:
    message = {"type": "phase", "phase": "oom", "notes": {"killed": "dd"}, "capture": "a\nb"}
    line = protocol.encode(message)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert protocol.decode(line) == message


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"no": "type"}', b'{"type": 3}'])
def test_what_is_not_a_message_is_refused(line: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(line)


def test_a_message_needs_a_type() -> None:
    with pytest.raises(ValueError, match="type"):
        protocol.encode({"phase": "oom"})


def tree(root: Path) -> dict[str, str]:
    """Every path under root: file contents, or where a symlink points."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_text()
    return out


def test_a_v1_capture_with_its_symlinks_survives_the_trip(tmp_path: Path) -> None:
    capture = FIXTURES / "v1-6.1.0-56-amd64-qemu-container-anon"
    protocol.unpack(protocol.pack(capture), tmp_path / "out")
    assert tree(tmp_path / "out") == tree(capture)
    assert (tmp_path / "out" / "cgroup" / "cpu").is_symlink()


def packed(*members: tuple[tarfile.TarInfo, bytes]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buffer.getvalue()).decode()


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, b""


@pytest.mark.parametrize(
    "member",
    [
        (tarfile.TarInfo("../escape"), b"x"),
        (tarfile.TarInfo("/abs"), b"x"),
        symlink("cgroup/cpu", "/etc"),
        symlink("cgroup/cpu", "../../x"),
    ],
    ids=["dotdot", "absolute", "absolute-link", "dotdot-link"],
)
def test_a_capture_cannot_write_outside_its_directory(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes]
) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack(packed(member), tmp_path / "out")
    assert not (tmp_path / "escape").exists()

"""The guest-test VM's command line, shares, disks and sockets."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import shimstats
from shimstats.guest_test import protocol, qemu
from shimstats.guest_test.image import Kernel

KERNEL = Kernel(Path("/k/vmlinuz"), Path("/k/initrd.cpio"), "6.1.0-test", "test kernel", ())


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_shares_cover_this_python_and_this_shimstats_without_nesting() -> None:
    shares = qemu.Shares.for_this_python()
    dirs = shares.directories
    assert all(not a.is_relative_to(b) for a in dirs for b in dirs if a != b)

    def covered(path: str) -> bool:
        return any(Path(os.path.realpath(path)).is_relative_to(d) for d in dirs)

    assert covered(sys.prefix)
    assert covered(shimstats.__file__)
    assert covered(os.path.dirname(sys.executable))
    assert shares.python == sys.executable
    root = Path(shimstats.__file__).resolve().parent.parent
    assert root in shares.pythonpath
    for name, target in shares.links:
        assert os.readlink(name) == target


def test_the_command_line_carries_every_device_and_the_shares() -> None:
    shares = qemu.Shares((Path("/usr"), Path("/opt/py")), (("/lib", "usr/lib"),), "/opt/py/bin/python3", ())
    sockets = qemu.Sockets.under(Path("/tmp/x"))
    argv = qemu.command(
        KERNEL, qemu.TCG, Path("/tmp/c.log"), shares=shares, sockets=sockets, disks=[Path("/d"), Path("/s")]
    )
    assert argv[:5] == ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max"]
    assert "-nodefaults" in argv
    assert values(argv, "-serial") == ["file:/tmp/c.log"]
    assert values(argv, "-drive") == ["file=/d,format=raw,if=virtio", "file=/s,format=raw,if=virtio"]
    ports = [v.rpartition("name=")[2] for v in values(argv, "-device") if v.startswith("virtserialport")]
    assert ports == [protocol.CONTROL_PORT, *protocol.AGENT_PORTS]
    chardevs = values(argv, "-chardev")
    assert chardevs[0] == "socket,id=port0,path=/tmp/x/control.sock,server=on,wait=off"
    fsdevs = values(argv, "-fsdev")
    assert fsdevs == [
        "local,id=fs0,path=/usr,security_model=none,readonly=on,multidevs=remap",
        "local,id=fs1,path=/opt/py,security_model=none,readonly=on,multidevs=remap",
    ]
    append = values(argv, "-append")[0]
    assert "shimstats.shares=/usr,/opt/py" in append.split()
    assert "shimstats.links=/lib:usr/lib" in append.split()
    assert "shimstats.probe=1" not in append


def test_a_probe_boot_has_no_devices_and_says_so() -> None:
    argv = qemu.command(KERNEL, qemu.KVM, Path("/tmp/p.log"), probe=True)
    assert argv[1:5] == ["-accel", "kvm", "-cpu", "host"]
    assert values(argv, "-append")[0].endswith(" shimstats.probe=1")
    assert not values(argv, "-drive")
    assert not values(argv, "-fsdev")


def test_an_over_long_kernel_command_line_is_refused() -> None:
    shares = qemu.Shares(tuple(Path(f"/{'x' * 200}{n}") for n in range(12)), (), "/p", ())
    with pytest.raises(qemu.QemuError, match="command line"):
        qemu.command(KERNEL, qemu.TCG, Path("/c"), shares=shares)


def test_asking_for_tcg_never_probes(tmp_path: Path) -> None:
    assert qemu.choose_accel(KERNEL, "tcg", tmp_path) == (qemu.TCG, "TCG as asked")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4 (e2fsprogs)")
def test_disks_are_a_fresh_ext4_image_and_an_empty_swap_image(tmp_path: Path) -> None:
    data, swap = qemu.make_disks(tmp_path)
    assert data.stat().st_size == qemu.DATA_DISK_MIB << 20
    assert swap.stat().st_size == qemu.SWAP_DISK_MIB << 20
    with open(data, "rb") as f:
        f.seek(1024 + 0x38)  # the ext2/3/4 superblock's s_magic
        assert f.read(2) == b"\x53\xef"
    assert data.stat().st_blocks * 512 < data.stat().st_size, "sparse: only the metadata is written"

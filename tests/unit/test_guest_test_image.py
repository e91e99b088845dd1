"""guest-test's boot files: the newc cpio writer, module dependency order, a bzImage's release."""

from __future__ import annotations

import io
import lzma
import stat
import struct
from pathlib import Path

import pytest

from shimstats.guest_test import cpio, image, modules


def read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """An independent reader of the format as the kernel documents it (buffer-format.rst): 110-byte
    header of "070701" and 13 hex fields, name (NUL-terminated) and data each padded to 4 bytes."""
    out: list[tuple[str, int, bytes]] = []
    at = 0
    while True:
        assert data[at : at + 6] == b"070701", f"bad magic at {at}"
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_at = at + 110
        name = data[name_at : name_at + namesize - 1].decode()
        assert data[name_at + namesize - 1] == 0
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        assert data_at % 4 == 0
        body = data[data_at : data_at + filesize]
        at = data_at + filesize + (-filesize % 4)
        if name == cpio.TRAILER:
            assert at == len(data)
            return out
        out.append((name, mode, body))


def test_cpio_round_trips_files_directories_and_links() -> None:
    entries = [
        cpio.Entry.directory("bin"),
        cpio.Entry.file("bin/busybox", b"\x7fELF" + bytes(range(7)), 0o755),
        cpio.Entry.file("init", b"#!/bin/sh\n"),
        cpio.Entry.symlink("sh", "bin/busybox"),
        cpio.Entry.file("empty", b""),
    ]
    out = io.BytesIO()
    cpio.write(out, entries)
    members = read_newc(out.getvalue())
    assert [(n, m, b) for n, m, b in members] == [(e.name, e.mode, e.data) for e in entries]
    assert stat.S_ISDIR(members[0][1])
    assert stat.S_ISLNK(members[3][1])
    assert stat.S_IMODE(members[1][1]) == 0o755


def test_cpio_refuses_absolute_names() -> None:
    with pytest.raises(ValueError, match="relative"):
        cpio.write(io.BytesIO(), [cpio.Entry.file("/init", b"")])


def module_image(depends: str) -> bytes:
    """The part of a module's .modinfo section that matters here, between some ELF-ish bytes."""
    return b"\x7fELF\0\0junk\0license=GPL\0depends=" + depends.encode() + b"\0vermagic=6.1.0 SMP\0"


def test_depends_reads_the_modinfo_string() -> None:
    assert modules.depends(module_image("jbd2,mbcache,crc16")) == ("jbd2", "mbcache", "crc16")
    assert modules.depends(module_image("")) == ()
    assert modules.depends(b"\x7fELF no modinfo") == ()
    assert modules.depends(module_image("crc32c-generic")) == ("crc32c_generic",)


def test_module_names_drop_every_suffix_and_use_underscores() -> None:
    assert modules.module_name("kernel/net/9p/9pnet_virtio.ko.xz") == "9pnet_virtio"
    assert modules.module_name("crc32c-generic.ko") == "crc32c_generic"
    with pytest.raises(ValueError, match="not a kernel module"):
        modules.module_name("README")


def make_tree(tmp_path: Path, deps: dict[str, str], builtin: tuple[str, ...] = ()) -> Path:
    tree = tmp_path / "lib" / "modules" / "6.1.0-test"
    for name, depends in deps.items():
        directory = tree / "kernel" / name
        directory.mkdir(parents=True)
        if name == "ext4":  # one compressed module, as Debian 13 ships them all
            (directory / f"{name}.ko.xz").write_bytes(lzma.compress(module_image(depends)))
        else:
            (directory / f"{name}.ko").write_bytes(module_image(depends))
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "modules.builtin").write_text("".join(f"kernel/x/{b}.ko\n" for b in builtin))
    return tree


def test_load_order_puts_dependencies_first_and_skips_built_in_ones(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path,
        {"ext4": "jbd2,mbcache,crc16", "jbd2": "", "mbcache": "", "crc16": "", "virtio_blk": "virtio"},
        builtin=("virtio",),
    )
    files = modules.index(tree)
    order = modules.load_order(["virtio_blk", "ext4"], files, modules.builtin(tree), modules.unpack)
    assert order == ["virtio_blk", "jbd2", "mbcache", "crc16", "ext4"]
    assert modules.unpack(files["ext4"]) == module_image("jbd2,mbcache,crc16")


def test_a_module_neither_present_nor_built_in_is_named(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {"9p": "9pnet,netfs", "9pnet": ""})
    with pytest.raises(modules.ModuleError, match=r"netfs \(needed by 9p\)"):
        modules.load_order(["9p"], modules.index(tree), modules.builtin(tree), modules.unpack)


def bzimage(version: str) -> bytes:
    """A minimal x86 boot image: the setup header's magic, and kernel_version pointing at the string."""
    data = bytearray(0x400)
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x20E, 0x300 - 0x200)
    text = version.encode() + b"\0"
    data[0x300 : 0x300 + len(text)] = text
    return bytes(data)


def test_kernel_release_comes_from_the_setup_header() -> None:
    assert image.kernel_release(bzimage("6.12.9-custom (me@host) #1 SMP")) == "6.12.9-custom"
    with pytest.raises(image.ImageError, match="bzImage"):
        image.kernel_release(b"\x7fELF" + bytes(0x400))


def test_the_packed_init_is_the_shipped_script() -> None:
    script = image.init_script()
    assert script.startswith(b"#!/bin/busybox sh")
    assert b"shimstats.guest_test.inguest" in script

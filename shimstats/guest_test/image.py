"""The guest's boot files, built once and cached: a kernel, the modules it needs and a busybox initramfs.

A kernel comes from one of (``--kernel``):

* ``debian``: the package Debian's ``linux-image-amd64`` points to, fetched with ``apt-get download``;
* a ``linux-image-*.deb`` file (what ``make bindeb-pkg`` builds);
* a directory with ``vmlinuz`` (or ``boot/vmlinuz-*``, or a build tree's ``arch/x86/boot/bzImage``) and its
  modules (``lib/modules/<release>/``, or the ``.ko`` files of a build tree);
* a bzImage file alone, for a kernel with everything the guest needs built in.

The initramfs holds busybox (from Debian's ``busybox-static``), ``guest/init.sh`` as ``/init`` and the
modules of GUEST_MODULES not built into the kernel, with their dependencies, in load order. No Python and no
root filesystem: the guest mounts the host's own Python read-only over 9p (see ``shares``).
Everything lives under ``cache_root()``; a build is redone only when its inputs change.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shimstats.guest_test import cpio, modules

GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "crc32c_generic",
    "ext4",
    "9pnet_virtio",
    "9p",
)
"""What the guest loads: the PCI transport, disks, serial ports (agent and control channel), ext4 (plus the
crc32c it asks the crypto API for at mount time, not a link-time dependency) and 9p over virtio."""

BUSYBOX_PACKAGE = "busybox-static"
DEBIAN_META_PACKAGE = "linux-image-amd64"
BUILD_FORMAT = 1
"""Bumped when the layout of a built kernel directory changes, so old caches are rebuilt."""

Log = Callable[[str], None]


class ImageError(RuntimeError):
    """The guest's boot files cannot be made; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Kernel:
    """A bootable guest: kernel image, initramfs and what they are."""

    vmlinuz: Path
    initrd: Path
    release: str
    """``uname -r`` of the kernel, read from the image's own header."""
    source: str
    """Where it came from, for provenance: ``linux-image-6.1.0-56-amd64 6.1.192-2`` or a path."""
    modules: tuple[str, ...]
    """Modules the initramfs loads, in order (empty when everything is built in)."""


def cache_root() -> Path:
    """``$SHIMSTATS_CACHE/guest-test``, by default ``~/.cache/shimstats/guest-test``."""
    base = os.environ.get("SHIMSTATS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "shimstats")
    return Path(base) / "guest-test"


def init_script() -> bytes:
    """The guest's PID 1 (package data, so an installed shimstats has it too)."""
    return resources.files("shimstats.guest_test").joinpath("guest/init.sh").read_bytes()


def kernel_release(image: bytes) -> str:
    """The release of an x86 bzImage, from its setup header (``kernel_version`` at 0x20E points at it)."""
    if len(image) < 0x210 or image[0x202:0x206] != b"HdrS":
        raise ImageError("not an x86 bzImage (no HdrS setup header): pass a bzImage / vmlinuz file")
    (offset,) = struct.unpack_from("<H", image, 0x20E)
    start = offset + 0x200
    end = image.find(b"\0", start, start + 256)
    text = image[start:end].decode("ascii", "replace") if end > start else ""
    if not text:
        raise ImageError("the bzImage does not name its version")
    return text.split()[0]


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    except FileNotFoundError:
        raise ImageError(f"{what}: {argv[0]} not found (a Debian-based host with apt is needed)") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-1500:]
        raise ImageError(f"{what}: {' '.join(argv)} failed with {done.returncode}: {tail}")
    return done.stdout


def debian_kernel_package() -> str:
    """The versioned package ``linux-image-amd64`` depends on (``linux-image-6.1.0-56-amd64``)."""
    out = _run(["apt-cache", "depends", DEBIAN_META_PACKAGE], f"resolving {DEBIAN_META_PACKAGE}")
    for line in out.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-") and name[12:13].isdigit():
            return name
    raise ImageError(f"apt-cache depends {DEBIAN_META_PACKAGE} names no linux-image-<version> package")


def download(package: str, debs: Path, log: Log) -> Path:
    """The package's .deb in ``debs``, fetched with ``apt-get download`` the first time."""
    debs.mkdir(parents=True, exist_ok=True)
    have = sorted(debs.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    log(f"downloading {package} (apt-get download) into {debs}")
    # Into a directory of our own, then renamed into place: a run downloading the same package at the
    # same time never sees a half-written .deb.
    with tempfile.TemporaryDirectory(prefix=".download.", dir=debs) as private:
        _run(["apt-get", "download", "-q", package], f"downloading {package}", cwd=Path(private))
        fetched = sorted(Path(private).glob(f"{package}_*.deb"))
        if not fetched:
            raise ImageError(f"apt-get download {package} left no .deb in {debs}")
        os.replace(fetched[-1], debs / fetched[-1].name)
    return debs / fetched[-1].name


def deb_identity(deb: Path) -> str:
    """``Package Version`` of a .deb, for provenance."""
    out = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], f"reading {deb}")
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return f"{fields.get('Package', deb.name)} {fields.get('Version', '?')}"


def _extract(deb: Path, into: Path) -> None:
    _run(["dpkg-deb", "-x", str(deb), str(into)], f"unpacking {deb.name}")


@dataclass(frozen=True)
class _Unpacked:
    """A kernel laid out on disk: its image and the module tree (None when there is none)."""

    vmlinuz: Path
    tree: Path | None
    source: str


def _find_vmlinuz(directory: Path) -> Path:
    for candidate in (directory / "vmlinuz", directory / "arch" / "x86" / "boot" / "bzImage"):
        if candidate.is_file():
            return candidate
    boot = sorted((directory / "boot").glob("vmlinuz-*"))
    if boot:
        return boot[-1]
    raise ImageError(
        f"{directory}: no kernel image (looked for vmlinuz, boot/vmlinuz-*, arch/x86/boot/bzImage)"
    )


def _module_tree(directory: Path, release: str) -> Path | None:
    tree = directory / "lib" / "modules" / release
    if tree.is_dir():
        return tree
    if (directory / "modules.builtin").is_file():
        return directory  # a kernel build tree: modules next to their sources
    return None


def _unpack_directory(directory: Path, source: str) -> _Unpacked:
    vmlinuz = _find_vmlinuz(directory)
    release = kernel_release(vmlinuz.read_bytes())
    return _Unpacked(vmlinuz, _module_tree(directory, release), source)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def _path_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _initramfs(busybox: bytes, init: bytes, module_files: list[tuple[str, bytes]]) -> bytes:
    entries = [cpio.Entry.directory(d) for d in ("bin", "dev", "proc", "sys", "tmp", "mnt", "modules")]
    entries.append(cpio.Entry.file("bin/busybox", busybox, 0o755))
    entries.append(cpio.Entry.file("init", init, 0o755))
    for name, image in module_files:
        entries.append(cpio.Entry.file(f"modules/{name}.ko", image))
    order = "".join(f"{name}\n" for name, _ in module_files)
    entries.append(cpio.Entry.file("modules/load.order", order.encode()))
    out = io.BytesIO()
    cpio.write(out, entries)
    return out.getvalue()


def _busybox(cache: Path, log: Log) -> bytes:
    deb = download(BUSYBOX_PACKAGE, cache / "debs", log)
    with tempfile.TemporaryDirectory(prefix="bb.", dir=cache) as tmp:
        _extract(deb, Path(tmp))
        path = Path(tmp) / "bin" / "busybox"
        if not path.is_file():
            raise ImageError(f"{deb.name} holds no bin/busybox")
        return path.read_bytes()


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` in one rename, staged under a name no other run uses: concurrent runs building the
    same kernel each write whole files, and a reader sees the old or the new one."""
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


def _assemble(
    unpacked: _Unpacked, out: Path, cache: Path, log: Log, init: bytes, wanted: Sequence[str]
) -> Kernel:
    """Copy the kernel into ``out`` and pack its initramfs there (inputs already on disk)."""
    image = unpacked.vmlinuz.read_bytes()
    release = kernel_release(image)
    if unpacked.tree is None:
        log(f"{unpacked.source}: no module tree; assuming {', '.join(wanted)} are built in")
        order: list[str] = []
        files: dict[str, Path] = {}
    else:
        files = modules.index(unpacked.tree)
        order = modules.load_order(wanted, files, modules.builtin(unpacked.tree), modules.unpack)
    module_files = [(name, modules.unpack(files[name])) for name in order]
    initrd = _initramfs(_busybox(cache, log), init, module_files)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "vmlinuz", image)
    write_atomic(out / "initrd.cpio", initrd)
    kernel = Kernel(out / "vmlinuz", out / "initrd.cpio", release, unpacked.source, tuple(order))
    meta = {"format": BUILD_FORMAT, "release": release, "source": kernel.source, "modules": order}
    write_atomic(out / "kernel.json", json.dumps(meta, indent=2).encode())
    # One value per file too, for shell scripts (hack/qemu-capture/run.sh).
    write_atomic(out / "kernel.release", f"{release}\n".encode())
    write_atomic(out / "kernel.package", f"{kernel.source}\n".encode())
    return kernel


def _cached(out: Path, key: str) -> Kernel | None:
    try:
        meta = json.loads((out / "kernel.json").read_text(encoding="utf-8"))
        stamp = (out / "inputs").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    if stamp != key or meta.get("format") != BUILD_FORMAT or not (out / "initrd.cpio").is_file():
        return None
    return Kernel(
        out / "vmlinuz", out / "initrd.cpio", meta["release"], meta["source"], tuple(meta["modules"])
    )


def build(
    kernel: str = "debian",
    cache: Path | None = None,
    log: Log = lambda _: None,
    *,
    init: bytes | None = None,
    wanted: Sequence[str] = GUEST_MODULES,
) -> Kernel:
    """The guest for ``kernel``, from cache when current: ``debian``, ``debian:PACKAGE`` (a given Debian
    kernel package) or a path (see the module docstring). ``init`` and ``wanted`` default to guest-test's
    own PID 1 and modules; hack/qemu-capture passes its own."""
    cache = cache or cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    init = init_script() if init is None else init
    inputs = (hashlib.sha256(init).hexdigest()[:12], tuple(wanted), BUILD_FORMAT)
    if kernel == "debian" or kernel.startswith("debian:"):
        package = kernel.partition(":")[2] or debian_kernel_package()
        deb: Path | None = download(package, cache / "debs", log)
        assert deb is not None
        name, key = package, _fingerprint(deb.name, *inputs)
    else:
        path = Path(kernel)
        if not path.exists():
            raise ImageError(f"--kernel {kernel}: no such file or directory (or say 'debian')")
        deb = path if path.is_file() and path.name.endswith(".deb") else None
        name = path.name.split("_")[0] or "kernel"
        key = _fingerprint(_path_identity(path), *inputs)
    out = cache / "kernels" / f"{name}-{key}"
    found = _cached(out, key)
    if found is not None:
        return found
    log(f"building the guest for {kernel} in {out}")
    with tempfile.TemporaryDirectory(prefix="unpack.", dir=cache) as tmp:
        if deb is not None:
            _extract(deb, Path(tmp))
            unpacked = _unpack_directory(Path(tmp), deb_identity(deb))
        elif Path(kernel).is_dir():
            unpacked = _unpack_directory(Path(kernel), str(Path(kernel).resolve()))
        else:
            unpacked = _Unpacked(Path(kernel), None, str(Path(kernel).resolve()))
        built = _assemble(unpacked, out, cache, log, init, wanted)
    write_atomic(out / "inputs", key.encode())
    return built


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shimstats.guest_test.image``: build a guest and print its directory (hack/qemu-capture)."""
    parser = argparse.ArgumentParser(prog="python -m shimstats.guest_test.image", description=__doc__)
    parser.add_argument("--kernel", default="debian", help="debian, debian:PACKAGE or a path")
    parser.add_argument("--init", type=Path, help="the initramfs's /init (default: guest-test's)")
    parser.add_argument("--modules", help="modules to load, space-separated (default: guest-test's)")
    args = parser.parse_args(argv)
    try:
        kernel = build(
            args.kernel,
            log=lambda text: print(text, file=sys.stderr),
            init=args.init.read_bytes() if args.init else None,
            wanted=args.modules.split() if args.modules else GUEST_MODULES,
        )
    except (ImageError, modules.ModuleError, OSError) as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    print(kernel.vmlinuz.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which kernel modules a guest needs, in load order, read from the modules themselves.

busybox ``insmod`` loads one file and resolves nothing, so the initramfs carries every module a wanted one
depends on, listed after its dependencies. A module's dependencies are its ``depends=`` modinfo string
(in the ``.modinfo`` section as ``key=value\\0`` records); names use ``_`` where file names may use ``-``.
"""

from __future__ import annotations

import gzip
import lzma
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
"""Module file endings, uncompressed first; busybox insmod needs the plain .ko, so the others are unpacked."""


class ModuleError(RuntimeError):
    """A wanted module is neither a file in the tree nor built into the kernel."""


def canonical(name: str) -> str:
    """The kernel's own spelling of a module name (``crc32c-generic`` is ``crc32c_generic``)."""
    return name.replace("-", "_")


def module_name(path: str | os.PathLike[str]) -> str:
    """``.../9pnet_virtio.ko.xz`` → ``9pnet_virtio``."""
    base = os.path.basename(os.fspath(path))
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            return canonical(base[: -len(suffix)])
    raise ValueError(f"{path}: not a kernel module file")


def depends(image: bytes) -> tuple[str, ...]:
    """The modules one module image needs loaded first (its modinfo ``depends=``; none when empty)."""
    marker = b"\0depends="
    at = image.find(marker)
    if at < 0:
        return ()
    start = at + len(marker)
    end = image.find(b"\0", start)
    value = image[start : end if end >= 0 else len(image)].decode("ascii", "replace")
    return tuple(canonical(n) for n in value.split(",") if n)


def unpack(path: Path) -> bytes:
    """A module file's ELF image, decompressed (.xz, .gz; .zst needs a tool Python lacks: say so)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise ModuleError(f"{path}: zstd-compressed modules are not supported; unpack them with unzstd first")
    return data


def index(tree: Path) -> dict[str, Path]:
    """Every module file under a ``lib/modules/<release>`` tree, by canonical name."""
    found: dict[str, Path] = {}
    for directory, _, files in os.walk(tree):
        for name in files:
            if name.endswith(SUFFIXES):
                found.setdefault(module_name(name), Path(directory) / name)
    return found


def builtin(tree: Path) -> frozenset[str]:
    """Modules compiled into the kernel, from the tree's ``modules.builtin`` (empty when it has none)."""
    try:
        text = (tree / "modules.builtin").read_text(encoding="utf-8")
    except FileNotFoundError:
        return frozenset()
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def load_order(
    wanted: Iterable[str], files: Mapping[str, Path], built_in: frozenset[str], read: Callable[[Path], bytes]
) -> list[str]:
    """``wanted`` and everything they depend on, each after its dependencies; built-in ones left out.

    ``read`` gives a module file's image (``unpack`` in real use). ModuleError names a module that is
    neither a file nor built in.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, needed_by: str) -> None:
        if name in order or name in built_in:
            return
        if name in visiting:
            return  # a dependency cycle cannot be loaded in any order; the kernel would refuse it anyway
        path = files.get(name)
        if path is None:
            why = f" (needed by {needed_by})" if needed_by else ""
            raise ModuleError(f"kernel module {name}{why} is neither in the module tree nor built in")
        visiting.add(name)
        for dependency in depends(read(path)):
            visit(dependency, name)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(canonical(name), "")
    return order

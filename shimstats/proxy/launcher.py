"""The fast launcher: ``containerd-shim-kata-stats-v2`` as a script that runs the interpreter with ``-S``.

containerd waits for the shim's ``start`` and ``delete`` on every container start and delete. pip's console
script cannot pass interpreter flags (pip rewrites the ``#!python`` line to the bare interpreter), so the
interpreter runs ``site`` first: every ``.pth`` file of the environment, the editable-install finder, and
whatever those import (about 30 ms of CPU and 5 MB per process, measured in docs/benchmarks.md). The script
written here starts the interpreter with ``-S`` and puts exactly the directories that hold shimstats and
its dependencies at the front of ``sys.path`` (found at install time from where they are imported from, so
a venv and an editable checkout work alike). The serving process is a fork of ``start``
(shimstats.proxy.launch), so it needs no ``site`` either.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from shimstats.proxy import BINARY

__all__ = ["LAUNCHED_PACKAGES", "LauncherError", "launcher_text", "search_path", "write_launcher"]

LAUNCHED_PACKAGES = ("shimstats", "guest_agent", "google.protobuf", "google.rpc", "setproctitle")
"""What the proxy imports from outside the standard library, in every action (the serving process's
Stats path included): our two packages, protobuf, googleapis-common-protos and setproctitle."""
_SHEBANG_MAX = 255
"""Linux reads at most this many bytes of a ``#!`` line (BINPRM_BUF_SIZE 256, since Linux 5.1)."""


class LauncherError(ValueError):
    """The launcher cannot be written as asked (the message names the path at fault)."""


def _root_of(name: str) -> str:
    """The ``sys.path`` directory that ``import name`` finds ``name`` in."""
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise LauncherError(f"cannot find the package {name} that the proxy imports")
    directory = locations[0]
    for _ in name.split("."):
        directory = os.path.dirname(directory)
    return directory


def search_path(packages: tuple[str, ...] = LAUNCHED_PACKAGES) -> list[str]:
    """The directories holding ``packages`` (and tomli before Python 3.11), each once, in that order."""
    names = packages if sys.version_info >= (3, 11) else (*packages, "tomli")
    roots: list[str] = []
    for name in names:
        root = _root_of(name)
        if root not in roots:
            roots.append(root)
    return roots


def launcher_text(python: str, path: list[str]) -> str:
    """The script: ``#!python -S``, ``path`` in front of ``sys.path``, then the proxy's command line."""
    from shimstats import __version__

    shebang = f"#!{python} -S"
    if any(c.isspace() for c in python) or not os.path.isabs(python):
        raise LauncherError(f"{python!r}: the interpreter must be an absolute path without spaces (#! line)")
    if len(shebang) > _SHEBANG_MAX:
        raise LauncherError(f"{python}: longer than the {_SHEBANG_MAX} bytes Linux reads of a #! line")
    lines = "".join(f"    {entry!r},\n" for entry in path)
    return (
        f"{shebang}\n"
        f'"""{BINARY}: the proxy shim, written by `shimstats install-shim` (shimstats {__version__}).\n\n'
        "-S: no site module, whose .pth files cost every container start and delete; the directories below\n"
        "hold shimstats and its dependencies. Run `shimstats install-shim` again after moving them.\n"
        '"""\n'
        "import sys\n\n"
        "sys.path[0:1] = [  # in place of this script's own directory\n"
        f"{lines}"
        "]\n"
        "from shimstats.proxy.cli import run  # noqa: E402\n\n"
        "run(launcher=__file__)\n"
    )


def write_launcher(directory: str, python: str = sys.executable, name: str = BINARY) -> str:
    """Write the launcher as ``directory/name`` (mode 0755, replacing a file or symlink there atomically);
    return its path. OSError when the directory is not writable."""
    text = launcher_text(python, search_path())
    path = os.path.join(os.path.abspath(directory), name)
    temp = os.path.join(os.path.dirname(path), f".{name}.tmp")
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(temp, 0o755)
    os.replace(temp, path)
    return path

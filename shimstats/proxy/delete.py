"""The ``delete`` action: ``<shim> -namespace NS -address GRPC -publish-binary CONTAINERD -id ID -bundle DIR
delete``, which containerd runs after a task's shim went away, on every container delete, and waits for.

The answer is the inner shim's own ``delete`` (its stdout is the DeleteResponse containerd reads). Unless
something is left to do after it, that program replaces this process: its output and exit status reach
containerd as they are, and nothing of ours runs on. Something is left only when our serving process died
while the inner shim still runs: the inner shim is then told to let go of the task (after its ``delete``,
in shimstats.proxy.launch). Socket files nobody serves any more are removed first. A serving process still
up removes both sockets itself on its way out (shimstats.proxy.relay).

Only the bundle's state file and a probe of two sockets are needed for the common case, so this module
loads nothing more; the rest comes with the rare case.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence

from shimstats.proxy.bundle import BundleState, ShimArgs, StartError
from shimstats.proxy.sockets import accepts, remove_if_stale, unix_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for type checkers only here
    from typing import NoReturn

__all__ = ["INNER_DELETE_TIMEOUT", "RELEASED_SOCKET_WAIT", "run_delete"]

INNER_DELETE_TIMEOUT = 60.0
RELEASED_SOCKET_WAIT = 0.5
"""How long ``delete`` waits for the socket of an inner shim it just told to shut down."""


def run_delete(
    args: ShimArgs, environ: Mapping[str, str], prepare_logs: Callable[[], None] = lambda: None
) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, stderr) of the inner shim's ``delete``, when this process does not become it.
    ``prepare_logs`` is called before the rare case, the only one that may log."""
    state = BundleState.load(args.bundle)
    if state is not None:
        inner_shim = state.inner_shim
    else:
        from shimstats.proxy.config import resolve_inner_shim
        from shimstats.proxy.launch import find_config

        inner_shim = resolve_inner_shim(find_config("", environ).inner_shim, environ.get("PATH", os.defpath))
    argv = args.argv(inner_shim, "delete")
    if state is None or accepts(unix_path(state.address)):
        _become(argv, environ)  # our server is up (it cleans up on its way out), or nothing is ours
    if not accepts(unix_path(state.inner_address)):
        remove_if_stale(unix_path(state.address))
        remove_if_stale(unix_path(state.inner_address))
        _become(argv, environ)
    prepare_logs()
    from shimstats.proxy.launch import release_inner, run_inner

    done = run_inner(argv, "delete", environ, INNER_DELETE_TIMEOUT, stdin=None)
    release_inner(args, state.inner_address, state.inner_service)  # our server died first: tell it
    remove_if_stale(unix_path(state.address))
    remove_if_stale(unix_path(state.inner_address), RELEASED_SOCKET_WAIT)
    return done.returncode, done.stdout, done.stderr


def _become(argv: Sequence[str], environ: Mapping[str, str]) -> NoReturn:
    """Run ``argv`` in place of this process (StartError naming the program when it cannot be run)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(argv[0], list(argv), dict(environ))  # the project's one exec (test_hostile_security)
    except OSError as exc:
        raise StartError(f"cannot run the inner shim {argv[0]}: {exc.strerror or exc}") from None

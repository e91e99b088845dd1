"""What ``start`` and ``delete`` share: containerd's shim flags, the bundle's state file, their error.

A module of its own so that ``delete``, which containerd waits for on every container delete, loads no more
than it uses (shimstats.proxy.delete); ``start`` (shimstats.proxy.launch) uses all of it.
"""

from __future__ import annotations

import json
import os

from shimstats.named_tuple import NamedTuple  # typing's, without importing typing (start, delete)
from shimstats.proxy.settings import TASK_V2_SERVICE

__all__ = ["STATE_FILE", "BundleState", "ShimArgs", "StartError", "write_atomic"]

STATE_FILE = "shimstats-proxy.json"
"""In the bundle: the inner shim and both addresses, for ``delete`` (which gets no runtime options)."""


class StartError(RuntimeError):
    """``start`` or ``delete`` cannot go on; the message is what containerd should show."""


class ShimArgs(NamedTuple):
    """The flags containerd passes to a shim binary (the Go shims' flag names)."""

    namespace: str
    id: str
    address: str = ""
    publish_binary: str = ""
    bundle_flag: str = ""
    """``-bundle`` as given ("" when containerd ran us in the bundle directory instead)."""
    debug: bool = False

    @property
    def bundle(self) -> str:
        """The bundle directory: ``-bundle``, else where containerd ran us."""
        return self.bundle_flag or os.getcwd()

    def argv(self, binary: str, action: str) -> list[str]:
        """``binary`` with these flags and ``action``, in the order containerd writes them."""
        argv = [binary, "-namespace", self.namespace, "-address", self.address]
        argv += ["-publish-binary", self.publish_binary, "-id", self.id]
        if self.debug:
            argv.append("-debug")
        if self.bundle_flag:
            argv += ["-bundle", self.bundle_flag]
        return [*argv, action]


class BundleState(NamedTuple):
    """What ``start`` records in the bundle for ``delete``."""

    inner_shim: str
    inner_address: str
    address: str
    inner_service: str = TASK_V2_SERVICE

    def save(self, bundle: str) -> None:
        write_atomic(os.path.join(bundle, STATE_FILE), json.dumps(self._asdict()))

    @staticmethod
    def load(bundle: str) -> BundleState | None:
        try:
            with open(os.path.join(bundle, STATE_FILE), encoding="utf-8") as f:
                data = json.load(f)
            service = str(data.get("inner_service", TASK_V2_SERVICE))
            return BundleState(
                str(data["inner_shim"]), str(data["inner_address"]), str(data["address"]), service
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def write_atomic(path: str, text: str) -> None:
    """Write through a hidden temp file and rename, as containerd's shims write ``address``."""
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}")
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temp, path)

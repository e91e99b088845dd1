"""What ``start`` hands the serving process: its settings and the Task service names it forwards.

A NamedTuple in a module of its own: ``start`` builds the serving process's command line from it and must
not import the server (its threads, protobuf, the agent client) to do so.
"""

from __future__ import annotations

from shimstats.named_tuple import NamedTuple  # typing's, without importing typing (start, delete)
from shimstats.wire import TASK_SERVICE as TASK_V2_SERVICE
from shimstats.wire import TASK_V3_SERVICE

__all__ = ["FALLBACKS", "FORMATS", "TASK_V2_SERVICE", "TASK_V3_SERVICE", "DaemonSettings"]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for type checkers only here (start and delete load this module)
    from typing import Literal

    Fallback = Literal["inner", "error"]
FALLBACKS: tuple[Fallback, ...] = ("inner", "error")
"""What Stats does when the guest agent is unreachable (config ``stats_fallback``, ``--stats-fallback``)."""
FORMATS = ("auto", "v1", "v2")
"""The Metrics message Stats answers with (config ``metrics_format``, ``--metrics-format``)."""


class DaemonSettings(NamedTuple):
    """Everything the serving process needs; ``start`` resolves it and passes it on the command line."""

    listen: str
    inner_address: str
    agent: str
    inner_service: str = TASK_V2_SERVICE
    metrics_format: str = "auto"
    stats_fallback: Fallback = "inner"
    stats_timeout: float = 10.0
    namespace: str = ""
    own_config: str = ""
    inner_config_path: str = ""
    listen_fd: int = -1
    """A socket ``start`` already bound and listens on at ``listen`` (as containerd's own shims hand their
    socket to the serving child), or -1: bind ``listen`` ourselves."""

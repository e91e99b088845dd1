"""containerd's identifier rule (pkg/identifiers), which every task id and namespace it creates follows.

A module of its own, with nothing but ``re`` behind it: the proxy shim's ``start`` checks ids before it
puts them in socket paths and must not pay for the adapter's imports to do so.
"""

from __future__ import annotations

import re

__all__ = ["IDENTIFIER_MAX", "identifier_problem"]

_IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
IDENTIFIER_MAX = 76


def identifier_problem(value: str) -> str | None:
    """Why ``value`` is not a containerd identifier (never empty, '/' or '..'), or None when it is one."""
    if not value:
        return "container id must not be empty"
    if len(value) > IDENTIFIER_MAX or not _IDENTIFIER.fullmatch(value):
        return (
            f"container id {value!r} is not a containerd identifier: letters and digits joined by "
            f"single '.', '_' or '-', at most {IDENTIFIER_MAX} characters"
        )
    return None

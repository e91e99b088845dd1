"""containerd's identifier rule (pkg/identifiers), which every task id and namespace it creates follows.

A module of its own, with nothing behind it: the proxy shim's ``start`` checks ids before it puts them in
socket paths and must not pay for the adapter's imports to do so (nor for compiling a regular expression).
"""

from __future__ import annotations

__all__ = ["IDENTIFIER_MAX", "identifier_problem", "is_identifier"]

IDENTIFIER_MAX = 76
_SEPARATORS = str.maketrans("._", "--")


def is_identifier(value: str) -> bool:
    """``value`` matches containerd's ``[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*`` in full: ASCII letters and digits
    in runs joined by single separators (an empty run: a separator first, last or doubled)."""
    return value.isascii() and all(run.isalnum() for run in value.translate(_SEPARATORS).split("-"))


def identifier_problem(value: str) -> str | None:
    """Why ``value`` is not a containerd identifier (never empty, '/' or '..'), or None when it is one."""
    if not value:
        return "container id must not be empty"
    if len(value) > IDENTIFIER_MAX or not is_identifier(value):
        return (
            f"container id {value!r} is not a containerd identifier: letters and digits joined by "
            f"single '.', '_' or '-', at most {IDENTIFIER_MAX} characters"
        )
    return None

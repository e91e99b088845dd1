"""Reading a TOML config file, for the exporter and the proxy: one loader, each command its own words.

tomllib is in the standard library from Python 3.11; before that the tomli package (a dependency there)
is the same parser.
"""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project's dependency on tomli covers 3.9 and 3.10
    import tomli as tomllib

__all__ = ["TomlFileError", "read_toml"]


class TomlFileError(ValueError):
    """The file cannot be read or is not TOML; the message is the caller's, with the path and the reason."""


def read_toml(
    path: str, unreadable: str, invalid: str, not_utf8: str = "{path} is not UTF-8 text: {reason}"
) -> dict[str, Any]:
    """The decoded table of the TOML file at ``path``.

    TomlFileError when it cannot be opened (message ``unreadable``), parsed (``invalid``) or decoded
    (``not_utf8``: TOML is UTF-8 or nothing): str.format templates with ``{path}`` and ``{reason}`` (the OS
    error's text, the parser's, or the undecodable byte's place).
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        reason: object = exc.strerror or exc
        raise TomlFileError(unreadable.format(path=path, reason=reason)) from None
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError(invalid.format(path=path, reason=exc)) from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes itself
        reason = f"{exc.reason} at byte {exc.start}"
        raise TomlFileError(not_utf8.format(path=path, reason=reason)) from None

"""Plain-text tables for people (JSON is the machine format, see each command's --json)."""

from __future__ import annotations

from collections.abc import Sequence


def render(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned first column, right-aligned numbers, two spaces between columns."""
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = []
        for i, cell in enumerate(r):
            numeric = i > 0 and _looks_numeric(cell)
            parts.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render_right(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 0) -> str:
    """render with the value columns right-aligned, values like "6.2 MiB" too.

    The first column and the last ``text_columns`` columns (words, not values) stay left-aligned.
    """
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    values = range(1, len(header) - text_columns)

    def justify(row: Sequence[str]) -> list[str]:
        return [cell.rjust(widths[i]) if i in values else cell for i, cell in enumerate(row)]

    return render(justify(header), [justify(r) for r in rows])


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _looks_numeric(cell: str) -> bool:
    return cell.lstrip("-+").replace(",", "").replace(".", "", 1).isdigit()


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; exact byte counts stay in the JSON output."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")

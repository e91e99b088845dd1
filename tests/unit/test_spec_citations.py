"""Every spec citation in the tree names a heading that exists (docs/spec/README.md).

Code, tests and docs cite the project's spec as ``docs/spec/<file>.md §N[.M]``; a citation resolves when
that file has a heading numbered N[.M] (``## 3. …`` or ``### 3.2 …``). The fact sheets that lived outside
the repository must no longer be cited at all. Run this file as a script to list every problem as
``file:line: text`` (useful after merging branches that still cite the old sheets).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC_DIR = ROOT / "docs" / "spec"
SCANNED_SUFFIXES = (".py", ".md", ".sh")
SKIPPED_DIRS = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache"}

# "docs/spec/formulas.md §1.2", "docs/spec/metrics.md §4.2, §5.3", "docs/spec/mapping.md §3-§4"; a
# citation may wrap onto the next comment line.
CITATION = re.compile(r"docs/spec/(?P<file>[\w.-]+\.md)(?P<refs>(?:[\s#*,/&–-]*(?:and\s+)?§\d+(?:\.\d+)*)*)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
# The fact sheets that lived outside the repository, and the brief that pointed at them.
OUTDATED = re.compile(r"\b(?:reference/)?(?:semantics|wire)\.md\b|\bBRIEF\b")


def spec_headings(spec_dir: Path = SPEC_DIR) -> dict[str, set[str]]:
    """Section numbers per spec file name."""
    return {path.name: set(HEADING.findall(path.read_text())) for path in sorted(spec_dir.glob("*.md"))}


def scanned_files(root: Path = ROOT) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        skipped = SKIPPED_DIRS & set(rel.parts[:-1]) or any(part.endswith(".egg-info") for part in rel.parts)
        if path.suffix in SCANNED_SUFFIXES and path.is_file() and not skipped:
            yield path


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def unresolved(label: str, text: str, headings: Mapping[str, set[str]]) -> list[str]:
    """``label:line: …`` for each citation in ``text`` that names a missing spec file or section."""
    problems = []
    for match in CITATION.finditer(text):
        where = f"{label}:{line_of(text, match.start())}"
        name = match["file"]
        if name not in headings:
            problems.append(f"{where}: {match[0].strip()!r}: no such file docs/spec/{name}")
            continue
        for section in SECTION.findall(match["refs"]):
            if section not in headings[name]:
                problems.append(f"{where}: {match[0].strip()!r}: docs/spec/{name} has no heading {section}")
    return problems


def outdated(label: str, text: str) -> list[str]:
    """``label:line: …`` for each remaining citation of the external fact sheets."""
    problems = []
    for match in OUTDATED.finditer(text):
        lineno = line_of(text, match.start())
        line = text.splitlines()[lineno - 1].strip()
        problems.append(f"{label}:{lineno}: cites {match[0]!r} (point it at docs/spec/): {line}")
    return problems


def all_problems(root: Path = ROOT) -> tuple[list[str], list[str]]:
    headings = spec_headings(root / "docs" / "spec")
    broken: list[str] = []
    old: list[str] = []
    this_file = Path(__file__).resolve()
    for path in scanned_files(root):
        if path.resolve() == this_file:  # its own examples are meant to fail
            continue
        label = str(path.relative_to(root))
        text = path.read_text(errors="replace")
        broken += unresolved(label, text, headings)
        old += outdated(label, text)
    return broken, old


def test_every_spec_citation_resolves_to_a_heading() -> None:
    broken, _ = all_problems()
    assert not broken, "unresolved spec citations:\n" + "\n".join(broken)


def test_nothing_cites_the_external_fact_sheets() -> None:
    _, old = all_problems()
    assert not old, "citations of the old fact sheets:\n" + "\n".join(old)


def test_the_tree_cites_each_spec_file() -> None:
    """The spec is the one the code uses: every file in it is cited from outside docs/spec."""
    headings = spec_headings()
    assert {"ttrpc.md", "metrics.md", "formulas.md", "mapping.md", "README.md"} <= set(headings)
    cited = set()
    for path in scanned_files():
        if SPEC_DIR not in path.parents:
            cited |= {m["file"] for m in CITATION.finditer(path.read_text(errors="replace"))}
    assert set(headings) - {"README.md"} <= cited


def test_headings_are_unique_per_file() -> None:
    for path in sorted(SPEC_DIR.glob("*.md")):
        numbers = HEADING.findall(path.read_text())
        assert len(numbers) == len(set(numbers)), f"{path.name}: duplicate section numbers"


def test_the_checker_reports_a_missing_section_and_file_with_their_line() -> None:
    headings = {"formulas.md": {"1", "1.2"}}
    text = (
        "ok docs/spec/formulas.md §1.2\n"
        "# wrapped docs/spec/formulas.md §1,\n# §7\n"
        "gone docs/spec/nothing.md §1\n"
    )
    assert unresolved("x.py", text, headings) == [
        "x.py:2: 'docs/spec/formulas.md §1,\\n# §7': docs/spec/formulas.md has no heading 7",
        "x.py:4: 'docs/spec/nothing.md §1': no such file docs/spec/nothing.md",
    ]


def test_the_checker_reports_the_old_citations() -> None:
    sheet = "semantics" + ".md"
    text = f"fine\nsee reference/{sheet} §1\n(wire.md §5)\n"
    found = outdated("y.md", text)
    assert [entry.split(": cites")[0] for entry in found] == ["y.md:2", "y.md:3"]


def main() -> int:
    broken, old = all_problems()
    for problem in broken + old:
        print(problem)
    return 1 if broken or old else 0


if __name__ == "__main__":
    sys.exit(main())

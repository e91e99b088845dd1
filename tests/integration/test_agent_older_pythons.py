"""The guest agent on the CPythons it promises (3.9 and later: pyproject's requires-python, the README), not
only on the one running the tests.

A guest image brings its own python3 (Debian 11 ships 3.9, Ubuntu 22.04 3.10), and Python 3.11 added
syntax the agent's fast paths like: possessive quantifiers in ``re`` (``++``, ``*+``, ``{m,n}+``), which
3.9 and 3.10 refuse at import ("multiple repeat"). Two checks:

* everywhere: no pattern with a possessive quantifier is compiled in guest_agent except through
  ``guest_agent.parse.compile_fast_path``, which makes it greedy where ``re`` lacks them, and ``greedy``
  leaves none behind (tests/unit/test_fuzz_parsers.py holds the greedy forms to the same language);
* on every CPython 3.9 or 3.10 with protobuf found on this machine (pyenv's, or python3.9 / python3.10 on
  PATH; CI gives pyenv's protobuf, hack/test.sh): the agent runs under it on each captured fixture and
  answers StatsContainer with the same message as under the tests' own interpreter.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guest_agent import parse
from shimstats._proto.kata import agent_pb2
from shimstats.ttrpc import SyncClient
from shimstats.wire import AGENT_SERVICE
from tests.integration.harness import REPO, AgentProcess, Fixture, fixtures, short_tmp

POSSESSIVE = re.compile(r"\+\+|\*\+|\?\+|\}\+")
"""A possessive quantifier in a pattern's source (this file's own pattern has none)."""


def _older_pythons() -> list[str]:
    """CPython 3.9 and 3.10 interpreters on this machine that can import protobuf."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = {str(p) for minor in ("3.9", "3.10") for p in root.glob(f"versions/{minor}.*/bin/python3")}
    found |= {p for p in (shutil.which("python3.9"), shutil.which("python3.10")) if p}
    usable = []
    for python in sorted(found):
        probe = subprocess.run(
            [python, "-c", "import sys, google.protobuf; assert (3, 9) <= sys.version_info < (3, 11)"],
            capture_output=True,
            timeout=60,
        )
        if probe.returncode == 0:
            usable.append(python)
    return usable


OLDER = _older_pythons()


def _compiled_literals(path: Path) -> list[tuple[int, str]]:
    """(line, pattern) of every ``re.compile`` of a string or bytes literal in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "compile"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "re"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            value = node.args[0].value
            found.append((node.lineno, value.decode() if isinstance(value, bytes) else str(value)))
    return found


def test_no_guest_agent_regex_compiles_possessive_quantifiers_directly() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {pattern}"
        for path in sorted((REPO / "guest_agent").glob("*.py"))
        for line, pattern in _compiled_literals(path)
        if POSSESSIVE.search(pattern)
    ]
    hint = "use guest_agent.parse.compile_fast_path for these (Python 3.9 and 3.10 refuse them):\n"
    assert offenders == [], hint + "\n".join(offenders)


def test_greedy_leaves_no_possessive_quantifier_in_the_fast_paths() -> None:
    patterns = [value for value in vars(parse).values() if isinstance(value, re.Pattern)]
    possessive = [p.pattern for p in patterns if POSSESSIVE.search(_text(p.pattern))]
    assert possessive, "the fast paths' patterns are possessive on this Python (3.11+)"
    for source in possessive:
        assert not POSSESSIVE.search(_text(parse.greedy(source))), source


def _text(pattern: str | bytes) -> str:
    return pattern.decode() if isinstance(pattern, bytes) else pattern


def _answer(python: str, fixture: Fixture) -> agent_pb2.StatsContainerResponse:
    request = agent_pb2.StatsContainerRequest(container_id=fixture.request_id).SerializeToString()
    with (
        short_tmp() as directory,
        AgentProcess(directory, fixture.agent_args(), python=python) as agent,
        SyncClient(agent.address, timeout=10) as client,
    ):
        raw = client.call(AGENT_SERVICE, "StatsContainer", request)
    return agent_pb2.StatsContainerResponse.FromString(raw)


@pytest.mark.skipif(not OLDER, reason="no CPython 3.9 or 3.10 with protobuf on this machine")
@pytest.mark.parametrize("python", OLDER)
def test_the_agent_answers_the_same_under_an_older_python(python: str) -> None:
    for fixture in fixtures():
        ours = _answer(sys.executable, fixture)
        theirs = _answer(python, fixture)
        assert theirs == ours, f"{fixture.path.name} under {python}"
        assert theirs.cgroup_stats.memory_stats.usage.usage > 0, fixture.path.name

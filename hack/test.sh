#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need (Debian packages via hack/ci-install.sh, the package with its
# test extra via pip), then lints, type-checks and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f hack/ci-install.sh ]; then
    bash hack/ci-install.sh
fi
# A distribution's python3 that refuses pip installs (PEP 668: Debian 12's, which carries an
# EXTERNALLY-MANAGED marker) gets a venv in .venv, made once and used from here on; a python3 that is a
# venv's already, or one of one's own (pyenv, CI), is used as it is.
if python3 -c 'import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(marker) else 1)'; then
    if [ ! -x .venv/bin/python3 ]; then
        echo "test.sh: $(command -v python3) is externally managed (PEP 668): creating .venv" >&2
        python3 -m venv .venv || {
            echo "test.sh: python3 -m venv failed: apt-get install python3-venv" >&2
            exit 1
        }
    fi
    # shellcheck source=/dev/null
    . .venv/bin/activate
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test]'
if [ "${CI:-}" = true ]; then
    # The guest agent promises CPython 3.9+; tests/integration/test_agent_older_pythons.py runs it under
    # every 3.9 and 3.10 here that has protobuf. Give pyenv's theirs (best effort: without, the test skips).
    pyenv=${PYENV_ROOT:-$HOME/.pyenv}
    for old in "$pyenv"/versions/3.9.*/bin/python3 "$pyenv"/versions/3.10.*/bin/python3; do
        if [ -x "$old" ]; then
            "$old" -m pip install --quiet --disable-pip-version-check protobuf >/dev/null 2>&1 || true
        fi
    done
fi

echo "== ruff"
python3 -m ruff check .
python3 -m ruff format --check .
echo "== mypy"
python3 -m mypy
echo "== pytest"
set +e
python3 -m pytest -q -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$rc"

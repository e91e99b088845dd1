#!/usr/bin/env bash
# The project's one test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need (Debian packages via hack/ci-install.sh, the package with its
# test extra via pip), then lints, type-checks and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f hack/ci-install.sh ]; then
    bash hack/ci-install.sh
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test]'

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

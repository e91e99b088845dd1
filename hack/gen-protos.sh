#!/usr/bin/env bash
# Regenerate the checked-in Python code under shimstats/_proto from protos/.
# Needs the test extra (grpcio-tools is pinned there so output is reproducible).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 hack/gen_protos.py "$@"

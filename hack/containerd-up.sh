#!/usr/bin/env bash
# Start a test containerd (Debian's containerd + runc) under DIR, for poking at by hand:
# its own mount namespace with DIR/run bind-mounted over /run, root/state/sockets in DIR,
# CRI disabled. Prints the addresses as shell assignments. Stop it with hack/containerd-down.sh DIR.
# The logic lives in tests/containerd_env.py, shared with the test fixtures.
set -euo pipefail
if [ "$#" -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$(realpath -m -- "$1")
cd "$(dirname "$0")/.."
exec python3 -m tests.containerd_env up "$dir"

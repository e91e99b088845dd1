#!/usr/bin/env bash
# Stop the test containerd that hack/containerd-up.sh started under DIR: deletes its tasks and
# containers, stops containerd by its recorded pid, removes the cgroups and files it created.
set -euo pipefail
if [ "$#" -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$(realpath -m -- "$1")
cd "$(dirname "$0")/.."
exec python3 -m tests.containerd_env down "$dir"

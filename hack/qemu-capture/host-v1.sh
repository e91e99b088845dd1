#!/bin/sh
# Capture the cgroup v1 (hybrid) fixtures of this host: one container whose memory is page cache on a
# real disk, and the root cgroup. Needs root and a host with v1 controllers under /sys/fs/cgroup.
#
# Everything it creates (a child cgroup in each v1 hierarchy and in unified/, a data dir on disk, the
# workload processes) is removed on exit.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
. hack/qemu-capture/workloads.sh

CG=/sys/fs/cgroup
[ "$(id -u)" = 0 ] || { echo "host-v1: needs root (it creates cgroups)" >&2; exit 1; }
[ -f "$CG/memory/memory.usage_in_bytes" ] || { echo "host-v1: no cgroup v1 memory hierarchy" >&2; exit 1; }

KERNEL=$(uname -r)
ID=shimstats-fx-pagecache
CGPATH=/$ID
# Page cache must live on a disk filesystem: tmpfs pages would be counted as shmem.
DATA=$(mktemp -d "${DATA_PARENT:-/var/tmp}/shimstats-fx.XXXXXX")
case $(stat -f -c %T "$DATA") in
    tmpfs | ramfs) echo "host-v1: $DATA is on $(stat -f -c %T "$DATA"); set DATA_PARENT to a disk fs" >&2
        rmdir "$DATA"; exit 1 ;;
esac

DIRS=""
for d in memory cpu,cpuacct cpu cpuacct pids blkio unified; do
    [ -d "$CG/$d" ] && [ ! -L "$CG/$d" ] && DIRS="$DIRS $CG/$d$CGPATH"
done

cleanup() {
    for dir in $DIRS; do
        [ -d "$dir" ] || continue
        kill_cgroup "$dir/cgroup.procs" || echo "host-v1: processes left in $dir" >&2
    done
    for dir in $DIRS; do [ -d "$dir" ] && rmdir "$dir"; done
    rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

PROCS=""
for dir in $DIRS; do
    mkdir "$dir"
    PROCS="$PROCS $dir/cgroup.procs"
done

FS=$(findmnt -n -o FSTYPE,SOURCE --target "$DATA" 2>/dev/null | tr -s " " || stat -f -c %T "$DATA")
WORKLOAD="wl_pagecache: dd 100 MiB from /dev/zero to a file on $FS, sync, read its first 30 MiB twice,\
 then sleep"
run_in_cgroup "$PROCS" wl_pagecache "$DATA" "$DATA/ready" >"$DATA/workload.log" 2>&1
wait_for "$DATA/ready" 120 || { echo "host-v1: workload did not get ready" >&2; exit 1; }
MACHINE="this host (no qemu): $(uname -m), $(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo \
    | head -n 1), $(grep -c '^processor' /proc/cpuinfo) cpus"
sh hack/capture-cgroup.sh "$CGPATH" "v1-$KERNEL-container-pagecache" --id "$ID" --workload "$WORKLOAD" \
    --machine "$MACHINE" --note "Captured right after the workload got ready by hack/qemu-capture/host-v1.sh."
sh hack/capture-cgroup.sh / "v1-$KERNEL-root" --id "" --machine "$MACHINE" \
    --workload "host root cgroup while $CGPATH held the pagecache workload above" \
    --note "Root cgroup only: child cgroups are not captured. Taken by hack/qemu-capture/host-v1.sh."

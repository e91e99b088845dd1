#!/bin/sh
# The capture scenarios of the qemu guest, run by init.sh from the data disk (cwd = its mount point).
#
# run.env (written by run.sh) sets MODE (v2: cgroup2 only; v1: v1 hierarchies only, cpu and cpuacct
# co-mounted as systemd does) and MACHINE. Each container scenario gets a fresh child cgroup, runs one
# workload from workloads.sh in it, captures it with hack/capture-cgroup.sh into out/NAME, and removes it;
# the last container keeps running while the root cgroup is captured, so the root shows it too.
set -eu

# shellcheck disable=SC1091  # written by run.sh onto the data disk
. ./run.env
. hack/qemu-capture/workloads.sh

KERNEL=$(uname -r)
CG=/sys/fs/cgroup
TOP=$(pwd)
DATA=$TOP/work
OUT=$TOP/out
mkdir -p "$DATA" "$OUT"

setup_v2() {
    mount -t cgroup2 cgroup2 "$CG"
    for c in memory cpu io pids hugetlb; do
        case " $(cat "$CG/cgroup.controllers") " in
            *" $c "*) echo "+$c" >"$CG/cgroup.subtree_control" ;;
        esac
    done
    PREFIX=v2-$KERNEL
    CTRL_DIRS=$CG
    LIMIT_FILE=memory.max
}

setup_v1() {
    mount -t tmpfs -o mode=755 cgroup "$CG"
    CTRL_DIRS=""
    for c in memory cpu,cpuacct pids blkio hugetlb; do
        mkdir "$CG/$c"
        mount -t cgroup -o "$c" cgroup "$CG/$c"
        CTRL_DIRS="$CTRL_DIRS $CG/$c"
    done
    ln -s cpu,cpuacct "$CG/cpu"
    ln -s cpu,cpuacct "$CG/cpuacct"
    PREFIX=v1-$KERNEL-qemu
    LIMIT_FILE=memory/memory.limit_in_bytes
}

# capture CGPATH NAME ID WORKLOAD
capture() {
    OUT_DIR=$OUT/$2 sh hack/capture-cgroup.sh "$1" "$2" --id "$3" --workload "$4" --machine "$MACHINE" \
        --note "Captured inside the qemu guest by hack/qemu-capture/run.sh $MODE (scenarios.sh). \
Data disk: ext4 on virtio-blk; 1 GiB RAM, no swap."
}

# start_container KIND FUNC LIMIT TEXT [SETUP]: create /shimstats-fx-KIND in every hierarchy, set the memory
# limit (none when LIMIT is -), call SETUP with the v2 cgroup directory (when given), run FUNC there, wait
# until it is ready and capture it.
start_container() {
    sc_id=shimstats-fx-$1
    sc_procs=""
    for sc_dir in $CTRL_DIRS; do
        mkdir "$sc_dir/$sc_id"
        sc_procs="$sc_procs $sc_dir/$sc_id/cgroup.procs"
    done
    if [ "$3" != - ]; then
        sc_limit=$CG/$LIMIT_FILE
        echo "$3" >"${sc_limit%/*}/$sc_id/${sc_limit##*/}"
    fi
    if [ -n "${5:-}" ]; then "$5" "$CG/$sc_id"; fi
    run_in_cgroup "$sc_procs" "$2" "$DATA" "$DATA/ready.$1" >"$DATA/$1.log" 2>&1
    if ! wait_for "$DATA/ready.$1" 300; then
        echo "scenarios: workload $1 did not get ready; its log:" >&2
        cat "$DATA/$1.log" >&2
        return 1
    fi
    echo "scenarios: $1 ready at $(cut -d' ' -f1 /proc/uptime) s"
    capture "/$sc_id" "$PREFIX-container-$1" "$sc_id" "$4"
}

# stop_container KIND: kill the workload and remove its cgroups (the kernel moves its charges to the parent).
stop_container() {
    for st_dir in $CTRL_DIRS; do kill_cgroup "$st_dir/shimstats-fx-$1/cgroup.procs"; done
    for st_dir in $CTRL_DIRS; do rmdir "$st_dir/shimstats-fx-$1"; done
}

FS="ext4 on /dev/vda (virtio-blk)"
ANON="wl_anon: dd from /dev/zero fills a 64 MiB buffer and blocks writing it into a fifo that its reader\
 (sleep) never reads, so 64 MiB of anon memory stay resident"
if [ "$MODE" = v2 ]; then
    setup_v2
    start_container inactive-file wl_inactive_file - \
        "wl_inactive_file: dd 200 MiB from /dev/zero to a file on $FS, sync, never read back, then sleep"
    stop_container inactive-file
    start_container active-file wl_active_file - \
        "wl_active_file: dd 100 MiB from /dev/zero to a file on $FS, sync, cat it 4 times, then sleep"
    stop_container active-file
    EARLIER="the inactive-file and active-file containers"
else
    setup_v1
    start_container pagecache wl_pagecache - \
        "wl_pagecache: dd 100 MiB from /dev/zero to a file on $FS, sync, read its first 30 MiB twice,\
 then sleep"
    stop_container pagecache
    EARLIER="the pagecache container"
fi
start_container anon wl_anon 512M "$ANON; memory limit 512M ($LIMIT_FILE)"
capture / "$PREFIX-root" "" "guest root cgroup while /shimstats-fx-anon ran; the page cache written by\
 $EARLIER was moved to the root when their cgroups were removed"
stop_container anon

# The resized containers (v2 only, after every other capture so that enabling cpuset changes none of them):
# a container's cgroup written the way a runtime applies the kubelet's CRI values for the requests and
# limits given (docs/spec/mapping.md §2). shares = request*1024/1000; cpu.weight is given, from the
# shares by the linear rule (Kata agent, kubelet) or the quadratic one (runc >= 1.3.2, crun), as in §2.2's
# table (busybox awk has no log or exp to compute the quadratic one here); cpu.max = limit*100000/1000 and
# period 100000; memory.max = the limit as given (the kernel keeps whole pages); memory.high by the
# kubelet's MemoryQoS (request + 0.9*(limit - request), whole pages; left at max when request = limit);
# memory.swap.max 0 (NoSwap on a v2 node); pids.max a pod pids limit.
# resized RULE WEIGHT CPU_REQUEST_M CPU_LIMIT_M MEMORY_REQUEST MEMORY_LIMIT PIDS: start, capture, stop.
resized() {
    rz_shares=$(($3 * 1024 / 1000))
    RZ_WEIGHT=$2
    RZ_CPU_MAX="$(($4 * 100000 / 1000)) 100000"
    RZ_MEMORY_MAX=$6
    RZ_HIGH=max
    if [ "$5" != "$6" ]; then
        RZ_HIGH=$(awk -v r="$5" -v l="$6" 'BEGIN { printf "%d", int((r + 0.9 * (l - r)) / 4096) * 4096 }')
    fi
    RZ_PIDS=$7
    start_container "resized-$1" wl_anon - "$ANON; cgroup written as the $1 rule's writer would for cpu\
 request ${3}m, limit ${4}m, memory request $5, limit $6: cpu.weight $RZ_WEIGHT ($rz_shares shares),\
 cpu.max $RZ_CPU_MAX, memory.max $RZ_MEMORY_MAX, memory.high $RZ_HIGH, memory.swap.max 0,\
 pids.max $RZ_PIDS" write_resized
    stop_container "resized-$1"
}

# write_resized DIR: the settings resized computed, written into the container's v2 cgroup directory.
write_resized() {
    echo "$RZ_WEIGHT" >"$1/cpu.weight"
    echo "$RZ_CPU_MAX" >"$1/cpu.max"
    echo "$RZ_MEMORY_MAX" >"$1/memory.max"
    echo "$RZ_HIGH" >"$1/memory.high"
    echo 0 >"$1/memory.swap.max"
    echo "$RZ_PIDS" >"$1/pids.max"
}

if [ "$MODE" = v2 ]; then
    case " $(cat "$CG/cgroup.controllers") " in
        *" cpuset "*) echo +cpuset >"$CG/cgroup.subtree_control" ;;
    esac
    # 100m: 102 shares, linear weight 4. 2 CPUs: 2048 shares, quadratic weight 174 (linear: 79).
    resized linear 4 100 500 134217728 1000000000 1024
    resized quadratic 174 2000 2000 268435456 268435456 512
fi
echo "scenarios: done at $(cut -d' ' -f1 /proc/uptime) s"

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

# start_container KIND FUNC LIMIT TEXT: create /shimstats-fx-KIND in every hierarchy, set the memory limit
# (none when LIMIT is -), run FUNC there, wait until it is ready and capture it.
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
echo "scenarios: done at $(cut -d' ' -f1 /proc/uptime) s"

# Fixture workloads, sourced (POSIX sh, busybox sh) by host-v1.sh on this host and by the qemu guest's init.
#
# run_in_cgroup starts one workload in a background subshell that first moves itself into the fixture
# cgroup(s), so every page it touches is charged there. Each wl_* function builds the memory state its
# fixture is named after, touches READY when that state is reached, and then leaves one process
# sleeping in the cgroup (a container is rarely empty) until the runner kills it.

# run_in_cgroup "PROCS_FILES" FUNC ARG...: run FUNC ARG... in the background inside the cgroups whose
# cgroup.procs files are listed; "echo 0" moves the writing process itself. Prints nothing; $! is its pid.
run_in_cgroup() {
    ric_procs=$1
    shift
    (
        for ric_f in $ric_procs; do echo 0 >"$ric_f"; done
        "$@"
    ) &
}

# wait_for FILE SECONDS: wait until FILE exists, at most SECONDS seconds.
wait_for() {
    wf_left=$2
    while [ ! -e "$1" ]; do
        [ "$wf_left" -gt 0 ] || return 1
        sleep 1
        wf_left=$((wf_left - 1))
    done
}

# kill_cgroup PROCS_FILE: SIGKILL every process of a cgroup (all of them were started by run_in_cgroup)
# and wait until it is empty, at most 30 s, so that it can be removed.
kill_cgroup() {
    kc_left=30
    # cgroup files report size 0, so test what a read returns rather than using [ -s ].
    while kc_pids=$(cat "$1") && [ -n "$kc_pids" ]; do
        for kc_pid in $kc_pids; do kill -9 "$kc_pid" 2>/dev/null || true; done
        [ "$kc_left" -gt 0 ] || return 1
        sleep 1
        kc_left=$((kc_left - 1))
    done
}

# write_file PATH MIB: write MIB MiB to a real disk file and flush it, so it becomes clean page cache.
write_file() {
    dd if=/dev/zero of="$1" bs=1M count="$2" 2>/dev/null
    sync
}

# wl_pagecache DATA READY: write 100 MiB once, re-read its first 30 MiB twice (a second access is what
# promotes a page to the active list), so the cache is part inactive, part active.
wl_pagecache() {
    write_file "$1/pagecache.bin" 100
    dd if="$1/pagecache.bin" of=/dev/null bs=1M count=30 2>/dev/null
    dd if="$1/pagecache.bin" of=/dev/null bs=1M count=30 2>/dev/null
    touch "$2"
    exec sleep 3600
}

# wl_inactive_file DATA READY: write 200 MiB once and never read it back: the pages stay inactive_file.
wl_inactive_file() {
    write_file "$1/inactive.bin" 200
    touch "$2"
    exec sleep 3600
}

# wl_active_file DATA READY: write 100 MiB, then read it 4 times so the pages are promoted to active_file.
wl_active_file() {
    write_file "$1/active.bin" 100
    for _ in 1 2 3 4; do cat "$1/active.bin" >/dev/null; done
    touch "$2"
    exec sleep 3600
}

# wl_anon DATA READY: hold 64 MiB of anonymous memory. dd fills a 64 MiB buffer from /dev/zero and then
# blocks writing it into a fifo whose reader (sleep) never reads, so the buffer stays resident.
wl_anon() {
    rm -f "$1/anon.fifo"
    mkfifo "$1/anon.fifo"
    # shellcheck disable=SC2217  # sleep holds the fifo's read end open and never reads: that is the point
    sleep 3600 <"$1/anon.fifo" &
    dd if=/dev/zero bs=64M count=1 of="$1/anon.fifo" 2>/dev/null &
    wa_dd=$!
    wa_left=120
    # RssAnon can lag the real count by a few hundred KiB (per-task counters are folded in batches).
    until awk '/^RssAnon:/ { exit !($2 >= 63 * 1024) }' "/proc/$wa_dd/status" 2>/dev/null; do
        if [ "$wa_left" -le 0 ]; then
            echo "wl_anon: dd (pid $wa_dd) never held 63 MiB:" >&2
            cat "/proc/$wa_dd/status" >&2 || true
            return 1
        fi
        sleep 1
        wa_left=$((wa_left - 1))
    done
    touch "$2"
    wait
}

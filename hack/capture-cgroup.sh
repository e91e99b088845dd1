#!/bin/sh
# Capture one live cgroup into a test fixture (tests/fixtures/cgroupfs/NAME, or $OUT_DIR).
#
# Fixtures must come from real kernels, so this runs on the host and inside qemu guests: it is plain
# POSIX sh and also runs under busybox sh. It copies only what the guest agent reads (see
# tests/fixtures/cgroupfs/README.md for the contract), memory files first so that they describe one
# instant as closely as a shell allows, then writes meta.json and a provenance README.md.
#
# Environment: OUT_DIR (output directory), CGROUP_ROOT (default /sys/fs/cgroup),
# MEMINFO (default /proc/meminfo).
set -eu

usage() {
    cat >&2 <<'EOF'
usage: capture-cgroup.sh DIR NAME [--id ID] [--workload TEXT] [--machine TEXT] [--note TEXT]
  DIR    the cgroup path as /proc/PID/cgroup shows it, e.g. /shimstats-fx, or / for the root
  NAME   fixture name; output goes to tests/fixtures/cgroupfs/NAME unless OUT_DIR is set
  --id       container id recorded in meta.json (default: last component of DIR, "" for /)
  --workload what ran in the cgroup, recorded in meta.json and README.md
  --machine  where it ran (default: derived from /proc/cpuinfo and DMI)
  --note     free text appended to README.md
EOF
    exit 2
}

# Shell-quote the arguments so README.md shows a command that can be pasted back.
quote_args() {
    qa_out=""
    for qa_arg in "$@"; do
        case $qa_arg in
            *[!A-Za-z0-9_./=:,+@%-]* | "") qa_arg="'$(printf '%s' "$qa_arg" | sed "s/'/'\\\\''/g")'" ;;
        esac
        qa_out="$qa_out${qa_out:+ }$qa_arg"
    done
    printf '%s' "$qa_out"
}

COMMAND="$(quote_args "$0" "$@")"

[ $# -ge 2 ] || usage
DIR=$1
NAME=$2
shift 2
ID=""
ID_SET=0
WORKLOAD=""
MACHINE=""
NOTE=""
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
        --id) ID=$2; ID_SET=1 ;;
        --workload) WORKLOAD=$2 ;;
        --machine) MACHINE=$2 ;;
        --note) NOTE=$2 ;;
        *) usage ;;
    esac
    shift 2
done

case $DIR in
    /*) ;;
    *) echo "capture-cgroup: DIR must start with /: $DIR" >&2; exit 2 ;;
esac
case /$DIR/ in
    */../* | */./*) echo "capture-cgroup: DIR must not contain . or .. components: $DIR" >&2; exit 2 ;;
esac
case $NAME in
    "" | */* | .*) echo "capture-cgroup: NAME must be a plain directory name: $NAME" >&2; exit 2 ;;
esac
# Normalise: strip trailing slashes except for the root itself.
while [ "$DIR" != / ] && [ "${DIR%/}" != "$DIR" ]; do DIR=${DIR%/}; done
if [ "$ID_SET" = 0 ] && [ "$DIR" != / ]; then ID=${DIR##*/}; fi
# The container part of a path inside a controller dir: "" for the root, "/x/y" otherwise.
SUB=$DIR
[ "$DIR" = / ] && SUB=""

CG=${CGROUP_ROOT:-/sys/fs/cgroup}
MEMINFO=${MEMINFO:-/proc/meminfo}
if [ -f "$CG/cgroup.controllers" ]; then
    MODE=v2
elif [ -f "$CG/memory/memory.usage_in_bytes" ]; then
    MODE=v1
    [ -f "$CG/unified/cgroup.controllers" ] && MODE=hybrid
else
    echo "capture-cgroup: no cgroup v2 root and no v1 memory hierarchy under $CG" >&2
    exit 1
fi

if [ -n "${OUT_DIR:-}" ]; then
    OUT=$OUT_DIR
else
    REPO=$(cd "$(dirname "$0")/.." && pwd)
    OUT=$REPO/tests/fixtures/cgroupfs/$NAME
fi
# Refuse to replace a non-empty directory that is not a fixture (a mistyped OUT_DIR must not be wiped).
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/meta.json" ]; then
    echo "capture-cgroup: $OUT exists, is not empty and holds no meta.json; not replacing it" >&2
    exit 1
fi
STAGE=$OUT.capture.$$
rm -rf "$STAGE"
mkdir -p "$STAGE/cgroup"
trap 'rm -rf "$STAGE"' EXIT
SKIPPED=$STAGE/skipped.list
NOTES=$STAGE/notes.list
: >"$SKIPPED"
: >"$NOTES"

uptime_now() {
    read -r un_up _ <"/proc/uptime"
    printf '%s' "$un_up"
}

# grab SRC REL: copy one cgroup file to cgroup/REL unless it is already there; a file that cannot be
# read (write-only, or the kernel returns an error) is listed in README.md instead.
grab() {
    [ -f "$1" ] || return 0
    [ -e "$STAGE/cgroup/$2" ] && return 0
    case $2 in */*) mkdir -p "$STAGE/cgroup/${2%/*}" ;; esac
    if ! cat "$1" >"$STAGE/cgroup/$2" 2>/dev/null; then
        rm -f "$STAGE/cgroup/$2"
        echo "$2" >>"$SKIPPED"
    fi
}

# grab_glob SRCDIR RELDIR PATTERN...: grab every regular file of SRCDIR matching a pattern.
grab_glob() {
    gg_src=$1
    gg_rel=$2
    shift 2
    for gg_pat in "$@"; do
        for gg_file in "$gg_src"/$gg_pat; do
            [ -f "$gg_file" ] || continue
            grab "$gg_file" "$gg_rel/${gg_file##*/}"
        done
    done
}

# empty_procs SRCDIR RELDIR: keep cgroup.procs as an empty file (pids mean nothing outside the VM).
empty_procs() {
    [ -f "$1/cgroup.procs" ] || return 0
    mkdir -p "$STAGE/cgroup/$2"
    : >"$STAGE/cgroup/$2/cgroup.procs"
}

# rel DIRPART: a path under cgroup/ for a controller dir ("" for v2) plus the container path.
rel() {
    rel_out=$1$SUB
    rel_out=${rel_out#/}
    printf '%s' "${rel_out:-.}"
}

T0=$(uptime_now)
if [ "$MODE" = v2 ]; then
    CDIR=$CG$SUB
    [ -d "$CDIR" ] || { echo "capture-cgroup: no cgroup at $CDIR" >&2; exit 1; }
    C=$(rel "")
    # Memory first, the two files every consumer combines (usage and memory.stat) before anything else.
    grab "$CDIR/memory.current" "$C/memory.current"
    grab "$CDIR/memory.stat" "$C/memory.stat"
    grab "$CG/memory.stat" "memory.stat"
    cat "$MEMINFO" >"$STAGE/meminfo"
    if [ -n "$SUB" ]; then grab_glob "$CDIR" "$C" 'memory.*'; fi
    T1=$(uptime_now)
    for f in cgroup.controllers cgroup.subtree_control cpu.stat io.stat; do grab "$CG/$f" "$f"; done
    if [ -n "$SUB" ]; then
        grab_glob "$CDIR" "$C" 'cpu.*' 'pids.*' 'io.*' 'hugetlb.*' 'cpuset.*' 'cgroup.controllers' \
            'cgroup.subtree_control' 'cgroup.events' 'cgroup.stat' 'cgroup.type'
        empty_procs "$CDIR" "$C"
    fi
else
    # Controller dirs in the order they are read: memory first. Names with a comma (cpu,cpuacct) hold
    # the files of every controller they name; a symlinked name (cpu -> cpu,cpuacct) is kept as a link.
    CTRLS=""
    for d in memory cpu,cpuacct cpu cpuacct pids blkio hugetlb; do
        if [ -L "$CG/$d" ]; then
            ln -s "$(readlink "$CG/$d")" "$STAGE/cgroup/$d"
        elif [ -d "$CG/$d" ]; then
            CTRLS="$CTRLS $d"
        fi
    done
    [ -d "$CG/memory$SUB" ] || { echo "capture-cgroup: no cgroup at $CG/memory$SUB" >&2; exit 1; }
    M=$(rel memory)
    grab "$CG/memory$SUB/memory.usage_in_bytes" "$M/memory.usage_in_bytes"
    grab "$CG/memory$SUB/memory.stat" "$M/memory.stat"
    grab "$CG/memory/memory.usage_in_bytes" "memory/memory.usage_in_bytes"
    grab "$CG/memory/memory.stat" "memory/memory.stat"
    cat "$MEMINFO" >"$STAGE/meminfo"
    T1=""
    for d in $CTRLS; do
        pats=""
        for c in $(echo "$d" | tr , ' '); do pats="$pats $c.*"; done
        set -f
        # shellcheck disable=SC2086  # pats is a list of glob patterns, expanded by grab_glob
        set -- $pats
        set +f
        grab_glob "$CG/$d" "$d" "$@"
        empty_procs "$CG/$d" "$d"
        if [ -n "$SUB" ]; then
            if [ -d "$CG/$d$SUB" ]; then
                grab_glob "$CG/$d$SUB" "$(rel "$d")" "$@"
                empty_procs "$CG/$d$SUB" "$(rel "$d")"
            else
                echo "controller dir $d has no $DIR: only its root files were captured" >>"$NOTES"
            fi
        fi
        [ -n "$T1" ] || T1=$(uptime_now)
    done
    if [ "$MODE" = hybrid ]; then
        grab "$CG/unified/cgroup.controllers" "unified/cgroup.controllers"
        if [ -n "$SUB" ]; then
            if [ -d "$CG/unified$SUB" ]; then
                grab "$CG/unified$SUB/cgroup.controllers" "$(rel unified)/cgroup.controllers"
            else
                echo "unified/ has no $DIR: only its root cgroup.controllers was captured" >>"$NOTES"
            fi
        fi
    fi
fi
T2=$(uptime_now)

KERNEL=$(uname -r)
CAPTURED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ -z "$MACHINE" ]; then
    MACHINE="$(uname -m)"
    cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
    [ -n "$cpu" ] && MACHINE="$MACHINE, $cpu"
    for f in /sys/class/dmi/id/sys_vendor /sys/class/dmi/id/product_name; do
        if [ -r "$f" ]; then MACHINE="$MACHINE, $(cat "$f")"; fi
    done
    MACHINE="$MACHINE, $(grep -c '^processor' /proc/cpuinfo) cpus"
    MACHINE="$MACHINE, MemTotal $(sed -n 's/^MemTotal: *//p' "$MEMINFO")"
fi

json_str() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\t\n\r' '   ')"
}

cat >"$STAGE/meta.json" <<EOF
{
  "name": $(json_str "$NAME"),
  "kernel": $(json_str "$KERNEL"),
  "mode": $(json_str "$MODE"),
  "container_id": $(json_str "$ID"),
  "container_path": $(json_str "$DIR"),
  "workload": $(json_str "$WORKLOAD"),
  "captured": $(json_str "$CAPTURED")
}
EOF

# key_values FILE KEY...: a "| KEY | VALUE [UNIT] |" row for each key of a "key value" file, in order.
key_values() {
    kv_file=$1
    shift
    [ -f "$kv_file" ] || return 0
    awk -v keys="$*" 'BEGIN { n = split(keys, k, " ") } { v[$1] = $2 ($3 == "" ? "" : " " $3) }
        END { for (i = 1; i <= n; i++) if (k[i] in v) printf "| %s | %s |\n", k[i], v[k[i]] }' "$kv_file"
}

# single_value LABEL FILE: one table row for a one-value file, when it was captured.
single_value() {
    [ -f "$2" ] && printf '| %s | %s |\n' "$1" "$(cat "$2")"
    return 0
}

{
    echo "# Fixture $NAME"
    echo
    echo "Captured from a live kernel by hack/capture-cgroup.sh; never edit these files by hand."
    echo
    echo "- kernel (uname -r): $KERNEL"
    echo "- cgroup mode: $MODE"
    echo "- machine: $MACHINE"
    echo "- container path: $DIR (container id: \"$ID\")"
    echo "- workload: ${WORKLOAD:-none given}"
    echo "- captured: $CAPTURED"
    echo "- command: \`$COMMAND\`"
    echo "- capture time (from /proc/uptime): memory files and meminfo in $(awk -v a="$T0" -v b="$T1" \
        'BEGIN { printf "%.2f", b - a }') s, everything in $(awk -v a="$T0" -v b="$T2" \
        'BEGIN { printf "%.2f", b - a }') s"
    echo
    echo "Files were read one after another (memory files first), so values across files may differ by a"
    echo "few pages. \`cgroup.procs\` files are kept empty on purpose."
    echo
    echo "## Key values (bytes unless a unit is shown)"
    echo
    echo "| key | value |"
    echo "| --- | --- |"
    if [ "$MODE" = v2 ]; then
        if [ -n "$SUB" ]; then
            single_value memory.current "$STAGE/cgroup/$C/memory.current"
            single_value memory.max "$STAGE/cgroup/$C/memory.max"
            key_values "$STAGE/cgroup/$C/memory.stat" anon file active_file inactive_file shmem \
                active_anon inactive_anon file_mapped kernel
        else
            key_values "$STAGE/cgroup/memory.stat" anon file active_file inactive_file shmem \
                active_anon inactive_anon file_mapped kernel
        fi
    else
        single_value memory.usage_in_bytes "$STAGE/cgroup/$M/memory.usage_in_bytes"
        single_value memory.limit_in_bytes "$STAGE/cgroup/$M/memory.limit_in_bytes"
        key_values "$STAGE/cgroup/$M/memory.stat" total_rss total_cache total_active_file \
            total_inactive_file total_shmem total_active_anon total_inactive_anon total_mapped_file
    fi
    key_values "$STAGE/meminfo" MemTotal: MemFree: Active\(file\): Inactive\(file\): AnonPages:
    echo
    echo "## Skipped files (write-only, or the kernel returned an error on read)"
    echo
    if [ -s "$SKIPPED" ]; then sed 's/^/- /' "$SKIPPED"; else echo "none"; fi
    if [ -s "$NOTES" ]; then
        echo
        echo "## Capture notes"
        echo
        sed 's/^/- /' "$NOTES"
    fi
    if [ -n "$NOTE" ]; then
        echo
        echo "## Notes"
        echo
        echo "$NOTE"
    fi
} >"$STAGE/README.md"
rm -f "$SKIPPED" "$NOTES"

rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
mv "$STAGE" "$OUT"
trap - EXIT
echo "captured $MODE cgroup $DIR into $OUT"

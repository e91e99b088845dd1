#!/bin/sh
# Capture the qemu fixtures: boot Debian's stock kernel under qemu TCG and run scenarios.sh in it.
#
# usage: hack/qemu-capture/run.sh [v2|v1|all]   (default all: one boot per mode)
# The guest is built by build.sh into the cache dir. For each mode a fresh ext4 image is made with
# mkfs.ext4 -d, seeded with the capture scripts and run.env; after the guest powers off the fixtures are
# read back from the image with debugfs (no loop mount, no root needed for this step) and moved into
# tests/fixtures/cgroupfs/, replacing earlier captures of the same name. The console log of the last run
# of each mode is kept in the cache dir.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${SHIMSTATS_CACHE:-$HOME/.cache/shimstats}/qemu-capture
FIXTURES=$REPO/tests/fixtures/cgroupfs
TIMEOUT=${QEMU_TIMEOUT:-1800}

case ${1:-all} in
    all) MODES="v2 v1" ;;
    v1 | v2) MODES=$1 ;;
    *) echo "usage: $0 [v2|v1|all]" >&2; exit 2 ;;
esac
for tool in qemu-system-x86_64 mkfs.ext4 debugfs timeout; do
    if ! command -v "$tool" >/dev/null; then
        echo "run: $tool not found (apt-get install qemu-system-x86 e2fsprogs)" >&2
        exit 1
    fi
done

GUEST=$(sh "$HERE/build.sh")
mkdir -p "$CACHE"
RUN=$(mktemp -d "$CACHE/run.XXXXXX")
trap 'rm -rf "$RUN"' EXIT

QEMU_VERSION=$(qemu-system-x86_64 --version | sed -n '1s/^QEMU emulator version //p')
HOST_CPU=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
ACCEL="-accel tcg,thread=multi -cpu max -M pc -m 1024 -smp 2"
MACHINE="qemu-system-x86_64 $QEMU_VERSION, TCG ($ACCEL), host CPU $HOST_CPU; kernel package\
 $(cat "$GUEST/kernel.package")"

for mode in $MODES; do
    seed=$RUN/seed-$mode
    mkdir -p "$seed/hack/qemu-capture"
    cp "$REPO/hack/capture-cgroup.sh" "$seed/hack/"
    cp "$HERE/workloads.sh" "$HERE/scenarios.sh" "$seed/hack/qemu-capture/"
    printf "MODE=%s\nMACHINE='%s'\n" "$mode" "$MACHINE" >"$seed/run.env"
    img=$RUN/data-$mode.img
    truncate -s 1G "$img"
    # Initialise inode tables and journal now, so no ext4lazyinit writes run during the capture.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -d "$seed" "$img"

    console=$CACHE/console-$mode.log
    start=$(date +%s)
    echo "run: booting $(cat "$GUEST/kernel.release") under qemu TCG for $mode (console: $console)"
    # shellcheck disable=SC2086  # ACCEL is a list of options
    timeout "$TIMEOUT" qemu-system-x86_64 $ACCEL -nodefaults -display none -no-reboot \
        -kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.cpio" \
        -append "console=ttyS0 panic=-1 loglevel=4" \
        -serial "file:$console" \
        -drive "file=$img,format=raw,if=virtio" || true
    took=$(($(date +%s) - start))
    if ! grep -q '^SHIMSTATS-CAPTURE-OK' "$console"; then
        echo "run: $mode capture failed after $took s; console tail:" >&2
        tail -n 30 "$console" >&2
        mv "$img" "$CACHE/failed-$mode.img"
        echo "run: the data disk is kept as $CACHE/failed-$mode.img (read it with debugfs)" >&2
        exit 1
    fi
    debugfs -R "rdump /out $RUN" "$img" 2>/dev/null
    for dir in "$RUN"/out/*/; do
        name=$(basename "$dir")
        [ -f "$dir/meta.json" ] || { echo "run: $name has no meta.json" >&2; exit 1; }
        rm -rf "${FIXTURES:?}/$name"
        mv "$dir" "$FIXTURES/$name"
        echo "run: fixture $name"
    done
    rm -rf "$RUN/out" "$img"
    echo "run: $mode done in $took s (boot, workloads, capture and power-off)"
done

#!/bin/busybox sh
# PID 1 of the guest-test VM (packed as /init by shimstats/guest_test/image.py).
#
# Mounts proc/sys/dev, loads the modules listed in /modules/load.order, mounts the host directories that
# `shimstats guest-test` shares read-only over 9p at their host paths (shimstats.shares=, tags s0, s1, ...),
# recreates the host's top-level symlinks (shimstats.links=/lib:usr/lib,...) and runs the guest side,
# `python -m shimstats.guest_test.inguest`, with the host's own Python. With shimstats.probe=1 it stops after
# loading the modules (shimstats.guest_test.qemu uses that to learn whether KVM can run this kernel). It
# always powers off, so qemu exits whatever happens; the last console line says how the guest side ended.

/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin:/sbin

# param NAME: the value of shimstats.NAME= on the kernel command line (empty when absent).
param() {
    for word in $(cat /proc/cmdline); do
        case $word in "shimstats.$1="*) echo "${word#*=}" ;; esac
    done
}

boot() {
    mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
        && mount -t tmpfs -o mode=1777 tmpfs /tmp || return 1
    while read -r m; do
        insmod "/modules/$m.ko" || { echo "init: cannot load module $m" >&2; return 1; }
    done </modules/load.order
    if [ -n "$(param probe)" ]; then
        # An accelerator probe: the kernel booted and took its modules; nothing more to do.
        echo SHIMSTATS-PROBE-OK
        return 0
    fi
    n=0
    for path in $(param shares | tr , ' '); do
        mkdir -p "$path"
        mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 "s$n" "$path" \
            || { echo "init: cannot mount 9p share s$n at $path" >&2; return 1; }
        n=$((n + 1))
    done
    for link in $(param links | tr , ' '); do
        [ -e "${link%%:*}" ] || ln -s "${link#*:}" "${link%%:*}"
    done
    echo "init: kernel $(uname -r) up at $(cut -d' ' -f1 /proc/uptime) s; starting the guest side"
    PYTHONPATH=$(param pythonpath | tr , :) PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \
        "$(param python)" -m shimstats.guest_test.inguest
}

if boot; then
    RESULT=SHIMSTATS-GUEST-OK
else
    RESULT=SHIMSTATS-GUEST-FAILED
fi
cd /
sync
echo "$RESULT"
poweroff -f

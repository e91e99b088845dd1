#!/bin/busybox sh
# PID 1 of the qemu capture guest (packed as /init by build.sh).
#
# Boots just enough to run the capture: busybox applets, proc/sys/dev, the virtio and ext4 modules, and the
# data disk prepared by run.sh, which carries the scripts and run.env. scenarios.sh then sets up cgroups and
# writes fixtures to /mnt/data/out. The guest always powers off, so qemu exits even when something fails;
# the last console line says whether the run succeeded.

/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

boot() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mount -t tmpfs tmpfs /tmp
    echo "init: kernel $(uname -r), cmdline: $(cat /proc/cmdline)"
    while read -r m; do
        insmod "/modules/$m.ko" || return 1
    done </modules/load.order
    n=0
    while [ ! -b /dev/vda ]; do
        [ "$n" -lt 50 ] || { echo "init: no /dev/vda" >&2; return 1; }
        sleep 0.2
        n=$((n + 1))
    done
    mkdir -p /mnt/data
    mount -t ext4 /dev/vda /mnt/data || return 1
    [ -f /mnt/data/run.env ] || { echo "init: no run.env on the data disk" >&2; return 1; }
    cd /mnt/data && sh hack/qemu-capture/scenarios.sh
}

if boot; then
    RESULT=SHIMSTATS-CAPTURE-OK
else
    RESULT=SHIMSTATS-CAPTURE-FAILED
fi
cd /
sync
umount /mnt/data 2>/dev/null || mount -o remount,ro /mnt/data 2>/dev/null
echo "$RESULT"
poweroff -f

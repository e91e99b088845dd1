#!/bin/sh
# Build the qemu capture guest in the cache dir: Debian's stock kernel and a busybox initramfs.
#
# The work is shimstats.guest_test.image's, shared with `shimstats guest-test`: it downloads (apt-get
# download, no install) the kernel package linux-image-amd64 points to and busybox-static, unpacks them
# with dpkg-deb and packs an initramfs holding busybox, the modules needed to mount an ext4 virtio disk
# (with their dependencies, in load order, under /modules) and init.sh as /init. Nothing is written into
# the repository. Prints the directory holding vmlinuz, initrd.cpio, kernel.release and kernel.package.
#
# Environment: SHIMSTATS_CACHE (default ~/.cache/shimstats), KERNEL_PACKAGE (default: what
# linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# Modules the guest loads, by name; their dependencies are added from each module's modinfo.
# crc32c_generic is not a link-time dependency: ext4 and jbd2 ask the crypto API for crc32c at mount time.
MODULES="virtio_pci virtio_blk crc32c_generic crc16 mbcache jbd2 ext4"

PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} exec python3 -m shimstats.guest_test.image \
    --kernel "debian${KERNEL_PACKAGE:+:$KERNEL_PACKAGE}" --init "$HERE/init.sh" --modules "$MODULES"

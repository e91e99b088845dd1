#!/bin/sh
# Build the qemu capture guest in the cache dir: Debian's stock kernel and a busybox initramfs.
#
# Downloads (apt-get download, no install) the kernel package linux-image-amd64 points to and
# busybox-static, unpacks them with dpkg -x, and packs an initramfs holding busybox, the modules needed to
# mount an ext4 virtio disk, and init.sh as /init. Nothing is written into the repository.
# Prints the directory holding vmlinuz, initrd.cpio and kernel.release.
#
# Environment: SHIMSTATS_CACHE (default ~/.cache/shimstats), KERNEL_PACKAGE (default: what
# linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${SHIMSTATS_CACHE:-$HOME/.cache/shimstats}/qemu-capture
# Modules the guest loads, by name; their dependencies are added from each module's modinfo.
# crc32c_generic is not a link-time dependency: ext4 and jbd2 ask the crypto API for crc32c at mount time.
MODULES="virtio_pci virtio_blk crc32c_generic crc16 mbcache jbd2 ext4"

if [ -z "${KERNEL_PACKAGE:-}" ]; then
    KERNEL_PACKAGE=$(apt-cache depends linux-image-amd64 \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)
    if [ -z "$KERNEL_PACKAGE" ]; then
        echo "build: cannot resolve linux-image-amd64; set KERNEL_PACKAGE" >&2
        exit 1
    fi
fi

mkdir -p "$CACHE/debs"
for pkg in "$KERNEL_PACKAGE" busybox-static; do
    if ! ls "$CACHE/debs/${pkg}_"*.deb >/dev/null 2>&1; then
        (cd "$CACHE/debs" && apt-get download "$pkg") >&2
    fi
done

OUT=$CACHE/guest-$KERNEL_PACKAGE
# Rebuild only when init.sh or this script changed (the scripts run from the data disk, not the initramfs).
if [ -f "$OUT/initrd.cpio" ] && [ -z "$(find "$HERE/init.sh" "$0" -newer "$OUT/initrd.cpio")" ]; then
    echo "$OUT"
    exit 0
fi

WORK=$OUT.build.$$
trap 'rm -rf "$WORK"' EXIT
rm -rf "$WORK"
mkdir -p "$WORK/pkg" "$WORK/initramfs"
for deb in "$CACHE/debs/${KERNEL_PACKAGE}_"*.deb "$CACHE/debs/busybox-static_"*.deb; do
    dpkg -x "$deb" "$WORK/pkg"
done
RELEASE=$(ls "$WORK/pkg/lib/modules")
MODDIR=$WORK/pkg/lib/modules/$RELEASE
BB=$WORK/pkg/bin/busybox

# Resolve dependencies depth first so that each module is listed after everything it needs.
ORDER=""
add_module() {
    case " $ORDER " in *" $1 "*) return 0 ;; esac
    am_file=$(find "$MODDIR/kernel" -name "$1.ko" | head -n 1)
    [ -n "$am_file" ] || { echo "build: module $1 not found in $MODDIR" >&2; exit 1; }
    for am_dep in $(tr '\0' '\n' <"$am_file" | sed -n 's/^depends=//p' | tr ',' ' '); do
        add_module "$am_dep"
    done
    ORDER="$ORDER $1"
}
for m in $MODULES; do add_module "$m"; done

R=$WORK/initramfs
mkdir -p "$R/bin" "$R/sbin" "$R/usr/bin" "$R/usr/sbin" "$R/proc" "$R/sys" "$R/dev" "$R/mnt/data" "$R/tmp" \
    "$R/lib/modules"
cp "$BB" "$R/bin/busybox"
for m in $ORDER; do
    cp "$(find "$MODDIR/kernel" -name "$m.ko" | head -n 1)" "$R/lib/modules/"
    echo "$m" >>"$R/lib/modules/load.order"
done
cp "$HERE/init.sh" "$R/init"
chmod 755 "$R/init"
(cd "$R" && find . | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) >"$WORK/initrd.cpio"

rm -rf "$OUT"
mkdir -p "$OUT"
cp "$WORK/pkg/boot/vmlinuz-$RELEASE" "$OUT/vmlinuz"
mv "$WORK/initrd.cpio" "$OUT/initrd.cpio"
echo "$RELEASE" >"$OUT/kernel.release"
echo "$KERNEL_PACKAGE $(dpkg-deb -f "$CACHE/debs/${KERNEL_PACKAGE}_"*.deb Version)" >"$OUT/kernel.package"
echo "$OUT"

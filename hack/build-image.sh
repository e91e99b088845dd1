#!/usr/bin/env bash
# Builds deploy/image/Containerfile with Debian's buildah (or podman) from Debian packages only: no
# registry base image is pulled. The root filesystem comes from debootstrap (Debian 12 minbase + python3
# + python3-venv, from the mirror in MIRROR), the Python side from wheels pip builds/downloads here.
#
#   bash hack/build-image.sh [TAG]        default TAG: localhost/shimstats:<version from pyproject>
#   ROOTFS_CACHE=/var/tmp/x bash ...      reuse a debootstrap tree between builds (made when missing)
#
# Needs root and: debootstrap, buildah or podman (apt-get install debootstrap buildah).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
tag=${1:-localhost/shimstats:$version}
mirror=${MIRROR:-http://deb.debian.org/debian}
suite=${SUITE:-bookworm}

if command -v buildah >/dev/null; then
    build=(buildah build --layers=false)
elif command -v podman >/dev/null; then
    build=(podman build)
else
    echo "build-image: neither buildah nor podman is installed (apt-get install buildah)" >&2
    exit 2
fi
command -v debootstrap >/dev/null || { echo "build-image: debootstrap is not installed" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "build-image: debootstrap needs root" >&2; exit 2; }

context=$(mktemp -d /var/tmp/shimstats-image.XXXXXX)
trap 'rm -rf "$context"' EXIT

rootfs=${ROOTFS_CACHE:-$context/rootfs}
if [ ! -x "$rootfs/usr/bin/python3" ]; then
    echo "build-image: debootstrap $suite into $rootfs" >&2
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$rootfs" "$mirror" >/dev/null
fi
# The apt caches are not needed in the image.
tar -C "$rootfs" --exclude=./var/cache/apt/archives/*.deb --exclude=./var/lib/apt/lists/* \
    --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
    --exclude=./usr/share/doc/* --exclude=./usr/share/man/* --exclude=./usr/share/locale/* -cf "$context/rootfs.tar" .

# Wheels for the image's own Python and CPU, whatever Python builds them here: shimstats itself (pure
# Python), then its dependencies as binary wheels for that interpreter (glibc 2.36 in bookworm).
pyv=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
arch=$(uname -m)
echo "build-image: wheels for the image's python $pyv on $arch" >&2
python3 -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$context/wheels" .
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: --implementation cp \
    --python-version "$pyv" --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
    --platform "manylinux2014_$arch" --platform "manylinux_2_5_$arch" --dest "$context/wheels" \
    "$context"/wheels/shimstats-*.whl

cp deploy/image/Containerfile "$context/Containerfile"
echo "build-image: ${build[*]} -t $tag" >&2
"${build[@]}" -f "$context/Containerfile" -t "$tag" "$context"
echo "$tag"

#!/usr/bin/env bash
# Installs the Debian packages the integration tests need: containerd + runc (a real Go ttrpc
# server, the runc shim), busybox-static (the containers' root filesystem), and qemu-system-x86 +
# e2fsprogs (shimstats guest-test boots a real guest kernel under qemu with an ext4 data disk),
# prometheus (promtool checks and unit-tests deploy/prometheus/rules.yaml; a real Prometheus scrapes the
# exporter), buildah + debootstrap (hack/build-image.sh builds the image from Debian packages; a slow test
# runs the exporter from it), python3-venv (hack/test.sh makes .venv where python3 refuses pip, PEP 668).
# Idempotent and quiet: does nothing when every package is already installed.
set -euo pipefail

packages=(containerd runc busybox-static qemu-system-x86 e2fsprogs prometheus buildah debootstrap python3-venv)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ci-install: missing packages ${missing[*]}; run this script as root to install them" >&2
    exit 1
fi

echo "ci-install: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Only refresh the package lists when apt has none yet (a fresh image): keeps reruns fast.
if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
    apt-get update -qq -o DPkg::Lock::Timeout=300
fi
# The containerd package would start a system daemon where an init system exists; the tests start
# their own, so service starts are refused for the duration of the install (policy-rc.d exit 101).
policy=/usr/sbin/policy-rc.d
restore_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    restore_policy=1
fi
trap '[ -n "$restore_policy" ] && rm -f "$policy"' EXIT
# Another apt run (a colleague, unattended-upgrades) may hold the lock: wait for it, bounded.
apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Set-up for a fresh Debian 12 machine: the Debian packages Porthole's build,
# tests, demo and benchmarks use, then the npm packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(qemu-system-x86 qemu-utils qemu-block-extra linux-image-amd64 busybox-static
      xorriso genisoimage mtools dosfstools socat xenstore-utils qemu-guest-agent
      debootstrap cpio dpkg-dev chromium ca-certificates openssl
      libvirt-clients isolinux syslinux-common gcc libc6-dev
      wine wine64 msitools wixl)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

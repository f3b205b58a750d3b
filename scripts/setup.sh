#!/usr/bin/env bash
# Set-up for a fresh Debian 12 machine: the Debian packages Porthole's build,
# tests, demo and benchmarks use, then the npm packages. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(qemu-system-x86 qemu-utils qemu-block-extra linux-image-amd64 busybox-static
      xorriso genisoimage mtools dosfstools socat xenstore-utils qemu-guest-agent
      debootstrap cpio dpkg-dev chromium ca-certificates openssl
      libvirt-clients libvirt-daemon-system libvirt-daemon-driver-qemu isolinux syslinux-common gcc libc6-dev
      qemu-system-arm qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      wine wine64 msitools wixl)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
updated=""
apt_update() { [ -n "$updated" ] || $SUDO apt-get update -q; updated=1; }
# The aarch64 test guest's kernel and busybox are Debian's arm64 packages: dpkg must know the architecture.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "setup: adding arm64 to dpkg's architectures"
  $SUDO dpkg --add-architecture arm64
  apt_update
fi
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

# What the linux-arm64 agent is built from: Node's arm64 binary and the arm64 CRC32C addon, pinned
# in their own lock file (npm installs another CPU's packages only when told the CPU).
arm64_platform=packages/agent/platforms/linux-arm64
if [ ! -d $arm64_platform/node_modules ] || [ $arm64_platform/package-lock.json -nt $arm64_platform/node_modules/.package-lock.json ]; then
  npm ci --prefix $arm64_platform --cpu=arm64 --os=linux --no-audit --no-fund
fi

# The aarch64 test guest: Debian's arm64 kernel (its modules indexed by depmod) and static busybox,
# unpacked into the test bed's cache as $cache/kernel and $cache/busybox (links to the unpacked
# versions). Fetched once, like the x86 guest's packages; remove $cache to fetch Debian's newest.
cache="${PORTHOLE_TESTBED_CACHE:-.cache/testbed}/arm64"
arm64_unpack() { # PACKAGE LINK
  local pkg=$1 link=$2 dir tmp
  tmp=$(mktemp -d)
  echo "setup: fetching $pkg:arm64 for the aarch64 test guest"
  (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg:arm64") \
    || { apt_update; (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg:arm64"); }
  dir="$cache/$(basename "$tmp"/*.deb .deb)"
  rm -rf "$dir"
  dpkg-deb -x "$tmp"/*.deb "$dir.tmp"
  rm -rf "$tmp"
  for modules in "$dir.tmp"/lib/modules/*; do
    [ -d "$modules" ] && /sbin/depmod -b "$dir.tmp" "$(basename "$modules")"
  done
  mv "$dir.tmp" "$dir"
  ln -sfn "$(basename "$dir")" "$cache/$link"
}
mkdir -p "$cache"
if [ ! -e "$cache/kernel" ]; then
  arm64_kernel=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^:]*\).*/\1/p' | head -1)
  [ -n "$arm64_kernel" ] || { apt_update; arm64_kernel=$(apt-cache depends linux-image-arm64:arm64 | sed -n 's/^ *Depends: \(linux-image-[^:]*\).*/\1/p' | head -1); }
  arm64_unpack "$arm64_kernel" kernel
fi
[ -e "$cache/busybox" ] || arm64_unpack busybox-static busybox

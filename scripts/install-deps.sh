#!/usr/bin/env bash
# Installs the Debian packages dutlab needs to build its guest image and run QEMU DUTs.
# Idempotent; uses sudo when not run as root.
set -euo pipefail
packages=(
  qemu-system-x86   # the emulator (TCG)
  qemu-utils        # qemu-img: linked-clone overlays, rootfs.qcow2
  linux-image-amd64 # the guest kernel (from the host's /boot)
  busybox-static    # the guest userland
  e2fsprogs         # mke2fs -d: the guest rootfs without root mounts
  git               # test definitions from git repositories
  cpio gzip         # used by tests to inspect the initramfs
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Installs the Debian packages dutlab needs to build its guest image, run QEMU DUTs and start
# private PostgreSQL servers in tests, then checks that every command it needs is present.
# Used by the README's quick start and by CI.
#
# - All packages go in one `apt-get install` transaction, so apt picks versions that fit together.
# - The QEMU packages must be one release: a machine may carry a newer `qemu-utils` (a backport)
#   that breaks the archive's `qemu-system-x86`; it is then pinned to the emulator's version.
# - Idempotent: with every command present and QEMU consistent, nothing is installed.
# Uses sudo when not run as root. Exits 1 naming the package of a command still missing.
set -euo pipefail

# command  package (one table: what must be on PATH and where it comes from)
commands=(
  "qemu-system-x86_64 qemu-system-x86"   # the emulator (TCG)
  "qemu-img qemu-utils"                  # linked-clone overlays, rootfs.qcow2
  "busybox busybox-static"               # the guest userland
  "dropbear dropbear-bin"                # the guest's SSH server (copied into the image with its libraries)
  "ssh openssh-client"                   # tests log in to a DUT over its forwarded SSH port
  "mke2fs e2fsprogs"                     # mke2fs -d: the guest rootfs without root mounts
  "git git"                              # test definitions from git repositories
  "cpio cpio"                            # tests inspect the initramfs
  "gzip gzip"
  "sqlite3 sqlite3"                      # a test turns a database back into an older schema
  "python3 python3"                      # a test serves images with python3 -m http.server
  "ip iproute2"                          # tests put agents in network namespaces
)
# Packages with no command of their own.
extra_packages=(
  linux-image-amd64 # the guest kernel (from the host's /boot)
  postgresql        # tests start private servers (initdb, pg_ctl; not on PATH on Debian)
)
# Packages that must all be the version of the first one.
qemu_family=(qemu-system-x86 qemu-utils)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

installed_version() { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | awk '/install ok installed/{print $4}'; }

missing_commands() {
  local line cmd
  for line in "${commands[@]}"; do
    cmd=${line%% *}
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || echo "$line"
  done
}

qemu_consistent() {
  local first="" p v
  for p in "${qemu_family[@]}"; do
    v=$(installed_version "$p")
    [ -n "$v" ] || return 1
    [ -z "$first" ] && first=$v
    [ "$v" = "$first" ] || return 1
  done
}

kernel_present() { ls /boot/vmlinuz-* >/dev/null 2>&1; }

# Debian keeps the server programs in /usr/lib/postgresql/<major>/bin, off PATH; testkit looks
# there (and then on PATH). Installing the package also creates the `postgres` system user,
# as whom tests run initdb when they run as root. No system service is used by tests.
postgres_present() {
  local bin
  for bin in /usr/lib/postgresql/*/bin; do
    [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/postgres" ] && return 0
  done
  return 1
}

if [ -z "$(missing_commands)" ] && qemu_consistent && kernel_present && postgres_present; then
  echo "install-deps: all commands present"
  "$(dirname "$0")/install-lavacli.sh"
  exit 0
fi

echo "install-deps: updating package lists"
$sudo apt-get update -qq
want=()
for line in "${commands[@]}"; do want+=("${line#* }"); done
want+=("${extra_packages[@]}")
# Pin the rest of the QEMU family to the emulator's candidate version.
qemu_version=$(apt-cache policy "${qemu_family[0]}" | awk '/Candidate:/{print $2}')
if [ -z "$qemu_version" ] || [ "$qemu_version" = "(none)" ]; then
  echo "install-deps: no installable version of ${qemu_family[0]} in the configured archives" >&2
  exit 1
fi
args=()
for p in "${want[@]}"; do
  if [[ " ${qemu_family[*]} " == *" $p "* ]]; then
    args+=("$p=$qemu_version")
  else
    args+=("$p")
  fi
done
# Deduplicate (git, cpio, gzip name themselves) while keeping the order.
mapfile -t args < <(printf '%s\n' "${args[@]}" | awk '!seen[$0]++')
echo "install-deps: installing ${args[*]}"
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  --allow-downgrades "${args[@]}" >/dev/null

still=$(missing_commands)
if [ -n "$still" ]; then
  while read -r cmd pkg; do
    echo "install-deps: command $cmd is still missing after installing; it comes from the Debian package $pkg" >&2
  done <<<"$still"
  exit 1
fi
if ! kernel_present; then
  echo "install-deps: no kernel in /boot after installing linux-image-amd64" >&2
  exit 1
fi
if ! postgres_present; then
  echo "install-deps: no initdb, pg_ctl and postgres in /usr/lib/postgresql/*/bin after installing postgresql" >&2
  exit 1
fi
echo "install-deps: all commands present"
# The real lavacli for the LAVA compatibility tests (a pinned version from PyPI in .venv/lavacli).
"$(dirname "$0")/install-lavacli.sh"

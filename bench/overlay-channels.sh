#!/usr/bin/env bash
# Benchmark: how long a test overlay takes to reach a QEMU DUT by the overlay disk and by the
# serial console (not a test).
#
#   bench/overlay-channels.sh [--rounds N]
#
# For each size, a git repository holding that many incompressible bytes is run as a `from: git`
# definition with `dutlab run`, once on the default device (overlay disk) and once on a device
# with `overlay_channel: console`; the runner's note "test overlay (N bytes) installed over
# the ... in Ts" gives the DUT-side time. The console carries at most 8 MiB compressed, so it
# is measured at 1 and 4 MiB and its rate extrapolated to 50 MB (it is linear: one shell round
# trip per 900 base64 characters). Prints one line per measurement and the ratios.
# Needs cargo, git, python3 and the packages of scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=1
[ "${1:-}" = "--rounds" ] && rounds=$2
cargo build --locked -q -p dutlab-cli
dutlab="${CARGO_TARGET_DIR:-target}/debug/dutlab"
"$dutlab" image build >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'name: console-only\ndevice_type: qemu\noverlay_channel: console\n' >"$work/console.yaml"

# repo SIZE -> job file whose definition carries SIZE incompressible bytes
make_job() {
  local size=$1 repo="$work/repo-$1"
  mkdir -p "$repo"
  head -c "$size" /dev/urandom >"$repo/blob.bin"
  printf '%s\n' 'metadata: {format: Lava-Test Test Definition 1.0, name: blob}' \
    'run: {steps: ["lava-test-case blob --shell test -s blob.bin"]}' >"$repo/blob.yaml"
  git -C "$repo" init -q
  git -C "$repo" add .
  git -C "$repo" -c user.name=bench -c user.email=bench@example.invalid commit -qm blob
  cat >"$work/job-$size.yaml" <<EOF
job_name: overlay $size
device_type: qemu
timeouts: {job: 30m, action: 30m}
actions:
  - boot: {method: qemu}
  - test:
      definitions:
        - {from: git, repository: $repo, path: blob.yaml, name: blob, history: false}
EOF
}

# measure SIZE CHANNEL -> seconds
measure() {
  local size=$1 channel=$2 args=() out
  [ "$channel" = console ] && args=(--device "$work/console.yaml")
  out=$("$dutlab" run "$work/job-$size.yaml" "${args[@]}" 2>&1) || { echo "$out" >&2; exit 1; }
  sed -n 's/.*installed over the \(overlay disk\|console\) in \([0-9.]*\)s.*/\2/p' <<<"$out" | head -1
}

declare -A best
for size in 1048576 4194304 50000000; do make_job "$size"; done
for _ in $(seq "$rounds"); do
  for m in "1048576 console" "4194304 console" "1048576 disk" "4194304 disk" "50000000 disk"; do
    set -- $m
    t=$(measure "$1" "$2")
    echo "overlay $1 bytes over the $2: ${t}s"
    key="$1-$2"
    if [ -z "${best[$key]:-}" ] || python3 -c "import sys; sys.exit(0 if $t < ${best[$key]} else 1)"; then
      best[$key]=$t
    fi
  done
done
python3 - "${best[4194304-console]}" "${best[4194304-disk]}" "${best[50000000-disk]}" <<'EOF'
import sys
console4, disk4, disk50 = map(float, sys.argv[1:])
rate = 4194304 / console4
console50 = 50e6 / rate
print(f"console: {rate/1e3:.0f} kB/s; 50 MB extrapolated: {console50:.0f}s")
print(f"disk: 50 MB in {disk50:.1f}s ({50/disk50:.0f} MB/s)")
print(f"ratio at 4 MiB (measured both ways): {console4/max(disk4,0.05):.0f}x")
print(f"ratio at 50 MB (console extrapolated): {console50/max(disk50,0.05):.0f}x")
EOF

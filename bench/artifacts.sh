#!/usr/bin/env bash
# Benchmark: artifact upload and fetch throughput through a release `dutlab serve` on
# loopback, and the bytes a cached job start moves (not a test).
#
#   bench/artifacts.sh [--size BYTES] [--no-cache-run]
#
# 1. A file of BYTES random bytes (default 1 GB) is uploaded with curl
#    (PUT /api/v1/artifacts/sha256/HEX: streamed, hashed while streaming, fsynced) and
#    downloaded to /dev/null (GET, the route agents use); wall time of each gives MB/s.
# 2. Unless --no-cache-run: a job with a kernel, an initrd and a disk given by relative paths
#    is submitted twice through a real agent; the controller logs every artifact it sends
#    ("... (N bytes) sent to agent ..."), so the bytes of each start are summed from its log.
# Needs cargo, curl, sha256sum and the packages of scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
size=1000000000
cache_run=1
while [ $# -gt 0 ]; do
  case $1 in
    --size) size=$2; shift 2 ;;
    --no-cache-run) cache_run=0; shift ;;
    *) echo "usage: $0 [--size BYTES] [--no-cache-run]" >&2; exit 64 ;;
  esac
done
cargo build --locked -q --release -p dutlab-cli
dutlab="$(pwd)/${CARGO_TARGET_DIR:-target}/release/dutlab"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$dutlab" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  --max-artifact-bytes $((size + 1)) 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$work/serve.log" | head -1)
url="http://127.0.0.1:$port"
token=$(cat "$work/data/admin-token")

head -c "$size" /dev/urandom >"$work/blob"
hex=$(sha256sum "$work/blob" | cut -d' ' -f1)
sync
rate() { python3 -c "import sys; print(f'{$1/$2/1e6:.0f}')"; }
t0=$(date +%s.%N)
curl -sf -o /dev/null -T "$work/blob" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/octet-stream' "$url/api/v1/artifacts/sha256/$hex"
t1=$(date +%s.%N)
up=$(python3 -c "print($t1 - $t0)")
echo "upload   $size bytes in ${up}s: $(rate "$size" "$up") MB/s"
t0=$(date +%s.%N)
curl -sf -o /dev/null -H "Authorization: Bearer $token" "$url/api/v1/artifacts/sha256/$hex"
t1=$(date +%s.%N)
down=$(python3 -c "print($t1 - $t0)")
echo "fetch    $size bytes in ${down}s: $(rate "$size" "$down") MB/s"
rm -f "$work/blob"
[ "$cache_run" = 1 ] || exit 0

# 2. Cached start: bytes sent per job start.
export DUTLAB_URL=$url DUTLAB_TOKEN=$token XDG_CONFIG_HOME=$work/config
"$dutlab" image build >/dev/null
image=$("$dutlab" image path 2>/dev/null || echo "${XDG_CACHE_HOME:-$HOME/.cache}/dutlab/image")
mkdir -p "$work/job/images" "$work/agent"
for f in vmlinuz initramfs.cpio.gz rootfs.qcow2; do cp "$image/$f" "$work/job/images/"; done
cat >"$work/job/job.yaml" <<'EOF'
job_name: cached start
device_type: qemu
actions:
- deploy:
    to: tmpfs
    images:
      kernel: {url: images/vmlinuz}
      initrd: {url: images/initramfs.cpio.gz}
      rootfs: {url: images/rootfs.qcow2, format: qcow2}
- boot: {method: qemu, prompts: ['# $'], auto_login: {login_prompt: 'login:', username: root}}
EOF
"$dutlab" token create --name bench-agent --role agent >"$work/agent/token"
"$dutlab" agent init --controller "$url" --token-file "$work/agent/token" --qemu 1 \
  --name bench-agent --work-dir "$work/agent/work" >"$work/agent/agent.yaml"
"$dutlab" agent --config "$work/agent/agent.yaml" 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 300); do "$dutlab" device list 2>/dev/null | grep -q idle && break; sleep 0.1; done
sent() { grep 'sent to agent' "$work/serve.log" | sed -n 's/.*(\([0-9]*\) bytes) sent to agent.*/\1/p' | awk '{s+=$1} END {print s+0}'; }
for start in first second; do
  before=$(sent)
  "$dutlab" job submit "$work/job/job.yaml" --follow >/dev/null 2>"$work/submit.log" || true
  echo "$start start: $(($(sent) - before)) bytes sent by the controller; $(grep -c 'uploading' "$work/submit.log" || true) uploads"
done

#!/usr/bin/env bash
# Benchmark: artifact upload and fetch throughput through a release `dutlab serve` on
# loopback, plain and over TLS, and the bytes a job start moves when its images are cached
# (not a test; results go to docs/benchmarks.md).
#
#   bench/artifacts.sh [--size BYTES] [--no-tls] [--no-cache-run] [--in DIR]
#
# 1. A file of BYTES random bytes (default 1 GB) is uploaded with curl
#    (PUT /api/v1/artifacts/sha256/HEX: streamed, hashed while streaming, fsynced before the
#    answer) and downloaded to /dev/null (GET, the route agents use); the wall time of each
#    gives MB/s. Then the same against a controller with a `dutlab tls init` certificate
#    (https, curl trusting the lab CA), unless --no-tls.
# 2. Unless --no-cache-run: a job with a kernel, an initrd and a disk given by relative paths
#    is submitted twice through a real agent. The controller logs every artifact it sends
#    ("artifact sha256:HEX (N bytes) sent to agent ..."): the bytes of each start are summed
#    from that log, and the client's upload lines and the job log's cache lines are counted.
# DUTLAB_IMAGE=DIR uses a built guest image (else one is built).
# --in DIR keeps the file and the controllers' data under DIR (e.g. /dev/shm, to tell the
# controller's own cost from the disk's; default: $TMPDIR).
# Needs cargo, curl, sha256sum, python3 and the packages of scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
size=1000000000
tls=1
cache_run=1
parent=${TMPDIR:-/tmp}
while [ $# -gt 0 ]; do
  case $1 in
    --size) size=$2; shift 2 ;;
    --no-tls) tls=0; shift ;;
    --no-cache-run) cache_run=0; shift ;;
    --in) parent=$2; shift 2 ;;
    *) echo "usage: $0 [--size BYTES] [--no-tls] [--no-cache-run] [--in DIR]" >&2; exit 64 ;;
  esac
done
# DUTLAB_BIN=path/to/dutlab uses that binary instead of building one.
if [ -n "${DUTLAB_BIN:-}" ]; then
  dutlab=$DUTLAB_BIN
else
  cargo build --locked -q --release -p dutlab-cli
  dutlab="$(pwd)/${CARGO_TARGET_DIR:-target}/release/dutlab"
fi

work=$(mktemp -d -p "$parent")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# start_serve NAME [serve flags...]: a controller with data in $work/NAME; sets url, token, serve_pid.
start_serve() {
  local name=$1
  shift
  "$dutlab" serve --listen 127.0.0.1:0 --data-dir "$work/$name" \
    --max-artifact-bytes $((size + 1)) "$@" 2>"$work/$name.log" &
  serve_pid=$!
  pids+=("$serve_pid")
  for _ in $(seq 300); do grep -q 'listening on' "$work/$name.log" 2>/dev/null && break; sleep 0.1; done
  url=$(sed -n 's/.*listening on \(https\{0,1\}:\/\/127.0.0.1:[0-9]*\).*/\1/p' "$work/$name.log" | head -1)
  token=$(cat "$work/$name/admin-token")
}

rate() { python3 -c "print(f'{$1/$2/1e6:.0f}')"; }
now() { date +%s.%N; }

head -c "$size" /dev/urandom >"$work/blob"
hex=$(sha256sum "$work/blob" | cut -d' ' -f1)
sync

# throughput LABEL [curl flags...]: upload then fetch the blob against $url.
throughput() {
  local label=$1
  shift
  local t0 t1 up down
  t0=$(now)
  curl -sf -o /dev/null "$@" -T "$work/blob" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/octet-stream' "$url/api/v1/artifacts/sha256/$hex"
  t1=$(now)
  up=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
  echo "$label upload  $size bytes in ${up}s: $(rate "$size" "$up") MB/s"
  t0=$(now)
  curl -sf -o /dev/null "$@" -H "Authorization: Bearer $token" "$url/api/v1/artifacts/sha256/$hex"
  t1=$(now)
  down=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
  echo "$label fetch   $size bytes in ${down}s: $(rate "$size" "$down") MB/s"
}

start_serve plain
throughput "http "
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
rm -rf "$work/plain"

if [ "$tls" = 1 ]; then
  "$dutlab" tls init "$work/pki" >/dev/null
  start_serve tls --tls-cert "$work/pki/server.pem" --tls-key "$work/pki/server-key.pem"
  throughput "https" --cacert "$work/pki/ca.pem"
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
  rm -rf "$work/tls"
fi
rm -f "$work/blob"
[ "$cache_run" = 1 ] || exit 0

# 2. Cached start: bytes the controller sends per job start.
start_serve lab
export DUTLAB_URL=$url DUTLAB_TOKEN=$token XDG_CONFIG_HOME=$work/config
image=${DUTLAB_IMAGE:-$work/image}
[ -f "$image/vmlinuz" ] || "$dutlab" image build --out "$image" >/dev/null
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
chmod 600 "$work/agent/token"
"$dutlab" agent init --controller "$url" --token-file "$work/agent/token" --qemu 1 \
  --name bench-agent --work-dir "$work/agent/work" >"$work/agent/agent.yaml"
"$dutlab" agent --config "$work/agent/agent.yaml" 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 300); do "$dutlab" device list 2>/dev/null | grep -q idle && break; sleep 0.1; done
sent() { sed -n 's/.*(\([0-9]*\) bytes) sent to agent.*/\1/p' "$work/lab.log" | awk '{s+=$1} END {print s+0}'; }
for start in first second; do
  before=$(sent)
  t0=$(now)
  "$dutlab" job submit "$work/job/job.yaml" --follow >/dev/null 2>"$work/submit.log" || true
  t1=$(now)
  id=$("$dutlab" job list --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])")
  log=$("$dutlab" job logs "$id")
  printf '%s start: %s bytes sent by the controller; %s uploads; %s artifacts from the agent cache, %s fetched; %s (submit to end: %.1fs)\n' \
    "$start" "$(($(sent) - before))" "$(grep -c 'dutlab: uploading' "$work/submit.log" || true)" \
    "$(grep -c "from the agent's cache" <<<"$log" || true)" "$(grep -c ': fetched ' <<<"$log" || true)" \
    "$("$dutlab" job show "$id" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['outcome'])")" \
    "$(python3 -c "print($t1 - $t0)")"
done

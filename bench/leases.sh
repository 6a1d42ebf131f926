#!/usr/bin/env bash
# Benchmark: people's leases through the CLI against a real `dutlab serve` and a real agent
# with one QEMU device (no QEMU starts: a lease does not power the device). Not a test;
# results go to docs/benchmarks.md.
#
#   bench/leases.sh [--rounds N]
#
# 1. acquire + release: N times `dutlab lease acquire --device D` then `dutlab lease release`,
#    wall time of the pair (two CLI processes, two HTTP requests, two commits).
# 2. hand-off: a second user waits (`dutlab lease acquire --device-type qemu --wait`, long poll);
#    the holder releases; the time from the start of `lease release` to the waiting CLI's exit
#    (release commit, the grant in the same commit, long-poll answer, process exit).
# DUTLAB_BIN=path/to/dutlab uses that binary instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=20
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N]" >&2; exit 64 ;;
  esac
done
if [ -n "${DUTLAB_BIN:-}" ]; then
  dutlab=$DUTLAB_BIN
else
  cargo build --locked -q --release -p dutlab-cli
  dutlab="$(pwd)/${CARGO_TARGET_DIR:-target}/release/dutlab"
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$dutlab" serve --listen 127.0.0.1:0 --data-dir "$work/data" 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 300); do grep -q 'listening on' "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
export DUTLAB_URL
DUTLAB_URL=$(sed -n 's/.*listening on \(http:\/\/127.0.0.1:[0-9]*\).*/\1/p' "$work/serve.log" | head -1)
export DUTLAB_TOKEN
DUTLAB_TOKEN=$(cat "$work/data/admin-token")
export XDG_CONFIG_HOME=$work/config
mkdir -p "$work/agent"
"$dutlab" token create --name bench-agent --role agent >"$work/agent/token"
chmod 600 "$work/agent/token"
"$dutlab" agent init --controller "$DUTLAB_URL" --token-file "$work/agent/token" --qemu 1 \
  --name bench-agent --work-dir "$work/agent/work" >"$work/agent/agent.yaml"
"$dutlab" agent --config "$work/agent/agent.yaml" 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 300); do "$dutlab" device list 2>/dev/null | grep -q idle && break; sleep 0.1; done
device=$("$dutlab" device list --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['name'])")
bob=$("$dutlab" token create --name bob --role user)

now() { date +%s%N; }
stats() { python3 -c "
import sys
xs = sorted(float(x) / 1e6 for x in sys.stdin.read().split())
q = lambda p: xs[min(len(xs) - 1, int(len(xs) * p))]
print(f'n={len(xs)} p50={q(0.5):.1f} ms p95={q(0.95):.1f} ms max={xs[-1]:.1f} ms')"; }

: >"$work/pairs"
for _ in $(seq "$rounds"); do
  t0=$(now)
  id=$("$dutlab" lease acquire --device "$device" 2>/dev/null)
  "$dutlab" lease release "$id" >/dev/null
  echo $(($(now) - t0)) >>"$work/pairs"
done
echo "acquire + release through the CLI: $(stats <"$work/pairs")"

: >"$work/handoff"
for _ in $(seq "$rounds"); do
  id=$("$dutlab" lease acquire --device "$device" 2>/dev/null)
  DUTLAB_TOKEN=$bob "$dutlab" lease acquire --device-type qemu --wait >"$work/bob.out" 2>"$work/bob.err" &
  waiter=$!
  for _ in $(seq 300); do grep -q 'waiting for a device' "$work/bob.err" 2>/dev/null && break; sleep 0.01; done
  t0=$(now)
  "$dutlab" lease release "$id" >/dev/null
  wait "$waiter"
  echo $(($(now) - t0)) >>"$work/handoff"
  DUTLAB_TOKEN=$bob "$dutlab" lease release "$(cat "$work/bob.out")" >/dev/null
done
echo "hand-off, release to the waiting CLI's exit: $(stats <"$work/handoff")"

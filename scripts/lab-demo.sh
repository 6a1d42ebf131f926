#!/usr/bin/env bash
# One-command lab demo on one machine: a controller (`dutlab serve`), an agent with one QEMU
# DUT, and a job submitted and followed through the controller. Everything lives in a
# temporary directory and is stopped on exit. Exits with the job's exit code (0 = passed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "lab-demo: building dutlab (first build takes a few minutes)"
cargo build --locked -q -p dutlab-cli
dutlab=$PWD/target/debug/dutlab
"$dutlab" image build >/dev/null

demo=$(mktemp -d -t dutlab-lab-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$demo"
}
trap cleanup EXIT

port=${DUTLAB_DEMO_PORT:-7780}
export DUTLAB_URL=http://127.0.0.1:$port
"$dutlab" serve --listen "127.0.0.1:$port" --data-dir "$demo/data" 2>"$demo/controller.log" &
pids+=($!)
for _ in $(seq 100); do
    if [ -s "$demo/data/admin-token" ] &&
        DUTLAB_TOKEN=$(cat "$demo/data/admin-token") "$dutlab" agent list >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
export DUTLAB_TOKEN=$(cat "$demo/data/admin-token")
echo "lab-demo: controller on $DUTLAB_URL (log: $demo/controller.log)"

"$dutlab" token create --name demo-agent --role agent >"$demo/agent-token"
"$dutlab" agent init --controller "$DUTLAB_URL" --token-file "$demo/agent-token" \
    --qemu 1 --name demo --work-dir "$demo/agent" >"$demo/agent.yaml"
"$dutlab" agent --config "$demo/agent.yaml" 2>"$demo/agent.log" &
pids+=($!)
for _ in $(seq 100); do
    "$dutlab" device list 2>/dev/null | grep -q idle && break
    sleep 0.1
done
"$dutlab" device list

set +e
"$dutlab" job submit examples/qemu-smoke.yaml --follow
code=$?
set -e
"$dutlab" job list
exit $code

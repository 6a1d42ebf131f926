#!/usr/bin/env bash
# The README's first command: install packages, build dutlab, build the guest image and run
# the smoke job on a local QEMU DUT (TCG). Exits with the job's exit code (0 = passed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "quickstart: building dutlab (first build takes a few minutes)"
cargo build --locked -q -p dutlab-cli
target/debug/dutlab image build
exec target/debug/dutlab run examples/qemu-smoke.yaml

#!/bin/sh
# Benchmark `dutlab run examples/qemu-smoke.yaml` against bare QEMU doing the same work.
#
#   bench/run-vs-qemu.sh [--rounds N] [--json FILE] [other options of run-vs-qemu.py]
#
# Builds the release binary, builds the guest image if `dutlab image path` holds none,
# then runs bench/run-vs-qemu.py (see its docstring for what is measured and how).
# Needs cargo, python3 (standard library only), qemu-system-x86_64 and qemu-img.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p dutlab-cli
dutlab="${CARGO_TARGET_DIR:-target}/release/dutlab"
image_dir="$("$dutlab" image path)"
if [ ! -f "$image_dir/image.json" ]; then
    "$dutlab" image build
fi
exec python3 bench/run-vs-qemu.py --dutlab "$dutlab" "$@"

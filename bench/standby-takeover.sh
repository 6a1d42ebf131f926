#!/usr/bin/env bash
# Benchmark: how long a `dutlab serve --standby` takes to answer /healthz after the controller
# holding its PostgreSQL database (and data directory) is killed with SIGKILL (not a test;
# results go to docs/benchmarks.md).
#
#   bench/standby-takeover.sh [--rounds N] [--dutlab PATH] [--follow]
#
# With --follow the second controller is a follower (`serve --follow`, its own data directory
# and port, serving all along) instead of a standby: the time printed is until it says it
# leads (`this controller leads now`), after replaying the database.
#
# A private PostgreSQL server is made in a temporary directory (initdb + pg_ctl, unix socket
# only; as the `postgres` user when run as root) and stopped at the end. Each round: a
# controller on the database, a standby on the same data directory, database and port; once
# the standby says it waits, the controller is killed and the time until the standby prints
# "listening on" and until /healthz answers is printed. The database holds what earlier
# rounds left (a few tokens), so replay is short: this measures the lock hand-over and start.
# Needs curl, bc and the packages of scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5
dutlab=target/release/dutlab
follow=0
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --dutlab) dutlab=$2; shift 2 ;;
    --follow) follow=1; shift ;;
    *) echo "usage: $0 [--rounds N] [--dutlab PATH] [--follow]" >&2; exit 64 ;;
  esac
done
[ -x "$dutlab" ] || { echo "no $dutlab: cargo build --release -p dutlab-cli" >&2; exit 1; }
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d "${TMPDIR:-/tmp}/dutlab-takeover.XXXXXX")
as=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$work"
  as=(runuser -u postgres --)
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  "${as[@]}" "$bin/pg_ctl" -D "$work/pg" -s -m fast stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"${as[@]}" "$bin/initdb" -D "$work/pg" -U dutlab -A trust -E UTF8 --locale=C -N --no-instructions >/dev/null
"${as[@]}" "$bin/pg_ctl" -D "$work/pg" -s -w -o "-c listen_addresses='' -k $work" -l "$work/pg.log" start
"${as[@]}" "$bin/createdb" -h "$work" -U dutlab dutlab
url="postgres://dutlab@localhost/dutlab?host=$work"
port=$((20000 + RANDOM % 10000))
data="$work/data"
mkdir -p "$data"
wait_for() { until grep -q "$2" "$1" 2>/dev/null; do sleep 0.01; done; }
if [ "$follow" -eq 1 ]; then
  port2=$((port + 1))
  echo "round leads_s"
  for round in $(seq 1 "$rounds"); do
    "$dutlab" serve --listen "127.0.0.1:$port" --data-dir "$data" --database "$url" >"$work/a.log" 2>&1 &
    leader=$!
    pids+=("$leader")
    wait_for "$work/a.log" "listening on"
    "$dutlab" serve --listen "127.0.0.1:$port2" --data-dir "$data-f" --database "$url" --follow >"$work/b.log" 2>&1 &
    follower=$!
    pids+=("$follower")
    wait_for "$work/b.log" "listening on"
    sleep 1
    t0=$(date +%s.%N)
    kill -9 "$leader"
    wait_for "$work/b.log" "leads now"
    t1=$(date +%s.%N)
    echo "$round $(echo "$t1 - $t0" | bc)"
    kill "$follower"
    wait "$follower" 2>/dev/null || true
    wait "$leader" 2>/dev/null || true
  done
  exit 0
fi
echo "round listening_s healthz_s"
for round in $(seq 1 "$rounds"); do
  "$dutlab" serve --listen "127.0.0.1:$port" --data-dir "$data" --database "$url" >"$work/a.log" 2>&1 &
  leader=$!
  pids+=("$leader")
  wait_for "$work/a.log" "listening on"
  "$dutlab" serve --listen "127.0.0.1:$port" --data-dir "$data" --database "$url" --standby >"$work/b.log" 2>&1 &
  standby=$!
  pids+=("$standby")
  wait_for "$work/b.log" "standby"
  sleep 1
  t0=$(date +%s.%N)
  kill -9 "$leader"
  wait_for "$work/b.log" "listening on"
  t1=$(date +%s.%N)
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.01; done
  t2=$(date +%s.%N)
  echo "$round $(echo "$t1 - $t0" | bc) $(echo "$t2 - $t0" | bc)"
  kill "$standby"
  wait "$standby" 2>/dev/null || true
  wait "$leader" 2>/dev/null || true
done

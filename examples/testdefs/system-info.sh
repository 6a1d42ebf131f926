#!/bin/sh
# Prints "<check>: PASS|FAIL" lines; the test definition's parse pattern turns them into cases.
check() {
    name=$1; shift
    if "$@" >/dev/null 2>&1; then echo "$name: PASS"; else echo "$name: FAIL"; fi
}
check arch test "$(uname -m)" = "$1"
check proc-mounted test -r /proc/self/status
check sys-mounted test -d /sys/kernel
check tmp-writable sh -c 'echo x > /tmp/.dutlab-probe && rm /tmp/.dutlab-probe'

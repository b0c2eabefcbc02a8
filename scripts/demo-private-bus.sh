#!/usr/bin/env bash
# The fallback demo (no systemd-nspawn needed): the agent on a private system bus, without
# touching the host's own bus or services.
#   1. starts dbus-daemon with Debian's default-deny system policy plus the
#      shipped dbus/org.vael.Antibody.conf,
#   2. starts antibodyd with a config under a temporary directory,
#   3. watches its signals, submits a Watchdog alert with antibodyctl,
#   4. shows the plan, the signals, the ledger and its verification.
# Needs root (the shipped policy lets only root own the name) and Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo-private-bus.sh: run as root: the shipped bus policy lets only root own org.vael.Antibody" >&2
    exit 1
fi
command -v dbus-daemon >/dev/null && command -v busctl >/dev/null || scripts/install-deps.sh
echo "== building antibodyd and antibodyctl"
cargo build --quiet --bins

demo=$(mktemp -d /tmp/antibody-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "(demo files kept in $demo)"
}
trap cleanup EXIT

sed -e "s#@SOCKET@#$demo/system_bus_socket#" \
    -e "s#@POLICY@#$PWD/dbus/org.vael.Antibody.conf#" \
    -e "s#@EXTRA@##" tests/support/private-system-bus.conf.in > "$demo/bus.conf"
dbus-daemon --config-file="$demo/bus.conf" --nofork --nopidfile </dev/null 2>"$demo/dbus.log" &
pids+=($!)
export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$demo/system_bus_socket"
for _ in $(seq 100); do [ -S "$demo/system_bus_socket" ] && break; sleep 0.05; done

cat > "$demo/antibody.toml" <<TOML
[ledger]
dir = "$demo/ledger"
[state]
dir = "$demo/state"
TOML
target/debug/antibodyd --config "$demo/antibody.toml" </dev/null 2>"$demo/agent.log" &
pids+=($!)
for _ in $(seq 200); do busctl --system status org.vael.Antibody >/dev/null 2>&1 && break; sleep 0.05; done
echo "== antibodyd is up on a private bus ($DBUS_SYSTEM_BUS_ADDRESS)"
target/debug/antibodyctl status

target/debug/antibodyctl watch >"$demo/signals.txt" 2>&1 &
pids+=($!)
sleep 0.3

alert='{"source":"Watchdog","severity":"high","description":"vael stopped answering health checks",
 "actions":[
   {"type":"notify_operator","channel":"dbus","message":"vael is unhealthy; Antibody is on it"},
   {"type":"notify_operator","channel":"journal","message":"vael health check failed 3 times"}
 ],
 "context":{"entity":"vael.service","payload":{"failed_checks":3}}}'

echo
echo "== what it would do (DryRun)"
echo "$alert" | target/debug/antibodyctl dry-run -
echo
echo "== submitting the alert"
echo "$alert" | target/debug/antibodyctl submit --wait -
plan_id=$(target/debug/antibodyctl list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
echo
echo "== the plan"
target/debug/antibodyctl plan "$plan_id"
echo
echo "== a bad alert is refused with a named error, and the agent stays up"
busctl --system call org.vael.Antibody /org/vael/Antibody org.vael.Antibody SubmitAlert s \
    '{"source":"Manual","severity":"high","description":"typo","actions":[{"type":"restart_service","name":"foo bar"}]}' || true
target/debug/antibodyctl status
sleep 0.3
echo
echo "== signals seen by 'antibodyctl watch'"
cat "$demo/signals.txt"
echo
echo "== the ledger ($demo/ledger), hash-chained JSON lines"
cut -c1-160 "$demo"/ledger/ledger-*.jsonl
echo
echo "== VerifyLedger"
target/debug/antibodyctl verify

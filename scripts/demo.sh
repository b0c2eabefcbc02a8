#!/usr/bin/env bash
# The demo: Antibody's main job end to end on a real systemd, without touching
# the host's own services.
#   1. boots a throwaway Debian 12 with systemd-nspawn (tests/testbed/; the
#      root filesystem is built once with debootstrap and cached),
#   2. installs this build's antibodyd as a Type=notify service there, with
#      the shipped bus policy and unit,
#   3. watches the agent's signals, fires a Watchdog alert with busctl that
#      restarts a real unit (sleeper.service),
#   4. prints the unit before and after, the plan, the signals, the journal
#      lines of the plan and the ledger's verification; then powers it off.
# Needs root and Debian 12. Without systemd-nspawn support, see
# scripts/demo-private-bus.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (it boots a container with systemd-nspawn)" >&2
    exit 1
fi
scripts/install-deps.sh
echo "== building antibodyd and antibodyctl"
cargo build --quiet --bins

tb=tests/testbed/testbed.sh
machine=antibody-demo
trap '$tb stop $machine' EXIT
inside() { $tb exec $machine "$@"; }

echo "== booting a throwaway Debian 12 (systemd-nspawn --boot --private-network)"
$tb boot $machine >/dev/null
$tb install $machine
inside systemctl --no-pager status antibody.service | head -n 6

inside sh -c 'antibodyctl watch > /run/antibody-signals.txt 2>&1 &'
sleep 0.3

echo
echo "== sleeper.service before"
inside systemctl show -p MainPID -p InvocationID sleeper.service

echo
echo "== DryRun: what restarting it would do (antibodyctl dry-run --source Watchdog --restart sleeper)"
inside antibodyctl dry-run --source Watchdog --description "sleeper stalled" --restart sleeper

echo
echo "== a Watchdog alert, with busctl"
echo "\$ busctl call org.vael.Antibody /org/vael/Antibody org.vael.Antibody SubmitAlert s '{\"source\":\"Watchdog\",...restart_service sleeper...}'"
reply=$(inside busctl --json=short call org.vael.Antibody /org/vael/Antibody org.vael.Antibody SubmitAlert s \
    '{"source":"Watchdog","severity":"high","description":"sleeper stalled","actions":[{"type":"restart_service","name":"sleeper"}]}')
echo "$reply"
plan=$(echo "$reply" | sed -E 's/.*"data":\["([^"]+)".*/\1/')
for _ in $(seq 100); do
    status=$(inside antibodyctl --json plan "$plan" | sed -E 's/.*"status":"([a-z_]+)".*/\1/')
    [[ $status == success || $status == failed ]] && break
    sleep 0.1
done

echo
echo "== sleeper.service after (a new MainPID and InvocationID)"
inside systemctl show -p MainPID -p InvocationID sleeper.service

echo
echo "== the plan (antibodyctl plan $plan)"
inside antibodyctl plan "$plan"

echo
echo "== a refused alert: dbus.service is protected"
inside busctl call org.vael.Antibody /org/vael/Antibody org.vael.Antibody SubmitAlert s \
    '{"source":"Manual","severity":"high","description":"never","actions":[{"type":"restart_service","name":"dbus.service"}]}' || true

sleep 0.3
echo
echo "== the signals (antibodyctl watch)"
inside cat /run/antibody-signals.txt

echo
echo "== the audit trail: journalctl -u antibody ANTIBODY_PLAN_ID=$plan"
inside journalctl -u antibody "ANTIBODY_PLAN_ID=$plan" --no-pager -o short-iso

echo
echo "== the ledger's hash chain (antibodyctl verify)"
inside antibodyctl verify

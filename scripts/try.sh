#!/usr/bin/env bash
# A system to try Antibody in, kept running: boots a Debian 12 container
# with systemd-nspawn (the testbed of the tests, on a private network),
# installs this build's antibodyd there as a Type=notify service with the
# shipped bus policy, and leaves it up. Units to act on: sleeper.service,
# slow-stop.service, failing.service.
#
#   scripts/try.sh          boot it (again: a fresh one)
#   scripts/try.sh shell    a root shell inside (exit leaves it running)
#   scripts/try.sh stop     power it off and delete it
#
# Needs root and Debian 12; the host's own services and firewall are not
# touched.
set -euo pipefail
cd "$(dirname "$0")/.."

machine=antibody-try
tb=tests/testbed/testbed.sh
if [ "$(id -u)" -ne 0 ]; then
    echo "try.sh: run as root (it boots a container with systemd-nspawn)" >&2
    exit 1
fi

case ${1:-boot} in
    shell)
        exec $tb exec $machine env TERM="${TERM:-xterm}" HOME=/root bash -l
        ;;
    stop)
        $tb stop $machine
        echo "$machine: stopped and deleted"
        ;;
    boot)
        scripts/install-deps.sh
        echo "== building antibodyd and antibodyctl"
        cargo build --quiet --bins
        echo "== booting $machine (systemd-nspawn --boot --private-network)"
        $tb boot $machine >/dev/null
        $tb install $machine
        $tb exec $machine systemctl --no-pager status antibody.service | head -n 4
        cat <<TXT

$machine is running, with antibody.service up. Inside it:

  scripts/try.sh shell
  antibodyctl status
  antibodyctl submit --source Watchdog --restart sleeper --wait
  antibodyctl submit --throttle sleeper.service:60 --wait
  antibodyctl list
  journalctl -u antibody -o short-iso

The README's busctl examples work there as written. When done:

  scripts/try.sh stop
TXT
        ;;
    *)
        echo "usage: scripts/try.sh [boot|shell|stop]" >&2
        exit 2
        ;;
esac

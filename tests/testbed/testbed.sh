#!/usr/bin/env bash
# The T4 testbed: a throwaway Debian 12 booted with systemd-nspawn, so tests
# meet a real systemd (PID 1 of the container), a real system bus and a real
# journald while the host's own services are never touched.
#
#   testbed.sh boot NAME       copy the cached root, boot it, wait for systemd
#   testbed.sh exec NAME CMD…  run CMD inside (all of the container's namespaces)
#   testbed.sh install NAME    copy in antibodyd/antibodyctl, the bus policy, the
#                              unit, the test units and a config; start antibody
#   testbed.sh root NAME       print the container's root directory on the host
#   testbed.sh stop NAME       power it off and delete its copy
#
# Binaries are taken from $ANTIBODY_BIN_DIR (default target/debug).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
RUN=${ANTIBODY_TESTBED_RUN:-/var/tmp/antibody-testbed}

die() { echo "testbed: $*" >&2; exit 1; }

machine_dir() { echo "$RUN/$1"; }

leader() {
    local pid
    pid=$(cat "$(machine_dir "$1")/leader" 2>/dev/null) || die "$1 is not booted"
    [[ -d /proc/$pid ]] || die "$1 is not running (its systemd, pid $pid, is gone)"
    echo "$pid"
}

in_machine() {
    local name=$1
    shift
    nsenter -t "$(leader "$name")" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

# The container's systemd: the descendant of nspawn named systemd.
find_leader() {
    local nspawn=$1 pid
    for pid in $(pgrep -P "$nspawn") $(for c in $(pgrep -P "$nspawn"); do pgrep -P "$c"; done); do
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == systemd ]]; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

boot() {
    local name=$1 dir root nspawn pid state
    dir=$(machine_dir "$name")
    root=$("$HERE/rootfs.sh")
    [[ ! -e $dir ]] || stop "$name" || true
    mkdir -p "$dir"
    cp -a --reflink=auto "$root" "$dir/root"
    # A machine id of its own: copies of one root would share one, and hosts
    # of a fleet are told apart by it (_MACHINE_ID in their journals).
    tr -d '-' </proc/sys/kernel/random/uuid >"$dir/root/etc/machine-id"
    # setsid: the container must not share the caller's process group, so a
    # test runner's signals do not reach it; stdin from /dev/null (CI has none).
    # Alone on a private network, or (TESTBED_ZONE=Z) on the zone Z's
    # bridge vz-Z with the other machines booted into it (interface host0).
    local network=--private-network
    [[ -z ${TESTBED_ZONE:-} ]] || network=--network-zone=$TESTBED_ZONE
    setsid systemd-nspawn -D "$dir/root" --boot --register=no --keep-unit \
        "$network" --machine="$name" </dev/null >"$dir/console.log" 2>&1 &
    nspawn=$!
    echo "$nspawn" >"$dir/nspawn"
    for _ in $(seq 1 200); do
        if pid=$(find_leader "$nspawn"); then
            echo "$pid" >"$dir/leader"
            break
        fi
        kill -0 "$nspawn" 2>/dev/null || { cat "$dir/console.log" >&2; die "systemd-nspawn exited"; }
        sleep 0.05
    done
    [[ -f $dir/leader ]] || die "no systemd appeared in $name"
    for _ in $(seq 1 300); do
        state=$(in_machine "$name" systemctl is-system-running 2>/dev/null || true)
        case $state in
            running|degraded) echo "$dir/root"; return 0 ;;
        esac
        sleep 0.05
    done
    in_machine "$name" systemctl --failed --no-pager >&2 || true
    die "$name did not finish booting (state: ${state:-unknown})"
}

install_agent() {
    local name=$1 root bin
    root=$(machine_dir "$name")/root
    bin=${ANTIBODY_BIN_DIR:-$PROJECT/target/debug}
    [[ -x $bin/antibodyd && -x $bin/antibodyctl ]] || die "build first: no antibodyd/antibodyctl in $bin"
    install -m 0755 "$bin/antibodyd" "$root/usr/sbin/antibodyd"
    install -m 0755 "$bin/antibodyctl" "$root/usr/bin/antibodyctl"
    install -D -m 0644 "$PROJECT/dbus/org.vael.Antibody.conf" "$root/usr/share/dbus-1/system.d/org.vael.Antibody.conf"
    install -D -m 0644 "$PROJECT/systemd/antibody.service" "$root/etc/systemd/system/antibody.service"
    install -D -m 0644 "$PROJECT/systemd/antibody.catalog" "$root/usr/lib/systemd/catalog/antibody.catalog"
    install -m 0644 "$HERE"/units/*.service "$root/etc/systemd/system/"
    mkdir -p "$root/etc/antibody"
    [[ -f $root/etc/antibody/antibody.toml ]] || install -m 0644 "$HERE/antibody.toml" "$root/etc/antibody/antibody.toml"
    in_machine "$name" journalctl --update-catalog
    in_machine "$name" busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig
    in_machine "$name" systemctl daemon-reload
    in_machine "$name" systemctl start sleeper.service slow-stop.service antibody.service
}

stop() {
    local name=$1 dir nspawn
    dir=$(machine_dir "$name")
    [[ -d $dir ]] || return 0
    nspawn=$(cat "$dir/nspawn" 2>/dev/null || true)
    if [[ -n $nspawn ]] && kill -0 "$nspawn" 2>/dev/null; then
        in_machine "$name" systemctl poweroff --no-block >/dev/null 2>&1 || true
        for _ in $(seq 1 100); do
            kill -0 "$nspawn" 2>/dev/null || break
            sleep 0.05
        done
        kill -0 "$nspawn" 2>/dev/null && kill -KILL -- "-$nspawn" 2>/dev/null || true
        sleep 0.1
    fi
    rm -rf "$dir"
}

cmd=${1:-}
[[ $# -ge 2 ]] || die "usage: testbed.sh boot|exec|install|root|stop NAME [CMD…]"
name=$2
[[ $name =~ ^[a-z0-9-]{1,40}$ ]] || die "machine names are lowercase letters, digits and dashes"
shift 2
case $cmd in
    boot) boot "$name" ;;
    exec) in_machine "$name" "$@" ;;
    install) install_agent "$name" ;;
    root) echo "$(machine_dir "$name")/root" ;;
    stop) stop "$name" ;;
    *) die "unknown command $cmd" ;;
esac

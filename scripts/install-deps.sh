#!/usr/bin/env bash
# Installs the system packages the demo and the tests use, on Debian 12.
# Needs root; safe to run again (apt skips what is already there).
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: run as root (it uses apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# dbus-daemon: the private test bus; dbus-bin: dbus-send; systemd: busctl;
# util-linux: setpriv (unprivileged callers), nsenter; procps, iproute2: test
# plumbing; systemd-container, debootstrap: the T4 testbed (tests/testbed/);
# nftables: nft for the T3 tests (always inside network namespaces they create).
# libsystemd-dev, pkg-config: antibodyctl reads journal files through
# libsystemd (verify --journal, fleet); systemd-journal-remote, openssl:
# the T4 fleet test's collector and uploaders, and their certificates.
# curl: the README's curl lines for the web bridge, run by tests/t2_web.rs;
# python3-venv: the venvs schemathesis and Playwright (PyPI) are installed
# into for it; chromium: the browser the dashboard test drives.
# apt's chatter (debconf's "delaying package configuration", progress) goes
# to a log shown only when apt fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
{
    apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends \
            dbus-daemon dbus-bin systemd util-linux procps iproute2 nftables ca-certificates \
            systemd-container debootstrap libsystemd-dev pkg-config systemd-journal-remote \
            openssl curl python3-venv chromium
} >"$log" 2>&1 || {
    echo "install-deps.sh: apt-get failed:" >&2
    cat "$log" >&2
    exit 1
}

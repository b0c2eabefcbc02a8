#!/usr/bin/env bash
# Builds (once) the Debian 12 root filesystem the T4 tests boot with
# systemd-nspawn, and prints its path. It is cached under
# /var/cache/antibody-testbed and rebuilt when missing or incomplete; each test
# boots a copy, so the cache is never changed by a test.
set -euo pipefail

CACHE=${ANTIBODY_TESTBED_CACHE:-/var/cache/antibody-testbed}
ROOT=$CACHE/rootfs
# Bump when the package list changes, so old caches are rebuilt.
STAMP_VALUE="bookworm minbase v3: systemd systemd-sysv dbus iproute2 nftables procps systemd-journal-remote curl"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need systemd-nspawn || ! need debootstrap; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq systemd-container debootstrap >/dev/null
fi

# One builder at a time: tests may ask for the root at once.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

if [[ -f $ROOT/.antibody-testbed && "$(cat "$ROOT/.antibody-testbed")" == "$STAMP_VALUE" ]]; then
    echo "$ROOT"
    exit 0
fi

# The machine's own mirror (it may have no other network): the first URIs
# line of its deb822 sources, else of sources.list. With none configured,
# debootstrap's own default is used (no host is named here).
mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | awk '{print $2}' || true)
if [[ -z $mirror ]]; then
    mirror=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}' || true)
fi

echo "testbed: building the Debian 12 root filesystem from ${mirror:-the default mirror of debootstrap} (about a minute, once)" >&2
mkdir -p "$CACHE"
rm -rf "$ROOT.new"
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,iproute2,nftables,procps,systemd-journal-remote,curl \
    bookworm "$ROOT.new" ${mirror:+"$mirror"} >"$CACHE/debootstrap.log" 2>&1 || {
    echo "testbed: debootstrap failed; the end of $CACHE/debootstrap.log:" >&2
    tail -n 30 "$CACHE/debootstrap.log" >&2
    exit 1
}
# A booted container needs nothing from the network; keep boots quick and quiet.
rm -f "$ROOT.new/etc/machine-id"
echo "antibody-testbed" >"$ROOT.new/etc/hostname"
echo "$STAMP_VALUE" >"$ROOT.new/.antibody-testbed"
rm -rf "$ROOT"
mv "$ROOT.new" "$ROOT"
echo "$ROOT"

#!/usr/bin/env bash
# Builds the Debian and RPM packages and checks them:
#   target/debian/antibody_<version>_<arch>.deb      (cargo-deb)
#   target/generate-rpm/antibody-<version>.<arch>.rpm (cargo-generate-rpm)
# then runs lintian and rpmlint (any error or warning fails; the overrides
# and filters are in packaging/debian/lintian-overrides and
# packaging/rpm/rpmlint.toml, each with its reason), checks that both
# packages hold every file of the install tree, and prints the rpm's
# scriptlets, requirements and file list.
#
# Installs what it needs (as root, on Debian 12): lintian, rpm, rpmlint
# with apt; cargo-deb and cargo-generate-rpm with `cargo install` (slow,
# about 5 minutes, so skipped when the pinned versions are already there).
set -euo pipefail
cd "$(dirname "$0")/.."
# The packages' asset lists (Cargo.toml) and tests/t4_package.rs name files
# under the project's own target/: build there whatever CARGO_TARGET_DIR a
# developer has set, or cargo-deb would find no binaries.
unset CARGO_TARGET_DIR

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

# Every path the packages must install (besides directories), the same for
# both formats except the zsh completion directory.
EXPECTED=(
    /usr/sbin/antibodyd
    /usr/bin/antibodyctl
    /usr/sbin/antibody-web
    /usr/lib/systemd/system/antibody.service
    /usr/lib/systemd/system/antibody-web.service
    /usr/lib/sysusers.d/antibody.conf
    /usr/lib/tmpfiles.d/antibody.conf
    /usr/lib/systemd/catalog/antibody.catalog
    /usr/share/dbus-1/system.d/org.vael.Antibody.conf
    /usr/share/dbus-1/interfaces/org.vael.Antibody.xml
    /usr/share/dbus-1/system-services/org.vael.Antibody.service
    /usr/share/polkit-1/actions/org.vael.antibody.policy
    /etc/antibody/antibody.toml
    /etc/antibody/web.toml
    /usr/share/man/man8/antibodyd.8.gz
    /usr/share/man/man8/antibody-web.8.gz
    /usr/share/man/man1/antibodyctl.1.gz
    /usr/share/man/man1/antibodyctl-submit.1.gz
    /usr/share/bash-completion/completions/antibodyctl
    /usr/share/fish/vendor_completions.d/antibodyctl.fish
    /usr/share/doc/antibody/examples/hot-patch.conf
    /usr/share/doc/antibody/examples/50-antibody.rules
    /usr/share/doc/antibody/examples/fleet/journal-remote.conf
    /usr/share/doc/antibody/examples/fleet/journal-upload.conf
    /usr/share/doc/antibody/examples/fleet/journal-upload-service.conf
    /usr/share/doc/antibody/examples/fleet/make-certificates.sh
)
EXPECTED_DEB=(/usr/share/zsh/vendor-completions/_antibodyctl)
EXPECTED_RPM=(/usr/share/zsh/site-functions/_antibodyctl)

step() { echo "== package: $*"; }
die() { echo "package.sh: $*" >&2; exit 1; }

install_tools() {
    local missing=()
    for tool in lintian rpm rpmlint; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        [[ $(id -u) -eq 0 ]] || die "needs root to apt-get install ${missing[*]}"
        step "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # apt's chatter to a log, shown only when it fails.
        local log=target/apt-package-tools.log
        mkdir -p target
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends lintian rpm rpmlint; } \
            >"$log" 2>&1 || { cat "$log" >&2; die "apt-get install ${missing[*]} failed"; }
    fi
    # Pinned: the [package.metadata.*] sections are written for these.
    if [[ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]]; then
        step "cargo install cargo-deb $CARGO_DEB_VERSION"
        cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION"
    fi
    if [[ "$(cargo generate-rpm --version 2>/dev/null)" != "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION" ]]; then
        step "cargo install cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"
        cargo install --locked --quiet "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION"
    fi
}

# Man pages of antibodyctl and completions come from its clap definition
# (hidden `antibodyctl man DIR`, `antibodyctl completions SHELL`), so they
# never drift from the CLI; antibodyd(8) is written by hand in packaging/man/.
generate_assets() {
    local ctl=target/dist/antibodyctl
    rm -rf target/assets
    mkdir -p target/assets/man target/assets/completions
    "$ctl" man target/assets/man
    cp packaging/man/antibodyd.8 packaging/man/antibody-web.8 target/assets/man/
    # Compressed as both lintian and rpmlint expect; -n: no name or time
    # in the header, so the same page gives the same bytes.
    gzip -9n target/assets/man/*.[18]
    "$ctl" completions bash >target/assets/completions/antibodyctl.bash
    "$ctl" completions zsh >target/assets/completions/_antibodyctl
    "$ctl" completions fish >target/assets/completions/antibodyctl.fish
}

# cargo-deb writes no md5sums control file; dpkg --verify (and debsums)
# need it to tell whether an installed file of this security agent was
# changed, so it is added as dh_md5sums would (conffiles excluded).
add_md5sums() {
    local deb=$1 work
    work=$(mktemp -d)
    dpkg-deb -R "$deb" "$work/pkg"
    (cd "$work/pkg" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print0 |
        sort -z | xargs -0 md5sum | sed 's|  \./|  |') >"$work/pkg/DEBIAN/md5sums"
    chmod 0644 "$work/pkg/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zxz -b "$work/pkg" "$deb" >/dev/null
    rm -rf "$work"
}

# check_contents LISTING PATH…: every PATH is in LISTING (one path a line).
check_contents() {
    local listing=$1 path missing=0
    shift
    for path in "$@"; do
        if ! grep -qxF "$path" "$listing"; then
            echo "package.sh: $path is missing from the package" >&2
            missing=1
        fi
    done
    return "$missing"
}

install_tools

# The dist profile: release without symbols (Cargo.toml). Both tools take
# the asset paths target/release/… from it.
step "cargo build --profile dist"
cargo build --profile dist --locked --bins --quiet
generate_assets

step "cargo deb"
rm -rf target/debian target/generate-rpm
cargo deb --profile dist --no-build --quiet
deb=$(ls target/debian/*.deb)
add_md5sums "$deb"

step "cargo generate-rpm"
cargo generate-rpm --profile dist
rpm_file=$(ls target/generate-rpm/*.rpm)

step "contents"
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -e 's|^\./|/|' -e 's|/$||' >target/debian/contents.txt
rpm -qlp "$rpm_file" >target/generate-rpm/contents.txt
check_contents target/debian/contents.txt "${EXPECTED[@]}" "${EXPECTED_DEB[@]}" ||
    die "the .deb lacks files (listed above)"
check_contents target/generate-rpm/contents.txt "${EXPECTED[@]}" "${EXPECTED_RPM[@]}" ||
    die "the .rpm lacks files (listed above)"
# grep without -q reads to the end: with -q it may exit at the first line,
# and the writer's SIGPIPE would fail the pipeline (pipefail) though the
# line was found; both packages have two conffiles since web.toml.
for conffile in /etc/antibody/antibody.toml /etc/antibody/web.toml; do
    dpkg-deb --info "$deb" conffiles | grep -xF "$conffile" >/dev/null ||
        die "$conffile is not a conffile of the .deb"
    rpm -qp --configfiles "$rpm_file" | grep -xF "$conffile" >/dev/null ||
        die "$conffile is not a %config file of the .rpm"
done

step "lintian $deb"
# Overrides ship in the package (/usr/share/lintian/overrides/antibody).
# Errors and warnings fail and are shown; lintian's note that it runs as
# root (packages are built as root here, in CI) is not a finding.
lintian --fail-on error,warning "$deb" 2> >(grep -v 'running with root privileges is not recommended' >&2)

step "rpmlint $rpm_file"
rpmlint --strict --config packaging/rpm/rpmlint.toml "$rpm_file"

step "rpm -qp --scripts --requires -l $rpm_file"
rpm -qp --scripts --requires -l "$rpm_file"

echo "package.sh: built and checked $deb and $rpm_file"

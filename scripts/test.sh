#!/usr/bin/env bash
# The whole test suite (DESIGN.md §7), as CI runs it: installs what it needs,
# then formatting, lints, and every test tier this build has. Run as root on
# Debian 12: the T2 tests start dbus-daemon with a system policy, switch to
# an unprivileged uid and mount a tmpfs; they fail (never skip) without root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== T4 testbed: the Debian 12 root filesystem (built once, then cached)"
tests/testbed/rootfs.sh
echo "== packages: .deb and .rpm built and checked (lintian, rpmlint, contents); T4 installs the .deb"
scripts/package.sh
echo "== cargo test (T0 pure, T1 engine, T2 private dbus-daemon, T4 booted systemd)"
rm -rf target/figures
cargo test --lib --bins --tests --no-fail-fast 2>&1 | tee target/test-output.txt
echo "== fuzzing: alert, ledger_scan, diff_apply, ${FUZZ_SECONDS:-60} s each (FUZZ_SECONDS for longer)"
scripts/fuzz.sh
echo "== figures of the long tests (crash loop, flood; target/figures/)"
cat target/figures/*.txt 2>/dev/null || echo "(none: did they run?)"
# A summary line scripts and CI can read.
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' target/test-output.txt

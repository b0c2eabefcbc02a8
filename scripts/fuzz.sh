#!/usr/bin/env bash
# Fuzzing with cargo fuzz (libFuzzer) on three targets (fuzz/fuzz_targets/):
#   alert        any SubmitAlert text: parsing and validation; an accepted
#                alert's normalized actions validate again to themselves
#   ledger_scan  a ledger segment of any bytes: the scanner never panics
#                and never calls a damaged chain intact
#   diff_apply   any file and any text diffy takes as a patch: the bounded
#                applier never panics
# Seeds are in fuzz/corpus/TARGET; what a run adds goes to
# target/fuzz-corpus/TARGET, never into the checkout.
#
#   scripts/fuzz.sh                   each target FUZZ_SECONDS (default 60: CI)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh a long run (an hour per target)
#   scripts/fuzz.sh alert             one target
#   FUZZ_SANITIZER=address …          with AddressSanitizer (default none:
#                                     the code is safe Rust; the build is
#                                     much faster without)
#
# A crash stops the run (exit 1): libFuzzer writes
# fuzz/artifacts/TARGET/crash-…; `cargo fuzz run TARGET FILE` replays it, and
# it becomes a regression test beside the code it broke.
#
# cargo fuzz wants nightly's -Z flags; the stable toolchain has what they use,
# so it runs under RUSTC_BOOTSTRAP=1 and needs no nightly download.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "== cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(alert ledger_scan diff_apply)

echo "== cargo fuzz build (sanitizer $sanitizer)"
cargo fuzz build -O --sanitizer "$sanitizer" 2>&1 | grep -v '^ *Compiling' || true
mkdir -p target/fuzz-logs
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds} s"
    mkdir -p "target/fuzz-corpus/$target"
    log=target/fuzz-logs/$target.log
    status=0
    cargo fuzz run -O --sanitizer "$sanitizer" "$target" \
        "target/fuzz-corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
    # libFuzzer's progress lines stay in the log; its summary is printed.
    grep -E '^(stat::number_of_executed_units|stat::new_units_added|Done )' "$log" || true
    if [[ $status -ne 0 ]]; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target failed (exit $status); the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
done

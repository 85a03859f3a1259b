#!/usr/bin/env bash
# Bounded fuzzing of Bothy's decoders, as CI runs it (docs/FUZZING.md).
#
# Each target in fuzz/fuzz_targets runs for BOTHY_FUZZ_SECONDS (default 15) from the
# committed corpus and past crashes; a crash fails the script and leaves its input in
# fuzz/artifacts/<target>/. New inputs go to a scratch directory, not the repo: the
# corpus changes only when someone minimises it on purpose.
#
# Needs a nightly toolchain (libFuzzer's instrumentation); without one it says so and
# succeeds, since `cargo test` replays the corpus on stable either way.
#
#   scripts/fuzz.sh                 every target
#   scripts/fuzz.sh vgic_mmio       one target
#   BOTHY_FUZZ_SECONDS=300 scripts/fuzz.sh exit_decode
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo/fuzz"

say() { printf 'fuzz: %s\n' "$*"; }

seconds="${BOTHY_FUZZ_SECONDS:-15}"
toolchain="${BOTHY_FUZZ_TOOLCHAIN:-nightly}"

if ! cargo +"$toolchain" --version >/dev/null 2>&1; then
    say "skipped: no $toolchain toolchain (rustup toolchain install nightly); the corpus is still replayed by cargo test"
    exit 0
fi
if ! cargo +"$toolchain" fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo +"$toolchain" install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

# No AddressSanitizer: bothy-core forbids `unsafe`, so it would find nothing, and it
# halves the executions per second. Overflow checks and debug assertions stay on
# (cargo fuzz's default), so arithmetic overflow is a crash. Build and run must use
# the same flags, or `run` rebuilds.
flags=(--sanitizer none)
say "building ${#targets[@]} target(s)"
build_log="$(mktemp)"
for t in "${targets[@]}"; do
    if ! cargo +"$toolchain" fuzz build "${flags[@]}" "$t" >"$build_log" 2>&1; then
        cat "$build_log"
        exit 1
    fi
done
rm -f "$build_log"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    seeds=("corpus/$t")
    [ -d "regressions/$t" ] && seeds+=("regressions/$t")
    log="$scratch/$t.log"
    # One process (no -jobs/-workers: the machines have two cores, shared); a slow
    # input is a bug too (-timeout), and so is runaway memory (-rss_limit_mb).
    if cargo +"$toolchain" fuzz run "${flags[@]}" "$t" "$scratch/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=0 >"$log" 2>&1; then
        say "$t: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)s, no crash"
    else
        failed+=("$t")
        tail -n 40 "$log"
        say "$t FAILED: the input is in fuzz/artifacts/$t/; reproduce with"
        say "  cd fuzz && cargo +$toolchain fuzz run ${flags[*]} $t artifacts/$t/<file>"
        say "  fix it, then move the file to fuzz/regressions/$t/ (docs/FUZZING.md)"
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    say "crashes in: ${failed[*]}"
    exit 1
fi
say "${#targets[@]} target(s) ran ${seconds}s each without a crash"

#!/usr/bin/env bash
# The whole Bothy test suite, as CI runs it: set-up, formatting, lints (host workspace
# and the hypervisor's own build), then unit tests and the QEMU integration tests.
#
# QEMU tests run one at a time (each test binary serializes them and cargo runs test
# binaries one after another); the machine may have only two cores.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

step() { printf '\n== %s\n' "$*"; }

step "set-up"
./scripts/setup.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if [ -f hyp/Cargo.toml ]; then
    step "hyp: cargo clippy --release -- -D warnings"
    (cd hyp && cargo clippy --release -- -D warnings)
fi

if [ -f hyp/Cargo.toml ]; then
    step "scripts/bounds-checks.sh (panic_bounds_check call sites in the EL2 binary only go down)"
    ./scripts/bounds-checks.sh
fi

step "cargo test --workspace"
cargo test --workspace

step "scripts/fuzz.sh (each fuzz target for a bounded time; skipped without nightly)"
./scripts/fuzz.sh

#!/usr/bin/env bash
# Counts the calls to core::panicking::panic_bounds_check in the release EL2 binary and
# fails if there are more than LIMIT. Each is a place where an index Bothy did not prove
# in range would stop the machine; those on the exit and scheduling paths and in the vGIC
# were made unreachable by construction (typed register numbers, masks, get(), iterators),
# and new code must not add more.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Only ever lower this number (when you remove bounds checks); never raise it.
LIMIT=21

(cd "$repo/hyp" && cargo build --release --quiet)
elf="$repo/hyp/target/aarch64-unknown-none-softfloat/release/bothy-hyp"
objdump=aarch64-linux-gnu-objdump
command -v "$objdump" >/dev/null || objdump=llvm-objdump
if ! command -v "$objdump" >/dev/null; then
    echo "error: no aarch64 objdump (./scripts/setup.sh installs binutils-aarch64-linux-gnu)" >&2
    exit 1
fi
count=$("$objdump" -d --no-show-raw-insn "$elf" | grep -cE 'bl\s.*panic_bounds_check' || true)
echo "panic_bounds_check call sites in the EL2 binary: $count (limit $LIMIT)"
if [ "$count" -gt "$LIMIT" ]; then
    echo "error: more bounds checks than the limit; make the new index provably in range" >&2
    echo "(a mask, get(), a typed index) rather than raising LIMIT" >&2
    exit 1
fi

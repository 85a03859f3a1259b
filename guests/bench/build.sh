#!/bin/sh
# Build the bench guest and flatten it into an arm64 Linux Image.
#   ELF:   target/aarch64-unknown-none/release/bench
#   Image: target/aarch64-unknown-none/release/bench.bin
# BENCH_LAYOUT=qemu|xen picks the fallback addresses (used only if the DTB cannot be read).
# Run on bare QEMU with -icount (instruction-exact ticks):  ./build.sh run [ITERS]
set -eu
cd "$(dirname "$0")"
cargo build --release --target aarch64-unknown-none
OUT=target/aarch64-unknown-none/release
aarch64-linux-gnu-objcopy -O binary "$OUT/bench" "$OUT/bench.bin"
echo "$OUT/bench.bin"
if [ "${1:-}" = run ]; then
    timeout 120 qemu-system-aarch64 -machine virt,gic-version=3 -cpu max,pauth-impdef=on \
        -smp 2 -m 256M -nographic -nic none -icount shift=4,align=off,sleep=off \
        -kernel "$OUT/bench.bin" -append "bench.iters=${2:-200}"
fi

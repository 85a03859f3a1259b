#!/bin/sh
# Build the selftest guest and flatten it into an arm64 Linux Image.
#   ELF:   target/aarch64-unknown-none/release/selftest
#   Image: target/aarch64-unknown-none/release/selftest.bin
# Run on bare QEMU (no hypervisor):  ./build.sh run
set -eu
cd "$(dirname "$0")"
cargo build --release --target aarch64-unknown-none
OUT=target/aarch64-unknown-none/release
aarch64-linux-gnu-objcopy -O binary "$OUT/selftest" "$OUT/selftest.bin"
echo "$OUT/selftest.bin"
if [ "${1:-}" = run ]; then
    timeout 30 qemu-system-aarch64 -machine virt,gic-version=3 -cpu max -smp 2 -m 256M \
        -nographic -nic none -kernel "$OUT/selftest.bin"
fi

#!/bin/sh
# Build the attacker guest and flatten it into an arm64 Linux Image.
#   ELF:   target/aarch64-unknown-none/release/attacker
#   Image: target/aarch64-unknown-none/release/attacker.bin
# Run it next to a victim under Bothy: see README.md.
set -eu
cd "$(dirname "$0")"
cargo build --release --target aarch64-unknown-none
OUT=target/aarch64-unknown-none/release
aarch64-linux-gnu-objcopy -O binary "$OUT/attacker" "$OUT/attacker.bin"
echo "$OUT/attacker.bin"

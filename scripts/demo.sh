#!/usr/bin/env bash
# The Bothy demo: set up what is missing, build, and boot one Linux VM (2 vCPUs) under
# Bothy on QEMU with the console on this terminal. Type `poweroff` in the guest to end
# it (or Ctrl-A x to quit QEMU). Extra arguments go to `bothy run`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
./scripts/setup.sh
echo "demo: cargo build --release -p bothy-cli"
cargo build --release -p bothy-cli
exec ./target/release/bothy run "$@"

#!/usr/bin/env bash
# The Bothy demo: set up what is missing, build, and boot two Linux VMs (2 vCPUs each)
# and the bare-metal self-test VM under Bothy, time-shared on QEMU's two CPUs, with the
# console on this terminal. Ctrl-] moves input between the guests, Ctrl-\ three times
# opens Bothy's prompt; type `poweroff` in each guest to end it (or Ctrl-A x to quit
# QEMU). Extra arguments go to `bothy run`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
./scripts/setup.sh
echo "demo: cargo build --release -p bothy-cli"
cargo build --release -p bothy-cli
exec ./target/release/bothy run "$@"

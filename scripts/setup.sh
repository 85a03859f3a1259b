#!/usr/bin/env bash
# Bothy set-up: install what is missing, fetch the guest kernel and busybox.
#
# Idempotent: every step checks first and skips what is already present, so
# demo.sh and test.sh can call it every time. apt-get update runs only when a
# package is actually missing. Downloads go to the cache (gitignored):
#   $BOTHY_CACHE, or <repo>/cache
#     debs/                 the .deb files as downloaded
#     linux/                linux-image-*-arm64 extracted (boot/vmlinuz-*, lib/modules/*)
#     busybox/              busybox-static extracted (bin/busybox)
#     busybox32/            busybox-static:armhf extracted (bin/busybox): a 32-bit
#                           program the Linux tests run under the 64-bit guest kernel
#     xen/                  xen-hypervisor-4.17-arm64 extracted (boot/xen-4.17-arm64),
#                           the third configuration of `bothy bench`
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${BOTHY_CACHE:-$repo/cache}"

say() { printf 'setup: %s\n' "$*"; }

# Run as root directly, otherwise through sudo (CI machines are root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# A Debian mirror can be caught mid-sync ("File has unexpected size ... Mirror
# sync in progress?"); apt-get update then exits 100 although every other index
# arrived. Retry with a pause, and if one index still fails, go on: the steps
# below resolve and download what they need and say so clearly if they cannot.
apt_retries=(-o Acquire::Retries=3)
apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        local attempt
        for attempt in 1 2 3 4; do
            say "apt-get update (attempt $attempt)"
            if as_root apt-get update -q "${apt_retries[@]}"; then
                apt_updated=1
                return 0
            fi
            if [ "$attempt" -lt 4 ]; then sleep $((attempt * 20)); fi
        done
        say "apt-get update reported errors four times; going on with the indexes it has" >&2
        apt_updated=1
    fi
}

# --- host packages -----------------------------------------------------------
need_pkgs=()
command -v qemu-system-aarch64 >/dev/null || need_pkgs+=(qemu-system-arm)
command -v dtc >/dev/null || need_pkgs+=(device-tree-compiler)
[ -f /usr/lib/u-boot/qemu_arm64/u-boot.bin ] || need_pkgs+=(u-boot-qemu)
# objdump for the EL2 binary (scripts/bounds-checks.sh counts its bounds checks).
command -v aarch64-linux-gnu-objdump >/dev/null || need_pkgs+=(binutils-aarch64-linux-gnu)
# The font of `bothy bench`'s PNG chart (loaded from the file; no fontconfig).
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_pkgs+=(fonts-dejavu-core)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    apt_update_once
    say "installing ${need_pkgs[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_retries[@]}" "${need_pkgs[@]}"
else
    say "qemu-system-aarch64, dtc and the DejaVu font present"
fi

# --- Rust targets --------------------------------------------------------------
if command -v rustup >/dev/null; then
    installed="$(cd "$repo" && rustup target list --installed)"
    for t in aarch64-unknown-none-softfloat aarch64-unknown-none; do
        if ! grep -qx "$t" <<<"$installed"; then
            say "rustup target add $t"
            (cd "$repo" && rustup target add "$t")
        fi
    done
    say "rust targets present"
else
    say "rustup not found: install Rust from https://rustup.rs first" >&2
    exit 1
fi

# --- guest artifacts from Debian's arm64 archive -----------------------------
for arch in arm64 armhf; do
    if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        say "dpkg --add-architecture $arch"
        as_root dpkg --add-architecture "$arch"
        apt_updated=0
        apt_update_once
    fi
done

mkdir -p "$cache/debs"

# The metapackage always points at the current point release; resolve it rather
# than hard-coding a version that the archive will drop.
resolve_kernel() {
    apt-cache depends linux-image-6.12-arm64:arm64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[^:]*\).*/\1/p' | head -n1
}
kpkg="$(resolve_kernel)"
if [ -z "$kpkg" ]; then
    apt_update_once
    kpkg="$(resolve_kernel)"
fi
if [ -z "$kpkg" ]; then
    say "cannot resolve linux-image-6.12-arm64:arm64 (is the arm64 architecture enabled?)" >&2
    exit 1
fi

# fetch PACKAGE DESTDIR [ARCH]: download the .deb (once) and extract it (once).
fetch() {
    local pkg="$1" dest="$2" arch="${3:-arm64}" deb
    deb="$(ls "$cache/debs/${pkg}"_*_"$arch".deb 2>/dev/null | head -n1 || true)"
    if [ -z "$deb" ]; then
        say "apt-get download $pkg:$arch -> $cache/debs/"
        if ! (cd "$cache/debs" && apt-get download -q "${apt_retries[@]}" "$pkg:$arch"); then
            apt_update_once
            (cd "$cache/debs" && apt-get download -q "${apt_retries[@]}" "$pkg:$arch")
        fi
        deb="$(ls "$cache/debs/${pkg}"_*_"$arch".deb | head -n1)"
    else
        say "cached $(basename "$deb")"
    fi
    if [ ! -f "$dest/.extracted-$(basename "$deb")" ]; then
        say "extracting $(basename "$deb") -> $dest"
        rm -rf "$dest"
        mkdir -p "$dest"
        dpkg-deb -x "$deb" "$dest"
        touch "$dest/.extracted-$(basename "$deb")"
    fi
}

fetch "$kpkg" "$cache/linux"
fetch busybox-static "$cache/busybox"
fetch busybox-static "$cache/busybox32" armhf
# Xen for `bothy bench` (dom0less, booted directly by QEMU): the package itself, no
# version pinned (the CLI resolves the candidate the same way when the cache is empty).
fetch xen-hypervisor-4.17-arm64 "$cache/xen"

say "guest kernel: $(ls "$cache"/linux/boot/vmlinuz-* | head -n1)"
say "busybox:      $cache/busybox/bin/busybox"
say "busybox32:    $cache/busybox32/bin/busybox (armhf)"
say "xen:          $(ls "$cache"/xen/boot/xen-*-arm64 | head -n1)"
say "done"

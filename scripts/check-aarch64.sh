#!/usr/bin/env bash
# Builds the workspace for 64-bit ARM Linux (aarch64-unknown-linux-gnu) with the default features (libjpeg-turbo
# compiled for ARM, with its NEON code), and runs the unit tests of the crates that hold the image codecs, the box
# and mask maths and the engine under qemu-user. Installs the Rust target (rustup), the cross compiler and qemu
# (apt) when they are missing. The ONNX Runtime tests are left out: they load an x86-64 library.
# Exit status 3 when the target or the tools cannot be installed here (nothing was checked); any other failure is
# the code's.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu

unavailable() {
    echo "check-aarch64: $1: nothing was checked" >&2
    exit 3
}
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" || unavailable "cannot install the Rust target $target"
fi
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; } \
        || unavailable "cannot install ${missing[*]}"
fi

export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"

cargo check --locked --workspace --all-targets --target "$target"
cargo test --locked --target "$target" -p lyrics-schemas -p lyrics-pipeline -p lyrics-operators --lib

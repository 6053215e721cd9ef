#!/usr/bin/env bash
# What building and running lyrics-prep needs beside the Rust toolchain, idempotently:
# - cmake and nasm: the default build compiles libjpeg-turbo (the JPEG codec) from the source the turbojpeg crate
#   bundles, with nasm for its SIMD. Installed from Debian/Ubuntu packages when missing (as root, or with sudo).
#   Without them, build the pure-Rust codecs instead: cargo run -p lyrics-prep --no-default-features -- demo
# - the ONNX Runtime library, into .ort/ (scripts/fetch-onnxruntime.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
    if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
        echo "prepare: installing ${missing[*]} (to build libjpeg-turbo)" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "prepare: ${missing[*]} missing: install them (apt, dnf, brew: cmake nasm) to build libjpeg-turbo," >&2
        echo "prepare: or build the pure-Rust codecs: cargo run -p lyrics-prep --no-default-features -- demo" >&2
        exit 1
    fi
fi

scripts/fetch-onnxruntime.sh

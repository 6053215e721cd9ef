#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the end-to-end tests against real services on
# 127.0.0.1 (moto, azurite, the fault proxy), which the tests start and stop themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.tools/node_modules/.bin:$PATH"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
    # The build without a C toolchain (pure-Rust JPEG codecs): the image and model operators' unit tests.
    cargo nextest run -p lyrics-operators --lib --locked --no-default-features
else
    cargo test --workspace --locked --no-fail-fast
    cargo test -p lyrics-operators --lib --locked --no-default-features
fi
cargo clippy -p lyrics-operators --lib --locked --no-default-features -- -D warnings

#!/usr/bin/env bash
# Installs what the test suite needs beside the Rust toolchain, idempotently: the Python packages of
# scripts/requirements-test.txt, azurite (Azure blob emulator) and playwright-core from npm into .tools/, Debian's
# chromium for the gallery tests, cmake, nasm and the ONNX Runtime library (scripts/prepare.sh, the library
# into .ort/), and the real ISNet weights and test image into .models/.
# Quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# qwen-vl-utils imports torch, which the tests do without: it is looked up, not imported.
if ! python3 -c "import moto, boto3, pyarrow, duckdb, polars, datasets, PIL, azure.storage.blob, onnxruntime, onnx, tokenizers, ray, transformers, importlib.util as u; assert u.find_spec('qwen_vl_utils')" 2>/dev/null \
    || ! command -v moto_server >/dev/null || ! command -v ray >/dev/null; then
    echo "setup: installing Python test packages" >&2
    python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
    # Console scripts the tests call (moto_server, ray) must be on PATH under pyenv too.
    if command -v pyenv >/dev/null; then pyenv rehash || true; fi
fi

if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
    echo "setup: installing azurite 3.35.0 into .tools/" >&2
    mkdir -p .tools
    npm install --silent --no-audit --no-fund --prefix .tools azurite@3.35.0 >/dev/null
fi

# The gallery tests open pages in Debian's Chromium through playwright-core (which downloads no browser).
if ! command -v chromium >/dev/null; then
    echo "setup: installing Debian's chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d .tools/node_modules/playwright-core ]; then
    echo "setup: installing playwright-core 1.65.1 into .tools/" >&2
    mkdir -p .tools
    npm install --silent --no-audit --no-fund --prefix .tools playwright-core@1.65.1 >/dev/null
fi

scripts/prepare.sh
scripts/fetch-isnet.sh

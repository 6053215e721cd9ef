#!/usr/bin/env bash
# Exports the sample corpus's instruction data in ms-swift's grounding format (`export --format swift`) and reads
# it with ms-swift's own code: its dataset loader, and its Qwen2-VL, Qwen2.5-VL, Qwen3-VL and InternVL2.5
# templates, whose boxes must read back as the exported ones (tests/reference/swift_templates.py). ms-swift needs
# torch, so it is installed into its own venv (target/swift-venv, about 6.5 GB, kept for the next run) from
# scripts/requirements-swift.txt. Exit status 3 when it cannot be installed here (nothing was checked); any other
# failure is the code's.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/swift-venv

unavailable() {
    echo "check-swift: $1: nothing was checked" >&2
    exit 3
}
if ! "$venv/bin/python" -c "import swift, torchvision, qwen_vl_utils" 2>/dev/null; then
    python3 -m venv "$venv" || unavailable "cannot create a venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r scripts/requirements-swift.txt \
        || unavailable "cannot install scripts/requirements-swift.txt"
fi

if [ ! -d demo/corpus ]; then
    cargo run --locked -q -p lyrics-prep -- demo
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
lyrics() { cargo run --locked -q -p lyrics-prep -- "$@"; }
lyrics run --input demo/corpus --output "$work/out" --models examples/models/fixtures.toml --progress off
lyrics export --output "$work/out" --format swift --to "$work/swift"
test -s "$work/swift/swift.jsonl" || { echo "check-swift: the export wrote no conversations" >&2; exit 1; }
# One InternVL tile per image: the tiling does not move InternVL's boxes, and the full 13 take minutes.
MAX_NUM=1 "$venv/bin/python" tests/reference/swift_templates.py "$work/swift"

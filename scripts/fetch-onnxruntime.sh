#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that the refiner loads at run time, from the PyPI wheel, into .ort/.
#   scripts/fetch-onnxruntime.sh          CPU build (onnxruntime 1.32.0): .ort/libonnxruntime.so
#   scripts/fetch-onnxruntime.sh --gpu    CUDA build (onnxruntime-gpu 1.31.1, needs CUDA 13 + cuDNN 9): .ort-gpu/
# cargo run/test find it through .cargo/config.toml; elsewhere set ORT_DYLIB_PATH to the .so.
set -euo pipefail
cd "$(dirname "$0")/.."

package=onnxruntime version=1.32.0 dest=.ort
if [ "${1:-}" = "--gpu" ]; then
    package=onnxruntime-gpu version=1.31.1 dest=.ort-gpu
fi
if [ -e "$dest/libonnxruntime.so" ]; then
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-onnxruntime: downloading the $package $version wheel" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 "$package==$version" -d "$tmp"
python3 - "$tmp" "$dest" "$version" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest, version = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    # Keep the wheel's capi/ folder whole: execution providers are looked up beside the library.
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime") and ".so" in base:
            target = os.path.join(dest, os.path.basename(name))
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
os.symlink(f"libonnxruntime.so.{version}", os.path.join(dest, "libonnxruntime.so"))
PY
echo "fetch-onnxruntime: $dest/libonnxruntime.so" >&2

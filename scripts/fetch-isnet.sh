#!/usr/bin/env bash
# Fetches real weights and a real image with ground truth, for the salient_crop segmenter's test and benchmark:
# - ISNet (medium, fp16) from npm @imgly/background-removal-data 1.4.5, rebuilt from its chunks by
#   dist/resources.json: .models/isnet_medium.onnx (the package is AGPL-3.0; the model MIT, per its
#   ThirdPartyLicenses.json);
# - imgaug 0.4.0's quokka.jpg and quokka_annotations.json (a box and a polygon), from its PyPI wheel: .models/quokka/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -s .models/isnet_medium.onnx ]; then
    echo "fetch-isnet: downloading @imgly/background-removal-data 1.4.5 from npm" >&2
    (cd "$tmp" && npm pack --silent @imgly/background-removal-data@1.4.5 >/dev/null && tar xzf imgly-background-removal-data-1.4.5.tgz)
    python3 - "$tmp/package/dist" .models/isnet_medium.onnx <<'PY'
import json, os, sys
dist, target = sys.argv[1:]
entry = json.load(open(os.path.join(dist, "resources.json")))["/models/medium"]
with open(target + ".partial", "wb") as out:
    for chunk in entry["chunks"]:
        start, end = chunk["offsets"]
        data = open(os.path.join(dist, chunk["hash"]), "rb").read()
        if len(data) != end - start:
            sys.exit(f"chunk {chunk['hash']} has {len(data)} bytes, expected {end - start}")
        out.write(data)
if os.path.getsize(target + ".partial") != entry["size"]:
    sys.exit("rebuilt model has the wrong size")
os.rename(target + ".partial", target)
PY
fi

if [ ! -s .models/quokka/quokka.jpg ]; then
    echo "fetch-isnet: downloading the imgaug 0.4.0 wheel for quokka.jpg" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps imgaug==0.4.0 -d "$tmp"
    mkdir -p .models/quokka
    python3 - "$tmp" .models/quokka <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1:]
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "imgaug-*.whl"))[0]) as z:
    for name in ("imgaug/quokka.jpg", "imgaug/quokka_annotations.json"):
        with open(os.path.join(dest, os.path.basename(name)), "wb") as out:
            out.write(z.read(name))
PY
fi

#!/usr/bin/env python3
"""What the inference thread does besides `session.run`, per box, for each public export contract: the tiny
real-architecture graphs of examples/models/real-tiny (one models file per contract) on copies of its photos of
mixed shapes (64 px to 4000 px). From the run's JSON summary: the inference stage's busy time, the summed
`session.run` time inside it, and their difference per detected box (target <= 1 ms: embeddings bound once per
image, masks leaving the thread as low-resolution logits that the CPU pool upsamples and RLE-encodes); and of that
difference, the inference thread's own CPU time (`refine.infer_cpu_outside_run`): the work it does between runs,
apart from the time it waits for a core that the other stages' threads hold. Also end-to-end wall time against the
summed `session.run` time, and peak RSS.

    python3 bench/refiner_contracts.py --binary target/release/lyrics-prep --copies 4

`--binary` may be given more than once (builds side by side): each contract then runs on each binary in turn,
`--rounds` times, interleaved, so that the machine's slow spells fall on all of them.

`--full DIR` adds a run on full-size graphs exported by `scripts/export_real_models.py --size full --out DIR --only
ram gdino sam --no-reference` (RAM's Swin-L image side, Grounding DINO-T in the HF contract, SAM ViT-B with the
official decoder), at most 10 boxes per image (`detector.max_detections`: random weights pass almost every query).

Needs the ONNX Runtime library (scripts/fetch-onnxruntime.sh). With random weights the graphs find ~15-20 boxes per
photo, so the per-box figures are measured on realistic box counts; the graphs' compute is tiny, which is the point:
what is left is the refiner's own work around the sessions.
"""
import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from refiner_full import full_models_file

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples/models/real-tiny"
CONTRACTS = ["hf.toml", "idea.toml", "hf_sam.toml", "hf_sam_boxes.toml", "sam2.toml"]


def run(binary, photos, out, models):
    started = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "peak_kb %M", binary, "run", "--input", str(photos), "--format", "images",
         "--output", str(out), "--models", str(models), "--progress", "off", "--summary", "json"],
        capture_output=True, text=True, check=True)
    wall = time.monotonic() - started
    peak = int(re.search(r"peak_kb (\d+)", proc.stderr).group(1)) / 1024
    boxes = subprocess.run([binary, "sql", "--output", str(out), "SELECT count(*) AS n FROM objects"],
                           capture_output=True, text=True, check=True).stdout
    n = int(re.findall(r"\|\s*(\d+)\s*\|", boxes)[-1])
    return wall, peak, n, json.loads(proc.stdout)["busy_s"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", action="append", help="a lyrics-prep binary (repeat to compare builds)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--copies", type=int, default=4, help="copies of the six photos")
    parser.add_argument("--full", type=Path, help="a folder of --size full graphs")
    args = parser.parse_args()
    binaries = args.binary or [str(ROOT / "target/release/lyrics-prep")]
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for k in range(args.copies):
            for p in sorted((TINY / "photos").glob("*.png")):
                shutil.copy(p, photos / f"{p.stem}-{k}.png")
        images = len(list(photos.glob("*.png")))
        print(f"{images} photos (64 px to 4000 px), {', '.join(binaries)}, {args.rounds} round(s)")
        print("| contract | binary | boxes | wall s | session.run s | infer busy s (load wait excluded) | outside run per box | "
              "of which the thread's CPU | wall / session.run | peak RSS |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        runs = [(c, TINY / c, photos) for c in CONTRACTS]
        if args.full:
            full = full_models_file(args.full, Path(tmp) / "full.toml")
            # The six photos once: a full-size Grounding DINO takes seconds per image on a CPU.
            runs.append(("full size, the six photos once (hf.toml, ≤ 10 boxes)", full, TINY / "photos"))
        for _ in range(args.rounds):
            for contract, models, folder in runs:
                for binary in binaries:
                    row(binary, contract, models, folder, Path(tmp) / "out")


def row(binary, contract, models, folder, out):
    shutil.rmtree(out, ignore_errors=True)
    wall, peak, boxes, busy = run(binary, folder, out, models)
    session = busy.get("refine.session_run", 0.0)
    # The inference stage's first batch waits for the sessions to load; that is not work around them.
    infer = busy.get("refine.infer", 0.0) - busy.get("refine.load_wait", 0.0)
    per_box = (infer - session) / max(boxes, 1) * 1000
    cpu_per_box = busy.get("refine.infer_cpu_outside_run", float("nan")) / max(boxes, 1) * 1000
    print(f"| {contract} | {Path(binary).name} | {boxes} | {wall:.2f} | {session:.2f} | {infer:.2f} | "
          f"{per_box:.2f} ms | {cpu_per_box:.2f} ms | {wall / max(session, 1e-9):.2f} | {peak:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()

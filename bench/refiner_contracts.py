#!/usr/bin/env python3
"""What the inference thread does besides `session.run`, per box, for each public export contract: the tiny
real-architecture graphs of examples/models/real-tiny (one models file per contract) on copies of its photos of
mixed shapes (64 px to 4000 px). From the run summary: the inference stage's busy time, the summed `session.run`
time inside it, and their difference per detected box (target <= 1 ms: embeddings bound once per image, masks
leaving the thread as low-resolution logits that the CPU pool upsamples and RLE-encodes). Also end-to-end wall time
against the summed `session.run` time, and peak RSS.

    python3 bench/refiner_contracts.py --binary target/release/lyrics-prep --copies 4

`--full DIR` adds a run on full-size graphs exported by `scripts/export_real_models.py --size full --out DIR --only
ram gdino sam --no-reference` (RAM's Swin-L image side, Grounding DINO-T in the HF contract, SAM ViT-B with the
official decoder), at most 10 boxes per image (`detector.max_detections`: random weights pass almost every query).

Needs the ONNX Runtime library (scripts/fetch-onnxruntime.sh). With random weights the graphs find ~15-20 boxes per
photo, so the per-box figures are measured on realistic box counts; the graphs' compute is tiny, which is the point:
what is left is the refiner's own work around the sessions.
"""
import argparse
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


def busy(summary, stage):
    m = re.search(rf"{re.escape(stage)} ([0-9.]+) s", summary)
    return float(m.group(1)) if m else 0.0


def run(binary, photos, out, models):
    started = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "peak_kb %M", binary, "run", "--input", str(photos), "--format", "images",
         "--output", str(out), "--models", str(models), "--progress", "off"],
        capture_output=True, text=True, check=True)
    wall = time.monotonic() - started
    peak = int(re.search(r"peak_kb (\d+)", proc.stderr).group(1)) / 1024
    boxes = subprocess.run([binary, "sql", "--output", str(out), "SELECT count(*) AS n FROM objects"],
                           capture_output=True, text=True, check=True).stdout
    n = int(re.findall(r"\|\s*(\d+)\s*\|", boxes)[-1])
    return wall, peak, n, proc.stderr


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=str(ROOT / "target/release/lyrics-prep"))
    parser.add_argument("--copies", type=int, default=4, help="copies of the six photos")
    parser.add_argument("--full", type=Path, help="a folder of --size full graphs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for k in range(args.copies):
            for p in sorted((TINY / "photos").glob("*.png")):
                shutil.copy(p, photos / f"{p.stem}-{k}.png")
        images = len(list(photos.glob("*.png")))
        print(f"{images} photos (64 px to 4000 px), {args.binary}")
        print("| contract | boxes | wall s | session.run s | infer busy s (load wait excluded) | outside run per box | wall / session.run | peak RSS |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        runs = [(c, TINY / c, photos) for c in CONTRACTS]
        if args.full:
            full = full_models_file(args.full, Path(tmp) / "full.toml")
            # The six photos once: a full-size Grounding DINO takes seconds per image on a CPU.
            runs.append(("full size, the six photos once (hf.toml, ≤ 10 boxes)", full, TINY / "photos"))
        for contract, models, folder in runs:
            out = Path(tmp) / f"run-{len(contract)}-{Path(models).stem}"
            wall, peak, boxes, summary = run(args.binary, folder, out, models)
            infer, session = busy(summary, "refine.infer"), busy(summary, "refine.session_run")
            # The inference stage's first batch waits for the sessions to load; that is not work around them.
            infer -= busy(summary, "refine.load_wait")
            per_box = (infer - session) / max(boxes, 1) * 1000
            print(f"| {contract} | {boxes} | {wall:.2f} | {session:.2f} | {infer:.2f} | {per_box:.2f} ms | "
                  f"{wall / max(session, 1e-9):.2f} | {peak:.0f} MiB |")


if __name__ == "__main__":
    main()

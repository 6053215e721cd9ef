#!/usr/bin/env python3
"""Can the CPUs of a GPU host keep its device fed? The CPU time of each stage around the refiner's sessions, per
image and per object, for every public export contract (the tiny real-architecture graphs of
examples/models/real-tiny, whose own compute is negligible: what is measured is lyrics-prep's work around them).

    python3 bench/refiner_cpu.py --binary target/release/lyrics-prep --photos 60

Photos of 640-1024 px (mixed shapes, JPEG q90) are made once under a temporary folder. Each contract runs
`lyrics-prep run --summary json`; the summary's `<stage>.cpu` figures are the pool threads' own CPU time on the
stage's items (thread clocks, summed), so they do not depend on the cores the machine has nor on what else ran:
decode (JPEG decode, orientation, the stored re-encode), refine.prepare (each model's resize and normalization),
refine.finish (mask upsampling and RLE, phrase mapping), text (grounded text). "Feeds" is 16 cores' worth of
images a second at decode + prepare + finish: what a 16-core host could hand its device.

`--binary` may be given more than once (builds side by side), `--rounds` interleaves them.
"""
import argparse
import json
import random
import re
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples/models/real-tiny"
CONTRACTS = ["hf.toml", "idea.toml", "hf_sam.toml", "hf_sam_boxes.toml", "sam2.toml"]
STAGES = ["decode.cpu", "refine.prepare.cpu", "refine.finish.cpu", "text.cpu"]


def photos(folder: Path, n: int):
    rng = random.Random(7)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = rng.randint(640, 1024), rng.randint(640, 1024)
        image = Image.new("RGB", (w, h), (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)))
        draw = ImageDraw.Draw(image)
        for _ in range(40):
            x, y = rng.randint(0, w - 1), rng.randint(0, h - 1)
            box = [x, y, min(w - 1, x + rng.randint(20, w // 2)), min(h - 1, y + rng.randint(20, h // 2))]
            fill = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        image.save(folder / f"photo-{i:03d}.jpg", quality=90)


def run(binary: str, folder: Path, out: Path, models: Path):
    proc = subprocess.run(
        [binary, "run", "--input", str(folder), "--format", "images", "--output", str(out), "--models",
         str(models), "--progress", "off", "--summary", "json"],
        capture_output=True, text=True, check=True)
    summary = json.loads(proc.stdout)
    objects = subprocess.run([binary, "sql", "--output", str(out), "SELECT count(*) AS n FROM objects"],
                             capture_output=True, text=True, check=True).stdout
    n_objects = int(re.findall(r"\|\s*(\d+)\s*\|", objects)[-1])
    return summary["rows"]["samples"], n_objects, summary["busy_s"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", action="append", help="a lyrics-prep binary (repeat to compare builds)")
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--contract", action="append", help="models files of real-tiny (default: all)")
    args = parser.parse_args()
    binaries = args.binary or [str(ROOT / "target/release/lyrics-prep")]
    contracts = args.contract or CONTRACTS
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        photos(folder, args.photos)
        print(f"{args.photos} photos of 640-1024 px; CPU ms per image (thread clocks), {args.rounds} round(s)\n")
        print("| contract | binary | objects/image | decode | prepare | finish | finish per object | text "
              "| decode+prepare+finish | feeds (16 cores) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for round_ in range(args.rounds):
            for contract in contracts:
                for b, binary in enumerate(binaries):
                    out = Path(tmp) / f"out-{round_}-{contract}-{b}"
                    images, objects, busy = run(binary, folder, out, TINY / contract)
                    ms = {s: busy.get(s, 0.0) * 1000 / max(images, 1) for s in STAGES}
                    around = ms["decode.cpu"] + ms["refine.prepare.cpu"] + ms["refine.finish.cpu"]
                    per_object = busy.get("refine.finish.cpu", 0.0) * 1000 / max(objects, 1)
                    print(f"| {contract} | {Path(binary).name} | {objects / max(images, 1):.1f} "
                          f"| {ms['decode.cpu']:.1f} | {ms['refine.prepare.cpu']:.1f} | {ms['refine.finish.cpu']:.1f} "
                          f"| {per_object:.2f} | {ms['text.cpu']:.1f} | {around:.1f} "
                          f"| {16000 / max(around, 1e-9):.0f} |", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The refiner on full-size graphs, 50 photos of mixed shapes, side by side in one run: lyrics-prep end to end
against the summed `session.run` time of its own calls (target <= 1.05), and against a Python loop of the
Grounded-SAM demo's structure on the same graphs and photos (tests/reference/refiner_reference.py: Pillow, numpy,
onnxruntime, one image after another), with peak RSS of each.

    python3 bench/refiner_full.py --binary target/release/lyrics-prep --full bench-data/real-full --photos 50

It also prints the inference stage's time outside `session.run`, an image and a box, and of that the inference
thread's own CPU time (the run summary's `refine.infer_cpu_outside_run`); `--no-loop` runs lyrics-prep alone.

The graphs are `scripts/export_real_models.py --size full --out DIR --only ram gdino sam --no-reference`: RAM's
Swin-L image side with its 4,585-tag head (logits, RAM's per-class thresholds), Grounding DINO-T in the HF contract
(traced at 800x1066, so every image is stretched to it, as that export's callers do), SAM ViT-B with the official
multimask decoder. With random weights almost every query passes, so both sides keep the best 10 boxes after NMS
(`detector.max_detections = 10`, the loop's `--max-detections 10`): 10 boxes an image reach the segmenter. The
photos are the six of examples/models/real-tiny (64 px to 4000x1000, one EXIF-rotated) and crops and resizes of
them to other shapes, written once under --work.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples/models/real-tiny"
SHAPES = [(640, 480), (480, 640), (1024, 1024), (1920, 1080), (800, 1200), (3000, 2000), (320, 240), (1200, 300),
          (2048, 1536), (500, 500), (720, 1280)]


def photos(folder: Path, count: int) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(TINY.glob("photos/*.png"))
    out = []
    for i, src in enumerate(sources[:count]):
        target = folder / f"{i:03d}-{src.stem}.png"
        if not target.exists():
            target.write_bytes(src.read_bytes())
        out.append(target)
    for i in range(len(out), count):
        target = folder / f"{i:03d}.jpg"
        if not target.exists():
            image = ImageOps.exif_transpose(Image.open(sources[i % len(sources)])).convert("RGB")
            w, h = SHAPES[i % len(SHAPES)]
            ImageOps.fit(image, (w, h), Image.BICUBIC, centering=((i * 0.37) % 1, (i * 0.61) % 1)).save(target, quality=92)
        out.append(target)
    return out


def full_models_file(full: Path, target: Path) -> Path:
    """real-tiny's hf.toml pointed at the full-size graphs in `full`, keeping the best 10 boxes an image."""
    text = (TINY / "hf.toml").read_text().replace("tokenizer = ", "max_detections = 10\ntokenizer = ")
    for name in ["ram_logits.onnx", "gdino_hf.onnx", "sam_encoder.onnx", "sam_decoder.onnx", "tokenizer.json"]:
        text = text.replace(f'"{name}"', f'"{(full / name).resolve()}"')
    for name in ["ram_tag_list.txt", "ram_tag_list_threshold.txt"]:
        text = text.replace(f'"{name}"', f'"{(TINY / name).resolve()}"')
    target.write_text(text)
    return target


def timed(argv, env=None):
    """Wall seconds, peak RSS in MiB, stderr and stdout of `argv`."""
    start = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "peak_kb %M", *argv], capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{proc.stderr[-3000:]}")
    peak = int(re.search(r"peak_kb (\d+)", proc.stderr).group(1)) / 1024
    return wall, peak, proc.stderr, proc.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/release/lyrics-prep"))
    ap.add_argument("--full", type=Path, required=True, help="a folder of --size full graphs")
    ap.add_argument("--photos", type=int, default=50)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-data/refiner-full")
    ap.add_argument("--no-loop", action="store_true", help="lyrics-prep only, without the Python loop")
    a = ap.parse_args()
    full = a.full.resolve()
    work = a.work.resolve()
    images = photos(work / "photos", a.photos)
    n = len(images)

    models = full_models_file(full, work / "full.toml")
    # The loop's layout of the same graphs.
    loop_models = work / "loop-models"
    loop_models.mkdir(exist_ok=True)
    for link, target in [("tagger.onnx", full / "ram_logits.onnx"), ("detector_hf.onnx", full / "gdino_hf.onnx"),
                         ("sam_encoder.onnx", full / "sam_encoder.onnx"), ("sam_decoder.onnx", full / "sam_decoder.onnx"),
                         ("tokenizer.json", full / "tokenizer.json"), ("tags.txt", TINY / "ram_tag_list.txt")]:
        if not (loop_models / link).exists():
            (loop_models / link).symlink_to(target.resolve())

    out = work / "out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    print(f"{n} photos, {a.binary}, graphs in {full}", flush=True)
    wall, peak, _, stdout = timed([a.binary, "run", "--input", str(work / "photos"), "--format", "images",
                                   "--output", str(out), "--models", str(models), "--progress", "off",
                                   "--summary", "json"])
    busy = json.loads(stdout)["busy_s"]
    session = busy["refine.session_run"]
    # The first batch's wait for the sessions to load is not time around them.
    infer = busy["refine.infer"] - busy.get("refine.load_wait", 0.0)
    cpu_outside = busy.get("refine.infer_cpu_outside_run", float("nan"))
    boxes = subprocess.run([a.binary, "sql", "--output", str(out), "--format", "csv", "SELECT count(*) FROM objects"],
                           capture_output=True, text=True, check=True).stdout.split()[-1]
    print(f"lyrics-prep: {wall:.1f} s, session.run {session:.1f} s, inference stage {infer:.1f} s, {boxes} boxes", flush=True)

    nb = max(int(boxes), 1)
    print(f"inference stage outside session.run: {(infer - session) / n * 1000:.1f} ms an image, "
          f"{(infer - session) / nb * 1000:.2f} ms a box; of which the inference thread's own CPU time: "
          f"{cpu_outside / n * 1000:.1f} ms an image, {cpu_outside / nb * 1000:.2f} ms a box", flush=True)
    if a.no_loop:
        return

    loop_out = work / "loop.json"
    loop_wall, loop_peak, loop_err, _ = timed([sys.executable, str(ROOT / "tests/reference/refiner_reference.py"),
                                            str(loop_models), "--export", "hf", "--max-detections", "10",
                                            "--thresholds", str(TINY / "ram_tag_list_threshold.txt"),
                                            "--session-times", str(loop_out), *map(str, images)])
    loop_session = float(re.search(r"session_run_s ([0-9.]+)", loop_err).group(1))
    loop_boxes = sum(len(r["objects"]) for r in json.loads(loop_out.read_text()))

    print("\n| | wall s | summed session.run s | wall / session.run | images/s | boxes | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| lyrics-prep run | {wall:.1f} | {session:.1f} | **{wall / session:.3f}** | {n / wall:.3f} | {boxes} | {peak:.0f} MiB |")
    print(f"| Python loop (Grounded-SAM structure) | {loop_wall:.1f} | {loop_session:.1f} | {loop_wall / loop_session:.3f} | "
          f"{n / loop_wall:.3f} | {loop_boxes} | {loop_peak:.0f} MiB |")
    print(f"\nlyrics-prep / Python loop, wall: {wall / loop_wall:.3f}")


if __name__ == "__main__":
    main()

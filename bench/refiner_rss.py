#!/usr/bin/env python3
"""Peak RSS of a refining run against the number of detections per image: the same large images (4000x3000 by
default) through the fixture tagger and SAM, with a detector that finds exactly N boxes in every image, for each N
given (default 10 and 100). Prints a table; the target is the largest N within 1.2x the peak RSS of the smallest.

    python3 bench/refiner_rss.py --binary target/release/lyrics-prep --images 8 --detections 10,100

The detector is generated here: a graph with the IDEA / X-AnyLabeling Grounding DINO signature whose outputs are
constants, N non-overlapping boxes on a grid scoring high on the prompt's first word, and every other query low, so
that only the number of boxes (and so of SAM decoder runs and masks) differs between the runs. The tagger and SAM are
the fixtures of examples/models (every image has a red rectangle, so the tagger's prompt is `red.`).

Needs python3 with numpy, onnx and pillow, and the ONNX Runtime library (scripts/fetch-onnxruntime.sh).
"""
import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
QUERIES, TOKENS, GRID = 900, 256, 12


def detector(n, path):
    """An IDEA-contract detector whose `logits` and `boxes` are constants: queries 0..n-1 are boxes of a 12x12 grid
    (no two overlap, so NMS keeps them all) scoring logit 10 on token 1; every other logit is -10."""
    if n > GRID * GRID:
        sys.exit(f"at most {GRID * GRID} detections")
    logits = np.full((1, QUERIES, TOKENS), -10.0, np.float32)
    boxes = np.zeros((1, QUERIES, 4), np.float32)
    boxes[0, :, 2:] = 0.01
    boxes[0, :, :2] = 0.5
    cell = 1.0 / GRID
    for q in range(n):
        logits[0, q, 1] = 10.0 - q * 1e-3  # distinct scores: the order is the same on every run
        row, col = divmod(q, GRID)
        boxes[0, q] = [(col + 0.5) * cell, (row + 0.5) * cell, cell * 0.8, cell * 0.8]
    inputs = [
        helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "h", "w"]),
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "n"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, [1, "n"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "n"]),
        helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [1, "n"]),
        helper.make_tensor_value_info("text_token_mask", TensorProto.BOOL, [1, "n", "n"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, QUERIES, TOKENS]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, QUERIES, 4]),
    ]
    nodes = [
        helper.make_node("Constant", [], ["logits"], value=numpy_helper.from_array(logits, "logits_value")),
        helper.make_node("Constant", [], ["boxes"], value=numpy_helper.from_array(boxes, "boxes_value")),
    ]
    graph = helper.make_graph(nodes, f"detector_{n}", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def models_file(n, work):
    # `max_detections` only above its default of 100, so that binaries from before the key existed run it too.
    fixtures = ROOT / "examples/models"
    path = work / f"models_{n}.toml"
    detector(n, work / f"detector_{n}.onnx")
    path.write_text(
        f"""[tagger]
family = "ram"
model = "{fixtures / 'tagger.onnx'}"
tags = "{fixtures / 'tags.txt'}"

[detector]
family = "grounding_dino"
export = "idea"
model = "{work / f'detector_{n}.onnx'}"
tokenizer = "{fixtures / 'tokenizer.json'}"
{f"max_detections = {n}" if n > 100 else ""}

[segmenter]
family = "sam"
encoder = "{fixtures / 'sam_encoder.onnx'}"
decoder = "{fixtures / 'sam_decoder.onnx'}"
"""
    )
    return path


def corpus(images, width, height, work):
    """`images` JPEGs of `width`x`height`: grey with one red rectangle, in one WebDataset tar."""
    (work / "wds").mkdir(parents=True, exist_ok=True)
    with tarfile.open(work / "wds" / "large.tar", "w") as tar:
        for i in range(images):
            img = Image.new("RGB", (width, height), (128, 128, 128))
            x0, y0 = (i * 97) % (width // 2), (i * 61) % (height // 2)
            ImageDraw.Draw(img).rectangle([x0, y0, x0 + width // 3, y0 + height // 3], fill=(230, 25, 75))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            info = tarfile.TarInfo(f"{i:06d}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    return work / "wds"


def run(binary, input_dir, out, models, env):
    """Wall seconds, peak RSS (KiB) and stderr of one refining run."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(binary), "run", "--input", str(input_dir), "--output", str(out), "--models", str(models),
           "--progress", "off"]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        err.seek(0)
        text = err.read().decode(errors="replace")
    if status != 0 or "output   complete" not in text:
        sys.exit(f"lyrics-prep failed:\n{text[-2000:]}")
    return elapsed, usage.ru_maxrss, text


def objects_per_image(out):
    """How many objects (each with a mask) every sample of an output has."""
    import pyarrow.parquet as pq

    counts = []
    for shard in sorted((out / "samples").glob("*.parquet")):
        for objects in pq.read_table(shard, columns=["objects"]).column("objects").to_pylist():
            counts.append(sum(1 for o in objects or [] if o["mask"] is not None))
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/lyrics-prep")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of every image")
    ap.add_argument("--detections", default="10,100", help="comma-separated detections per image, one run each")
    ap.add_argument("--work", type=Path, default=ROOT / "bench-data/refiner-rss")
    a = ap.parse_args()
    width, height = (int(v) for v in a.size.lower().split("x"))
    counts = [int(v) for v in a.detections.split(",")]
    work = a.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".ort/libonnxruntime.so"))
    env.setdefault("LYRICS_CACHE", str(work / "cache"))
    input_dir = corpus(a.images, width, height, work)

    rows = []
    for n in counts:
        out = work / f"out_{n}"
        elapsed, rss, _ = run(a.binary, input_dir, out, models_file(n, work), env)
        found = objects_per_image(out)
        if found != [n] * a.images:
            sys.exit(f"expected {n} objects in each of {a.images} images, found {found}")
        rows.append((n, rss, elapsed))
        print(f"  {n} detections: {rss / 1024:.1f} MiB peak RSS, {elapsed:.1f} s", file=sys.stderr)
    base = rows[0][1]
    print(f"# Refiner peak RSS by detections per image ({a.images} images of {width}x{height}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M %Z')})")
    print()
    print("| detections per image | peak RSS | vs first | wall |")
    print("|---:|---:|---:|---:|")
    for n, rss, elapsed in rows:
        print(f"| {n} | {rss / 1024:.1f} MiB | {rss / base:.2f}x | {elapsed:.1f} s |")


if __name__ == "__main__":
    main()

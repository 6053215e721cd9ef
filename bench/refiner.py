#!/usr/bin/env python3
"""Refiner benchmarks, side by side in one run, on the same images and the same ONNX graphs:

(a) overhead with real compute: the fixture tagger and detector with the `salient_crop` segmenter running the real
    ISNet (medium) weights; overhead = lyrics-prep's end-to-end wall time / the summed time of its session.run
    calls (the run summary's `refine.session_run`). Target <= 1.02.
(b) throughput on the fixture chain (RAM -> Grounding DINO -> SAM fixtures), where models are cheap and pre/post-
    processing dominates as on a GPU: lyrics-prep images/s against tests/reference/refiner_reference.py, a
    sequential Pillow + onnxruntime loop with the Grounded-SAM demo's structure. Target >= 3x.
(c) peak RSS of lyrics-prep in both runs.

    python3 bench/refiner.py --binary target/release/lyrics-prep --images 200 --salient-images 12

Needs the ONNX Runtime library (scripts/fetch-onnxruntime.sh) and ISNet (scripts/fetch-isnet.sh).
"""
import argparse
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180)]


def scenes(n, seed, out):
    """n JPEG scenes (640x480, q95) of 1-3 palette shapes on grey, as files and as one WebDataset tar."""
    rng = random.Random(seed)
    files = out / "images"
    files.mkdir(parents=True, exist_ok=True)
    (out / "wds").mkdir(exist_ok=True)
    with tarfile.open(out / "wds" / "scenes.tar", "w") as tar:
        for i in range(n):
            img = Image.new("RGB", (640, 480), (128, 128, 128))
            draw = ImageDraw.Draw(img)
            for colour in rng.sample(range(5), rng.randint(1, 3)):
                x0, y0 = rng.randint(0, 400), rng.randint(0, 300)
                box = [x0, y0, x0 + rng.randint(60, 230), y0 + rng.randint(60, 170)]
                (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=PALETTE[colour])
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=95)
            data = buf.getvalue()
            (files / f"{i:06d}.jpg").write_bytes(data)
            info = tarfile.TarInfo(f"{i:06d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return sorted(str(p) for p in files.glob("*.jpg"))


def timed(cmd, env=None):
    """Wall seconds, peak RSS (KiB), exit status and stderr of a command."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        err.seek(0)
        return elapsed, usage.ru_maxrss, err.read().decode(errors="replace")


def session_time(summary):
    m = re.search(r"refine\.session_run ([0-9.]+) s", summary)
    return float(m.group(1)) if m else None


def run_lyrics(binary, corpus, out, models, env):
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(binary), "run", "--input", str(corpus), "--output", str(out), "--models", str(models), "--progress", "off"]
    elapsed, rss, err = timed(cmd, env)
    if "output   complete" not in err:
        sys.exit(f"lyrics-prep failed:\n{err[-2000:]}")
    return elapsed, rss, err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/lyrics-prep")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--salient-images", type=int, default=12)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-data/refiner")
    a = ap.parse_args()
    work = a.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", str(ROOT / ".ort/libonnxruntime.so"))
    models = ROOT / "examples/models"
    lines = [f"# Refiner benchmarks ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M %Z')})", ""]

    # (b) fixture chain: lyrics-prep against the sequential Python loop, same images and graphs.
    fixture = work / "fixture"
    images = scenes(a.images, 1, fixture)
    t_rust, rss_b, summary = run_lyrics(a.binary, fixture / "wds", fixture / "out", models / "fixtures.toml", env)
    t_py, _, py_err = timed([sys.executable, str(ROOT / "tests/reference/refiner_reference.py"), str(models), "--export", "idea", str(fixture / "reference.json"), *images], env)
    if not (fixture / "reference.json").exists():
        sys.exit(f"reference failed:\n{py_err[-2000:]}")
    busy = re.search(r"busy +(.*)", summary).group(1)
    lines += [
        f"## (b) Fixture chain, {a.images} images 640x480 JPEG (RAM -> Grounding DINO (IDEA) -> SAM fixtures)",
        "",
        "| implementation | wall s | images/s |",
        "|---|---:|---:|",
        f"| lyrics-prep | {t_rust:.2f} | **{a.images / t_rust:.1f}** |",
        f"| Python loop (Pillow + onnxruntime, tests/reference/refiner_reference.py) | {t_py:.2f} | {a.images / t_py:.1f} |",
        "",
        f"- Ratio: **{t_py / t_rust:.2f}x** the Python loop's images/s (target >= 3x)",
        f"- lyrics-prep stage busy time: {busy}",
        f"- lyrics-prep peak RSS: {rss_b / 1024:.0f} MiB",
        "",
    ]

    # (a) overhead with real compute: ISNet on every detected box.
    isnet = ROOT / ".models/isnet_medium.onnx"
    if not isnet.exists():
        lines.append("## (a) unavailable: run scripts/fetch-isnet.sh")
    else:
        salient = work / "salient"
        scenes(a.salient_images, 2, salient)
        spec = salient / "models.toml"
        spec.write_text(
            f'[tagger]\nfamily = "ram"\nmodel = "{models}/tagger.onnx"\ntags = "{models}/tags.txt"\n'
            f'[detector]\nfamily = "grounding_dino"\nmodel = "{models}/detector_idea.onnx"\ntokenizer = "{models}/tokenizer.json"\n'
            f'[segmenter]\nfamily = "salient_crop"\nmodel = "{isnet}"\n'
        )
        t_all, rss_a, summary = run_lyrics(a.binary, salient / "wds", salient / "out", spec, env)
        t_session = session_time(summary)
        out = json.loads((salient / "out/_lyrics/manifest.json").read_text())
        import pyarrow.parquet as pq

        table = pq.read_table(str(salient / "out/samples"))
        boxes = sum(len(o) for o in table.column("objects").to_pylist())
        lines += [
            f"## (a) Overhead with real compute: {a.salient_images} images, {boxes} ISNet (medium) calls",
            "",
            f"- lyrics-prep end-to-end: {t_all:.2f} s (process start, model loading and writing included)",
            f"- summed session.run time: {t_session:.2f} s ({t_session / max(boxes, 1):.2f} s per ISNet call on average)",
            f"- **overhead {t_all / t_session:.3f}** (target <= 1.02); images/s {a.salient_images / t_all:.2f}",
            f"- stage busy time: {re.search(r'busy +(.*)', summary).group(1)}",
            f"- peak RSS: {rss_a / 1024:.0f} MiB; rows {out['rows']['samples']}",
            "",
        ]
    lines += ["Command:", "", "```sh", "python3 " + " ".join(sys.argv), "```", ""]
    text = "\n".join(lines)
    print(text)
    (work / "results.md").write_text(text)


if __name__ == "__main__":
    main()

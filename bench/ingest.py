#!/usr/bin/env python3
"""Ingest throughput of lyrics-prep against Pillow, img2dataset and Daft, side by side, on one corpus.

    python3 bench/ingest.py --images 2000 --runs 3 --binary target/release/lyrics-prep --work bench-data

Every tool does read -> decode -> resize to max side 512 (keep ratio) -> JPEG re-encode -> write Parquet.
Prints a Markdown table (median/min/max images/s over --runs, wall clock of the whole command), the peak RSS
of lyrics-prep at two corpus sizes and the single-thread codec limit of this machine, and writes the same
text to WORK/results.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, features

# ---------------------------------------------------------------------------------------------------- settings

WIDTH, HEIGHT = 640, 480
MAX_SIDE = 512
QUALITY = 90
SHARD_SAMPLES = 250
SEED = 20251127
GENERATOR_VERSION = 1  # bump when the pictures change, so cached corpora are rebuilt
BENCH_ENV = {
    # No tool may phone home (there is no internet here anyway; this avoids timeouts).
    "DAFT_ANALYTICS_ENABLED": "0",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
}

JOB_SPEC = '[resize]\nmode = "keep_ratio"\nimage_size = 512\n[encode]\nformat = "jpg"\nquality = 90\n'

_children: list[subprocess.Popen] = []  # servers started by this script, stopped in main's finally


def log(msg: str) -> None:
    print(f"[ingest] {msg}", file=sys.stderr, flush=True)


def keep_ratio_size(w: int, h: int, side: int = MAX_SIDE) -> tuple[int, int]:
    """Longest side to `side`, ratio kept (img2dataset's keep_ratio_largest): 640x480 -> 512x384."""
    scale = side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


# ------------------------------------------------------------------------------------------------------ corpus


def make_image(i: int) -> tuple[bytes, str]:
    """One seeded 640x480 'photo': smooth gradients, a few shapes, per-pixel noise; JPEG q90, ~90-120 KB."""
    rng = np.random.default_rng([SEED, i])
    y = np.linspace(0.0, 1.0, HEIGHT, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, WIDTH, dtype=np.float32)[None, :]
    base = np.empty((HEIGHT, WIDTH, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1.0, 1.0, 3)
        base[..., c] = 128 + 90 * np.sin(2 * np.pi * (a * x + b * y) + 3 * p)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    shapes = []
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, WIDTH - 40)), int(rng.integers(0, HEIGHT - 40))
        x1, y1 = x0 + int(rng.integers(20, 250)), y0 + int(rng.integers(20, 200))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = ("ellipse", "rectangle")[int(rng.integers(0, 2))]
        getattr(draw, kind)((x0, y0, x1, y1), fill=color)
        shapes.append(f"{kind} #{color[0]:02x}{color[1]:02x}{color[2]:02x}")
    amp = int(rng.integers(10, 19))  # noise amplitude differs per image: 10..18 grey levels
    arr = np.asarray(img).astype(np.int16)
    arr += rng.integers(-amp, amp + 1, (HEIGHT, WIDTH, 1), dtype=np.int16)  # luma noise
    arr += rng.integers(-(amp // 4), amp // 4 + 1, (HEIGHT, WIDTH, 3), dtype=np.int16)  # some chroma noise
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=QUALITY)
    caption = f"synthetic photo {i}: gradients, {', '.join(shapes)}, noise {amp}"
    return buf.getvalue(), caption


def _stamp_ok(path: Path, want: dict) -> bool:
    try:
        return json.loads(path.read_text()) == want
    except (OSError, ValueError):
        return False


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # deterministic bytes
    tar.addfile(info, io.BytesIO(data))


def write_shards(out_dir: Path, n_samples: int, source: Path, n_source: int) -> None:
    """WebDataset shards of SHARD_SAMPLES samples; sample k is image k mod n_source (keys are new)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for s in range(0, n_samples, SHARD_SAMPLES):
        tmp = out_dir / f".shard-{s // SHARD_SAMPLES:05d}.tar.tmp"
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for k in range(s, min(s + SHARD_SAMPLES, n_samples)):
                j = k % n_source
                _tar_add(tar, f"{k:06d}.jpg", (source / f"{j:06d}.jpg").read_bytes())
                _tar_add(tar, f"{k:06d}.txt", (source / f"{j:06d}.txt").read_bytes())
        tmp.rename(out_dir / f"shard-{s // SHARD_SAMPLES:05d}.tar")


def ensure_corpus(work: Path, n: int) -> None:
    """WORK/images (loose .jpg + .txt) and WORK/wds (tar shards), rebuilt only when missing or stale."""
    images, wds = work / "images", work / "wds"
    stamp = work / "corpus.json"
    want = {"generator": GENERATOR_VERSION, "seed": SEED, "images": n, "shard_samples": SHARD_SAMPLES}
    if _stamp_ok(stamp, want) and (wds / f"shard-{(n - 1) // SHARD_SAMPLES:05d}.tar").exists():
        log(f"corpus: {n} images cached in {work}")
        return
    # Image i is a pure function of (generator, SEED, i): keep the files already there if those match.
    old = {}
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(stamp.read_text())
    reuse = old.get("generator") == GENERATOR_VERSION and old.get("seed") == SEED
    images.mkdir(parents=True, exist_ok=True)
    t0, made = time.perf_counter(), 0
    for i in range(n):
        jpg, txt = images / f"{i:06d}.jpg", images / f"{i:06d}.txt"
        if reuse and jpg.exists() and txt.exists():
            continue
        data, caption = make_image(i)
        for path, payload in ((txt, caption.encode()), (jpg, data)):  # written whole or not at all
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(payload)
            tmp.rename(path)
        made += 1
        if made % 250 == 0:
            log(f"corpus: generated {made} of {n} images")
    for extra in images.iterdir():  # a smaller --images than last time: drop the rest, so globs see N files
        m = re.fullmatch(r"(\d{6})\.(jpg|txt)", extra.name)
        if not m or int(m.group(1)) >= n:
            extra.unlink()
    write_shards(wds, n, images, n)
    stamp.write_text(json.dumps(want))
    sizes = [p.stat().st_size for p in images.glob("*.jpg")]
    log(
        f"corpus: {n} images ({made} generated) in {time.perf_counter() - t0:.1f} s, "
        f"mean {statistics.mean(sizes) / 1e3:.0f} KB, {min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} KB"
    )


def ensure_repeat_corpus(work: Path, n_base: int, m: int) -> Path:
    """WORK/wds10k etc.: m samples cycling over the n_base images, for the peak-RSS runs."""
    name = f"wds{m // 1000}k" if m % 1000 == 0 else f"wds{m}"
    out = work / name
    stamp = out / "corpus.json"
    want = {"generator": GENERATOR_VERSION, "seed": SEED, "base_images": n_base, "samples": m}
    if not _stamp_ok(stamp, want):
        log(f"corpus: writing {name}/ ({m} samples repeating {n_base} images)")
        write_shards(out, m, work / "images", n_base)
        stamp.write_text(json.dumps(want))
    return out


# -------------------------------------------------------------------------------------------- output checking


def estimate_jpeg_quality(data: bytes) -> str:
    """IJG quality whose scaled standard luminance table matches the file's (libjpeg, jpeg-encoder, image)."""
    base = [
        16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
    ]  # fmt: skip
    try:
        im = Image.open(io.BytesIO(data))
        if im.format != "JPEG":
            return im.format or "?"
        table = sorted(im.quantization[0])  # order (zigzag or not) does not matter for the comparison
    except Exception:  # noqa: BLE001
        return "?"
    best, best_err = None, None
    for q in range(1, 101):
        scale = 5000 // q if q < 50 else 200 - 2 * q
        ref = sorted(min(255, max(1, (b * scale + 50) // 100)) for b in base)
        err = sum(abs(a - b) for a, b in zip(table, ref))
        if best_err is None or err < best_err:
            best, best_err = q, err
    return f"q{best}" if best_err == 0 else f"~q{best}"


def check_parquet(paths: list[Path], expect: int) -> tuple[int, str]:
    """Rows in the files, and 'JPEG WxH qNN' of the first image found (bytes column or {bytes} struct)."""
    rows, desc = 0, "?"
    for p in sorted(paths):
        f = pq.ParquetFile(p)
        rows += f.metadata.num_rows
        if desc != "?" or f.metadata.num_rows == 0:
            continue
        t = f.read_row_group(0)
        for name in t.column_names:
            col = t.column(name)
            if pa.types.is_struct(col.type) and "bytes" in [col.type.field(i).name for i in range(col.type.num_fields)]:
                col = pa.chunked_array([c.field("bytes") for c in col.chunks])
            if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
                continue
            val = next((v for v in col.to_pylist() if v), None)
            if not val:
                continue
            try:
                im = Image.open(io.BytesIO(val))
                desc = f"{im.format} {im.width}x{im.height} {estimate_jpeg_quality(val)}"
                break
            except Exception:  # noqa: BLE001
                continue
    return rows, desc


# ------------------------------------------------------------------------------------------------------- tools


class Unavailable(Exception):
    """The tool cannot run here; the message says why."""


def run_cmd(cmd: list[str], *, env: dict | None = None, timeout: float | None = None) -> float:
    """Runs cmd, returns its wall time; raises with the tail of its output when it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env={**os.environ, **BENCH_ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
        raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(tail)[-600:])
    return elapsed


def fresh_dir(work: Path, name: str) -> Path:
    path = work / "out" / name
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path  # not created: every tool creates its own output folder


# lyrics-prep ------------------------------------------------------------------------------------------------


def lyrics_cmd(binary: Path, inp: Path, out: Path, cfg: Path) -> list[str]:
    return [str(binary), "run", "--input", str(inp), "--output", str(out), "--config", str(cfg), "--progress", "off"]


def lyrics_check(out: Path, n: int) -> tuple[str, str]:
    manifest = json.loads((out / "_lyrics" / "manifest.json").read_text())
    samples = manifest.get("rows", {}).get("samples")
    if samples != n:
        raise RuntimeError(f"manifest rows.samples = {samples}, expected {n}")
    _, desc = check_parquet(list((out / "samples").glob("*.parquet")), n)
    return desc, f"{samples} rows (manifest)"


def bench_lyrics(args, work: Path, cfg: Path, n: int, binary: Path) -> dict:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise Unavailable(f"no binary at {binary} (cargo build --release)")
    times, desc, note = [], "?", ""
    for r in range(args.runs):
        out = fresh_dir(work, f"lyrics-prep-{r}")
        times.append(run_cmd(lyrics_cmd(binary, work / "wds", out, cfg)))
        desc, note = lyrics_check(out, n)
        shutil.rmtree(out)
    return {"times": times, "quality": desc, "notes": f"{note}; WebDataset tars, all cores; {binary}"}


# Pillow ------------------------------------------------------------------------------------------------------


def pillow_shard(job: tuple[str, str]) -> int:
    """One tar shard -> one Parquet file (key, jpg, caption). Runs in the worker processes too."""
    shard, out_dir = job
    keys, jpgs, captions = [], [], []
    pending: dict[str, dict] = {}
    with tarfile.open(shard, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            pending.setdefault(key, {})[ext] = data
            sample = pending[key]
            if "jpg" in sample and "txt" in sample:
                del pending[key]
                img = Image.open(io.BytesIO(sample["jpg"]))  # no img.draft(): full-size decode, like the others
                img = img.convert("RGB") if img.mode != "RGB" else img
                img = img.resize(keep_ratio_size(*img.size), Image.BILINEAR, reducing_gap=None)
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=QUALITY)
                keys.append(key)
                jpgs.append(buf.getvalue())
                captions.append(sample["txt"].decode("utf-8"))
    table = pa.table({"key": keys, "jpg": pa.array(jpgs, pa.binary()), "caption": captions})
    pq.write_table(table, Path(out_dir) / (Path(shard).stem + ".parquet"))
    return len(keys)


def bench_pillow(args, work: Path, n: int, procs: int) -> dict:
    import multiprocessing

    shards = sorted(str(p) for p in (work / "wds").glob("shard-*.tar"))
    times, desc = [], "?"
    for r in range(args.runs):
        out = fresh_dir(work, f"pillow{procs}-{r}")
        t0 = time.perf_counter()
        out.mkdir()
        jobs = [(s, str(out)) for s in shards]
        if procs == 1:
            rows = sum(map(pillow_shard, jobs))
        else:
            with multiprocessing.get_context("fork").Pool(procs) as pool:
                rows = sum(pool.map(pillow_shard, jobs, chunksize=1))
        times.append(time.perf_counter() - t0)
        got, desc = check_parquet(list(out.glob("*.parquet")), n)
        if rows != n or got != n:
            raise RuntimeError(f"wrote {got} rows, expected {n}")
        shutil.rmtree(out)
    turbo = features.check_feature("libjpeg_turbo")
    return {
        "times": times,
        "quality": desc,
        "notes": f"{n} rows; Pillow {Image.__version__}{' + libjpeg-turbo' if turbo else ''}, BILINEAR, "
        f"{procs} process{'es' if procs > 1 else ''} over tar shards",
    }


# venv for img2dataset and Daft ---------------------------------------------------------------------------------


def venv_python(work: Path) -> Path:
    return work / "venv" / "bin" / "python"


def ensure_venv(work: Path) -> dict[str, str]:
    """Creates WORK/venv once and installs what is missing; returns {package: why it is unavailable}."""
    py = venv_python(work)
    problems: dict[str, str] = {}
    if not py.exists():
        log("venv: creating WORK/venv")
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    modules = {"pyarrow": "pyarrow", "pillow": "PIL", "daft": "daft", "img2dataset": "img2dataset"}
    for package, module in modules.items():
        if subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0:
            continue
        log(f"venv: pip install {package} (may take minutes)")
        proc = subprocess.run(
            [str(py), "-m", "pip", "install", "--disable-pip-version-check", package], capture_output=True, text=True
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            problems[package] = f"pip install {package} failed: " + " | ".join(tail)[-300:]
        elif subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode != 0:
            problems[package] = f"installed {package} but `import {module}` fails"
    return problems


def venv_version(work: Path, package: str) -> str:
    proc = subprocess.run(
        [str(venv_python(work)), "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() or "?"


# img2dataset ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_http_server(directory: Path) -> int:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _children.append(proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"http.server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return port
        time.sleep(0.1)
    raise RuntimeError("http.server did not start in 15 s")


def bench_img2dataset(args, work: Path, n: int, venv_problems: dict) -> dict:
    for pkg in ("img2dataset", "pyarrow"):
        if pkg in venv_problems:
            raise Unavailable(venv_problems[pkg])
    port = start_http_server(work / "images")
    urls = work / "urls.csv"
    with urls.open("w", newline="") as f:  # rewritten every run: the port changes
        writer = csv.writer(f)
        writer.writerow(["url", "caption"])
        for i in range(n):
            writer.writerow([f"http://127.0.0.1:{port}/{i:06d}.jpg", (work / "images" / f"{i:06d}.txt").read_text()])
    exe = work / "venv" / "bin" / "img2dataset"
    times, desc, ok = [], "?", None
    for r in range(args.runs):
        out = fresh_dir(work, f"img2dataset-{r}")
        cmd = [
            str(exe), "--url_list", str(urls), "--input_format", "csv", "--url_col", "url",
            "--caption_col", "caption", "--output_format", "parquet", "--output_folder", str(out),
            "--processes_count", "2", "--thread_count", "16", "--resize_mode", "keep_ratio_largest",
            "--image_size", str(MAX_SIDE), "--encode_quality", str(QUALITY), "--encode_format", "jpg",
            "--disable_all_reencoding", "False", "--number_sample_per_shard", str(SHARD_SAMPLES),
            "--distributor", "multiprocessing",
        ]  # fmt: skip
        times.append(run_cmd(cmd))
        stats = list(out.glob("*_stats.json"))
        ok = sum(json.loads(p.read_text()).get("successes", 0) for p in stats) if stats else None
        rows, desc = check_parquet(list(out.glob("*.parquet")), n)
        if (ok is not None and ok != n) or rows != n:
            raise RuntimeError(f"{ok} successes in stats, {rows} Parquet rows, expected {n}")
        shutil.rmtree(out)
    return {
        "times": times,
        "quality": desc,
        "notes": f"{ok} successes (stats json); img2dataset {venv_version(work, 'img2dataset')}, "
        "fetches over HTTP from a local http.server, 2 processes x 16 threads, OpenCV INTER_AREA downscale",
    }


# Daft ----------------------------------------------------------------------------------------------------------

DAFT_SCRIPT = r"""
import sys, daft
from daft import col
import daft.functions as F

images, out, w, h = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
e = col("path")
# Expression namespaces (.url, .image) were replaced by daft.functions in newer releases: use what exists.
if hasattr(e, "url"):
    download = lambda x: x.url.download()
    decode = lambda x: x.image.decode()
    resize = lambda x: x.image.resize(w, h)
    encode = lambda x: x.image.encode("JPEG")
else:
    download, decode, encode = F.download, F.decode_image, lambda x: F.encode_image(x, "JPEG")
    resize = lambda x: F.resize(x, w, h)
txt_path = (lambda x: x.str.replace(".jpg", ".txt")) if hasattr(e, "str") else (lambda x: F.replace(x, ".jpg", ".txt"))
df = daft.from_glob_path(images + "/*.jpg")
df = df.select(
    col("path").alias("key"),
    encode(resize(decode(download(col("path"))))).alias("jpg"),
    download(txt_path(col("path"))).cast(daft.DataType.string()).alias("caption"),
)
df.write_parquet(out)
"""


def bench_daft(args, work: Path, n: int, venv_problems: dict) -> dict:
    for pkg in ("daft", "pyarrow"):
        if pkg in venv_problems:
            raise Unavailable(venv_problems[pkg])
    script = work / "daft_ingest.py"
    script.write_text(DAFT_SCRIPT)
    # Every corpus image is 640x480, so the keep-ratio size is fixed (Daft's resize takes explicit w, h).
    w, h = keep_ratio_size(WIDTH, HEIGHT)
    times, desc = [], "?"
    for r in range(args.runs):
        out = fresh_dir(work, f"daft-{r}")
        times.append(run_cmd([str(venv_python(work)), str(script), str(work / "images"), str(out), str(w), str(h)]))
        rows, desc = check_parquet(list(out.rglob("*.parquet")), n)
        if rows != n:
            raise RuntimeError(f"wrote {rows} rows, expected {n}")
        shutil.rmtree(out)
    return {
        "times": times,
        "quality": desc,
        "notes": f"{n} rows; Daft {venv_version(work, 'daft')}, loose files, native runner; "
        "JPEG quality cannot be set (fixed, about q75)",
    }


# ------------------------------------------------------------------------------------------------- peak RSS


def peak_rss_kib(cmd: list[str]) -> tuple[int, float, str]:
    """Peak RSS (KiB) of cmd and its wall time. /usr/bin/time -v if present, else wait4's ru_maxrss."""
    time_bin = shutil.which("time", path="/usr/bin:/bin")
    if time_bin is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log("peak RSS: /usr/bin/time missing, trying apt-get install -y time")
        subprocess.run(["apt-get", "install", "-y", "time"], capture_output=True)
        time_bin = shutil.which("time", path="/usr/bin:/bin")
    env = {**os.environ, **BENCH_ENV}
    t0 = time.perf_counter()
    if time_bin:
        proc = subprocess.run([time_bin, "-v", *cmd], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        if not m:
            raise RuntimeError("no 'Maximum resident set size' in /usr/bin/time -v output")
        return int(m.group(1)), elapsed, "/usr/bin/time -v"
    # The same number /usr/bin/time prints: the kernel's max RSS of that child, from wait4 (no polling race).
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.read().decode(errors='replace')[-400:]}")
    return usage.ru_maxrss, elapsed, "wait4 ru_maxrss"


def bench_rss(args, work: Path, cfg: Path, n: int) -> list[str]:
    args.binary = args.binaries[0][1]
    if not (args.binary.is_file() and os.access(args.binary, os.X_OK)):
        return [f"- Peak RSS of lyrics-prep: unavailable: no binary at {args.binary}"]
    results = []
    for m in args.rss_sizes:
        inp = ensure_repeat_corpus(work, n, m)
        out = fresh_dir(work, f"lyrics-prep-rss-{m}")
        try:
            kib, elapsed, how = peak_rss_kib(lyrics_cmd(args.binary, inp, out, cfg))
            lyrics_check(out, m)
        except Exception as e:  # noqa: BLE001
            results.append((m, None, 0.0, f"unavailable: {e}"))
            continue
        finally:
            shutil.rmtree(out, ignore_errors=True)
        results.append((m, kib, elapsed, how))
        log(f"peak RSS at {m} images: {kib / 1024:.0f} MiB ({elapsed:.1f} s)")
    lines = []
    for m, kib, elapsed, how in results:
        if kib is None:
            lines.append(f"- Peak RSS of lyrics-prep at {m:,} images: {how}")
        else:
            lines.append(
                f"- Peak RSS of lyrics-prep at {m:,} images: **{kib / 1024:.1f} MiB** "
                f"({how}; {m / elapsed:.0f} images/s in that run)"
            )
    good = [r for r in results if r[1] is not None]
    if len(good) >= 2:
        (m0, k0, _, _), (m1, k1, _, _) = good[0], good[-1]
        lines.append(f"- Peak RSS ratio {m1:,} / {m0:,} images: **{k1 / k0:.2f}x** for {m1 / m0:g}x the images")
    return lines


# ------------------------------------------------------------------------------------------------ output quality

# The reference every fast path is held to: the same job through a full decode to RGB, resized and encoded in RGB.
REFERENCE_SPEC = JOB_SPEC + "[decode]\ndct_scaling = false\nycbcr = false\n"
# The fast paths, alone and together (the defaults).
QUALITY_VARIANTS = {
    "defaults (both)": JOB_SPEC,
    "YCbCr planes only": JOB_SPEC + "[decode]\ndct_scaling = false\n",
    "DCT-scaled decode only": JOB_SPEC + "[decode]\nycbcr = false\n",
}


def images_by_key(out: Path) -> dict[str, np.ndarray]:
    """The stored images of a lyrics-prep output, decoded by Pillow, by key."""
    found = {}
    for path in sorted((out / "samples").glob("*.parquet")):
        table = pq.read_table(path, columns=["key", "image"])
        for key, image in zip(table.column("key").to_pylist(), table.column("image").to_pylist()):
            found[key] = np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("RGB"))  # uint8: 2,000 fit
    return found


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _box(x: np.ndarray, k: int) -> np.ndarray:
    """Means over every k x k window (valid positions), from an integral image."""
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def ssim(a: np.ndarray, b: np.ndarray, k: int = 7) -> float:
    """SSIM of the luma (BT.601) over 7 x 7 windows, as scikit-image computes it by default."""
    weights = np.array([0.299, 0.587, 0.114])  # the products are float64
    x, y = a @ weights, b @ weights
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _box(x, k), _box(y, k)
    cov = k * k / (k * k - 1)  # sample (co)variances, as scikit-image
    vx = (_box(x * x, k) - mx * mx) * cov
    vy = (_box(y * y, k) - my * my) * cov
    vxy = (_box(x * y, k) - mx * my) * cov
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def run_at(binary: Path, work: Path, name: str, spec: str, size: int) -> dict[str, np.ndarray]:
    cfg = work / f"lyrics-job-quality-{name}.toml"
    cfg.write_text(spec.replace("image_size = 512", f"image_size = {size}"))
    out = fresh_dir(work, f"lyrics-prep-quality-{name}")
    try:
        run_cmd(lyrics_cmd(binary, work / "wds", out, cfg))
        return images_by_key(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# SSIM is computed on every 4th image (it costs 30 times a PSNR); PSNR on every image.
SSIM_EVERY = 4


def compare(fast: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str:
    """The PSNR, SSIM and identical-image columns of `fast` against `ref`."""
    if fast.keys() != ref.keys():
        return f"the two runs stored different keys ({len(fast)} and {len(ref)}) | | | | |"
    psnrs, ssims, same = [], [], 0
    for i, key in enumerate(sorted(fast)):
        a, b = fast[key], ref[key]
        if a.shape != b.shape:
            return f"{key} is {a.shape} here and {b.shape} in the reference | | | | |"
        if np.array_equal(a, b):
            same += 1
            continue
        psnrs.append(psnr(a, b))
        if i % SSIM_EVERY == 0:
            ssims.append(ssim(a, b))
    if not psnrs:
        return f"identical | identical | 1 | 1 | {same} of {len(fast)}"
    verdict = "" if min(psnrs) >= 40 else " (under 40 dB)"
    return (
        f"{statistics.mean(psnrs):.1f} | {min(psnrs):.1f}{verdict} | {statistics.mean(ssims):.4f} | "
        f"{min(ssims):.4f} | {same} of {len(fast)}"
    )


def bench_quality(args, work: Path, n: int) -> list[str]:
    """The default output against the same binary's full decode -> resize -> encode, per output size."""
    binary = args.binaries[0][1]
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return [f"- Output quality: unavailable: no binary at {binary}"]
    lines = [
        "",
        f"Output quality of the fast paths against the same binary's full decode -> RGB resize -> encode "
        f"(`[decode] dct_scaling = false`, `ycbcr = false`), {n:,} images, by output size (PSNR over the images "
        f"that differ, SSIM over every {SSIM_EVERY}th of them; a path that does not apply at a size leaves every "
        f"image identical):",
        "",
        "| output | fast path | PSNR mean (dB) | PSNR min (dB) | SSIM mean | SSIM min | identical |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for size in args.quality_sizes:
        log(f"output quality at max side {size}")
        ref = run_at(binary, work, "reference", REFERENCE_SPEC, size)
        shape = next(iter(ref.values())).shape
        for name, spec in QUALITY_VARIANTS.items():
            fast = run_at(binary, work, "fast", spec, size)
            lines.append(f"| {shape[1]}x{shape[0]} | {name} | {compare(fast, ref)} |")
    return lines + [""]


# ------------------------------------------------------------------------------------------------ physical limit


def physical_limit(work: Path, n: int) -> dict:
    """Median single-thread seconds per image of Pillow decode, resize, encode q90 on up to 200 images."""
    files = sorted((work / "images").glob("*.jpg"))[: min(200, n)]
    dec, res, enc = [], [], []
    size = keep_ratio_size(WIDTH, HEIGHT)
    for p in files:
        data = p.read_bytes()
        t0 = time.perf_counter()
        img = Image.open(io.BytesIO(data))
        img.load()
        t1 = time.perf_counter()
        small = img.resize(size, Image.BILINEAR, reducing_gap=None)
        t2 = time.perf_counter()
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=QUALITY)
        t3 = time.perf_counter()
        dec.append(t1 - t0)
        res.append(t2 - t1)
        enc.append(t3 - t2)
    d, r, e = statistics.median(dec), statistics.median(res), statistics.median(enc)
    cores = os.cpu_count() or 1
    return {"decode": d, "resize": r, "encode": e, "images": len(files), "cores": cores, "limit": cores / (d + r + e)}


# -------------------------------------------------------------------------------------------------------- main


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def against_fastest_peer(rows: list, n: int, runs: int, rounds: int) -> list[str]:
    """The first lyrics-prep binary against the fastest peer (by median): the ratio of the medians and, round by
    round, the ratio of the two tools' median rates within that round. On a machine whose speed drifts over
    minutes, a round's ratio compares runs made close together; the median of those is the steadier figure."""
    measured = [(name, res) for name, res in rows if not isinstance(res, str)]
    ours = next(((name, res) for name, res in measured if name.startswith("lyrics-prep")), None)
    peers = [(name, res) for name, res in measured if not name.startswith("lyrics-prep")]
    if ours is None or not peers:
        return []

    def per_round(res: dict) -> list[float]:
        times = res["times"]
        return [statistics.median(n / t for t in times[r * runs : (r + 1) * runs]) for r in range(rounds)]

    peer, peer_res = max(peers, key=lambda p: statistics.median(n / t for t in p[1]["times"]))
    ratio = statistics.median(n / t for t in ours[1]["times"]) / statistics.median(n / t for t in peer_res["times"])
    line = f"- {ours[0]} against the fastest peer ({peer}): **{ratio:.2f}x** at the medians"
    if rounds > 1 and all(len(res["times"]) == runs * rounds for res in (ours[1], peer_res)):
        each = [a / b for a, b in zip(per_round(ours[1]), per_round(peer_res))]
        line += f"; round by round {', '.join(f'{r:.2f}' for r in each)} (median **{statistics.median(each):.2f}x**)"
    return [line]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="corpus size (default 2000)")
    ap.add_argument("--runs", type=int, default=3, help="runs per tool per round; the median is reported (default 3)")
    ap.add_argument(
        "--rounds", type=int, default=1, help="rounds over all tools, interleaving them on a noisy machine (default 1)"
    )
    ap.add_argument(
        "--binary",
        action="append",
        help="lyrics-prep binary to measure, as PATH or LABEL=PATH; repeat to compare builds side by side "
        "(default target/release/lyrics-prep); the first one is used for the RSS runs",
    )
    ap.add_argument("--work", type=Path, default=Path("bench-data"), help="corpus, venv, outputs, results.md")
    ap.add_argument(
        "--rss-sizes",
        default="1000,10000",
        help="corpus sizes for lyrics-prep's peak RSS, comma-separated (default 1000,10000)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also run the first binary with extra job-spec TOML, as LABEL=TOML (\\n for newlines), e.g. "
        "'rgb path=[decode]\\nycbcr = false'; repeatable",
    )
    ap.add_argument(
        "--quality-sizes",
        default="512,256,160",
        help="output sizes (max side) at which the defaults are compared with a full decode (default 512,256,160)",
    )
    ap.add_argument(
        "--skip",
        default="",
        help="comma-separated tools to leave out: lyrics-prep,pillow (both; pillow1 or pillow2 for one),img2dataset,"
        "daft,rss,quality,limit",
    )
    args = ap.parse_args()
    if args.images < 1 or args.runs < 1 or args.rounds < 1:
        ap.error("--images, --runs and --rounds must be at least 1")
    args.rss_sizes = [int(x) for x in args.rss_sizes.split(",") if x.strip()]
    args.quality_sizes = [int(x) for x in args.quality_sizes.split(",") if x.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.binaries = []
    for spec in args.binary or ["target/release/lyrics-prep"]:
        label, _, path = spec.rpartition("=")
        args.binaries.append((f"lyrics-prep ({label})" if label else "lyrics-prep", Path(path).resolve()))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    n = args.images
    command = "python3 " + shlex.join(sys.argv)

    try:
        ensure_corpus(work, n)
        cfg = work / "lyrics-job.toml"
        cfg.write_text(JOB_SPEC)

        # Tools run round by round (each round: every tool once, `--runs` times), so that a slow spell of the
        # shared machine hits every tool alike and the ratios between them stay honest.
        results: dict[str, dict | str] = {}
        order: list[str] = []

        def measure(name: str, fn, *fargs) -> None:
            if name not in order:
                order.append(name)
            if isinstance(results.get(name), str):
                return
            log(f"{name}: {args.runs} run(s)")
            try:
                res = fn(*fargs)
                if name in results:
                    results[name]["times"] += res["times"]
                else:
                    results[name] = res
                log(f"{name}: median {statistics.median(n / t for t in res['times']):.1f} images/s")
            except Unavailable as e:
                results[name] = f"unavailable: {e}"
            except Exception as e:  # noqa: BLE001
                log(f"{name} failed:\n{traceback.format_exc()}")
                results[name] = f"unavailable: {type(e).__name__}: {e}"

        venv_problems: dict[str, str] = {}
        if not {"img2dataset", "daft"} <= skip:
            try:
                venv_problems = ensure_venv(work)
            except Exception as e:  # noqa: BLE001
                venv_problems = {p: f"venv: {e}" for p in ("daft", "img2dataset", "pyarrow", "pillow")}
        for round_ in range(args.rounds):
            if args.rounds > 1:
                log(f"round {round_ + 1} of {args.rounds}")
            if "lyrics-prep" not in skip:
                for label, binary in args.binaries:
                    measure(label, bench_lyrics, args, work, cfg, n, binary)
                for i, variant in enumerate(args.variant):
                    label, _, extra = variant.partition("=")
                    variant_cfg = work / f"lyrics-job-variant-{i}.toml"
                    variant_cfg.write_text(JOB_SPEC + extra.replace("\\n", "\n") + "\n")
                    name = f"{args.binaries[0][0]}, {label}"
                    measure(name, bench_lyrics, args, work, variant_cfg, n, args.binaries[0][1])
            if not {"pillow", "pillow1"} & skip:
                measure("Pillow, 1 process", bench_pillow, args, work, n, 1)
            if not {"pillow", "pillow2"} & skip:
                measure("Pillow, 2 processes", bench_pillow, args, work, n, 2)
            if "img2dataset" not in skip:
                measure("img2dataset", bench_img2dataset, args, work, n, venv_problems)
            if "daft" not in skip:
                measure("Daft", bench_daft, args, work, n, venv_problems)
        rows = [(name, results[name]) for name in order]

        rss_lines = [] if "rss" in skip else bench_rss(args, work, cfg, n)
        if "quality" not in skip:
            log("output quality: default against a full-decode reference")
            try:
                rss_lines += bench_quality(args, work, n)
            except Exception as e:  # noqa: BLE001
                log(f"output quality failed:\n{traceback.format_exc()}")
                rss_lines.append(f"- Output quality: unavailable: {type(e).__name__}: {e}")
        limit = None
        if "limit" not in skip:
            log("physical limit: timing Pillow decode/resize/encode on one thread")
            limit = physical_limit(work, n)
    finally:
        for proc in _children:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(work / "out", ignore_errors=True)

    # ---------------------------------------------------------------------------------------------- report
    out = [
        f"# Ingest throughput, {n:,} images (640x480 JPEG q90 -> max side 512, JPEG q90, Parquet)",
        "",
        f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}. Wall time of the whole command (process start and imports "
        f"included), {args.runs * args.rounds} run(s) per tool"
        f"{f' in {args.rounds} interleaved rounds' if args.rounds > 1 else ''}.",
        "",
        "| tool | images/s (median) | min | max | output quality | notes |",
        "|---|---:|---:|---:|---|---|",
    ]
    lyrics_rate = None
    for name, res in rows:
        if isinstance(res, str):
            out.append(f"| {name} | - | - | - | - | {res.replace('|', '/')} |")
            continue
        rates = [n / t for t in res["times"]]
        med = statistics.median(rates)
        # The first binary given is the one measured (the others are for comparison, an earlier build among them).
        if name.startswith("lyrics-prep") and lyrics_rate is None:
            lyrics_rate = med
        out.append(
            f"| {name} | **{fmt_rate(med)}** | {fmt_rate(min(rates))} | {fmt_rate(max(rates))} | "
            f"{res['quality']} | {res['notes'].replace('|', '/')} |"
        )
    out.append("")
    out.extend(against_fastest_peer(rows, n, args.runs, args.rounds))
    out.extend(rss_lines)
    if limit:
        ratio = f"; lyrics-prep reaches **{lyrics_rate / limit['limit']:.0%}** of it" if lyrics_rate else ""
        out.append(
            f"- Physical limit: {limit['cores']} cores / (decode {limit['decode'] * 1e3:.2f} ms + resize "
            f"{limit['resize'] * 1e3:.2f} ms + encode q90 {limit['encode'] * 1e3:.2f} ms per image, single-thread "
            f"Pillow {Image.__version__}"
            f"{' + libjpeg-turbo' if features.check_feature('libjpeg_turbo') else ''}, median of "
            f"{limit['images']} images) = **{fmt_rate(limit['limit'])} images/s**{ratio}"
        )
    out += ["", "Command:", "", "```sh", command, "```", ""]
    text = "\n".join(out)
    print(text)
    (work / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

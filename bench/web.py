#!/usr/bin/env python3
"""Web ingest of lyrics-prep against img2dataset, on a stand-in web with the failure mix of a real crawl.

    python3 bench/web.py --binary target/release/lyrics-prep --work bench-data/web --urls 20000 --rounds 3

The script starts a stand-in web (a subprocess of this script: `bench/web.py serve ...`) on many loopback hosts
(127.0.0.2 ... 127.0.0.N+1, one port), each answer after 75-225 ms, and stops it at the end. Two URL lists of
the same photos, as Parquet manifests (`url`, `caption`; row groups of 1,000 rows):

- crawl: 12% dead (404 after the latency), 1% never answer (the connection stays open, silent), 0.5% slow (an
  image after 3-8 s), 1% not an image (an HTML page), 2% opted out (an image with `X-Robots-Tag: noai`), 3%
  redirects (302 to the image, on the same host), the rest images;
- clean: every URL an image.

Every tool does fetch -> decode -> resize to max side 512 (keep ratio) -> JPEG q90 -> Parquet:
lyrics-prep with its default `[download]` settings (the job spec sets only `[resize]` and `[encode]`; no refiner),
img2dataset with 2 processes x 64 threads, `--timeout 10 --retries 0`. Tools are interleaved round by round. Also
lyrics-prep on the same photos read from the local disk (a manifest of file paths with the clean list's rows), to
show whether the web's latency is hidden. Prints a Markdown table (successful images/s, wall, peak RSS of the
whole process tree) and writes it to WORK/results.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

# ---------------------------------------------------------------------------------------------------- settings

SEED = 20261207
GENERATOR_VERSION = 1  # bump when the photos change, so the cached ones are rebuilt
MAX_SIDE, QUALITY = 512, 90
ROW_GROUP_ROWS = 1000
LATENCY_S = (0.075, 0.225)
SLOW_S = (3.0, 8.0)
# The crawl's mix: (kind, share). `i` image, `n` 404, `h` never answers, `s` slow image, `p` HTML page,
# `x` image with X-Robots-Tag: noai, `r` 302 to the image.
CRAWL_MIX = [("n", 0.12), ("h", 0.01), ("s", 0.005), ("p", 0.01), ("x", 0.02), ("r", 0.03)]
SUCCESS_KINDS = {"i", "s", "r"}
JOB_SPEC = f'[resize]\nmode = "keep_ratio"\nimage_size = {MAX_SIDE}\n[encode]\nformat = "jpg"\nquality = {QUALITY}\n'
PAGE = b"<!doctype html><html><head><title>Not found</title></head><body><p>This page moved.</p></body></html>"


def log(msg: str) -> None:
    print(f"[web] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ photos


def make_photo(i: int, rng) -> bytes:
    """One seeded photo-like JPEG (gradients, shapes, noise) of a common camera/web shape, long side 300-1024."""
    import numpy as np
    from PIL import Image, ImageDraw

    long_side = int(rng.integers(300, 1025))
    ratio = [4 / 3, 3 / 2, 1.0, 16 / 9, 3 / 4, 2 / 3][int(rng.integers(0, 6))]
    w, h = (long_side, round(long_side / ratio)) if ratio >= 1 else (round(long_side * ratio), long_side)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    base = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1.5, 1.5, 3)
        base[..., c] = 128 + 90 * np.sin(2 * np.pi * (a * x + b * y) + 3 * p)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 10))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.integers(0, 2) else draw.rectangle)((x0, y0, x1, y1), fill=color)
    amp = int(rng.integers(6, 16))
    arr = np.asarray(img).astype(np.int16)
    arr += rng.integers(-amp, amp + 1, (h, w, 1), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(80, 96)))
    return buf.getvalue()


def ensure_photos(work: Path, count: int) -> Path:
    """WORK/photos/NNNNN.jpg, generated once (a stamp says with which settings)."""
    import numpy as np

    photos = work / "photos"
    stamp = photos / "stamp.json"
    want = {"version": GENERATOR_VERSION, "count": count, "seed": SEED}
    try:
        if json.loads(stamp.read_text()) == want:
            return photos
    except (OSError, ValueError):
        pass
    log(f"generating {count} photos into {photos}")
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir(parents=True)
    for i in range(count):
        (photos / f"{i:05d}.jpg").write_bytes(make_photo(i, np.random.default_rng([SEED, i])))
    stamp.write_text(json.dumps(want))
    return photos


# ----------------------------------------------------------------------------------------------- the stand-in web


class StandInWeb:
    """Serves `/<kind>/<photo>.jpg` on every host as CRAWL_MIX describes, keep-alive, after LATENCY_S."""

    def __init__(self, photos: Path):
        self.photos = {int(p.stem): p.read_bytes() for p in photos.glob("*.jpg")}
        self.rng = random.Random(SEED)
        self.stop = asyncio.Event()

    def head(self, status: str, content_type: str, length: int, extra: str = "") -> bytes:
        return (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n{extra}\r\n"
        ).encode()

    async def answer(self, path: str) -> bytes | None:
        parts = path.split("?")[0].strip("/").split("/")
        kind = parts[0] if len(parts) == 2 else "?"
        try:
            body = self.photos[int(parts[1].split(".")[0])] if kind != "?" else b""
        except (ValueError, KeyError):
            kind, body = "?", b""
        await asyncio.sleep(self.rng.uniform(*LATENCY_S))
        if kind == "i":
            return self.head("200 OK", "image/jpeg", len(body)) + body
        if kind == "s":
            await asyncio.sleep(self.rng.uniform(*SLOW_S))
            return self.head("200 OK", "image/jpeg", len(body)) + body
        if kind == "x":
            return self.head("200 OK", "image/jpeg", len(body), "X-Robots-Tag: noai\r\n") + body
        if kind == "r":
            return self.head("302 Found", "text/plain", 0, f"Location: /i/{parts[1]}\r\n")
        if kind == "p":
            return self.head("200 OK", "text/html; charset=utf-8", len(PAGE)) + PAGE
        if kind == "h":
            await self.stop.wait()
            return None
        return self.head("404 Not Found", "text/plain", 9) + b"not found"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                close = line.rstrip().endswith(b"HTTP/1.0")
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "connection":
                        close = value.strip().lower() == "close"
                fields = line.split()
                response = await self.answer(fields[1].decode("latin-1") if len(fields) > 1 else "/")
                if response is None:
                    break
                writer.write(response)
                await writer.drain()
                if close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def serve_main(args) -> None:
    async def main() -> None:
        web = StandInWeb(Path(args.photos))
        servers = [
            await asyncio.start_server(web.serve, f"127.0.0.{2 + h}", args.port, backlog=1024, reuse_address=True)
            for h in range(args.hosts)
        ]
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, web.stop.set)
        print("ready", flush=True)
        await web.stop.wait()
        for server in servers:
            server.close()

    asyncio.run(main())


def free_port_on_all(hosts: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            port = s.getsockname()[1]
        ok = True
        for h in range(hosts):
            with socket.socket() as s:
                try:
                    s.bind((f"127.0.0.{2 + h}", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no port free on every loopback host")


def start_web(photos: Path, hosts: int) -> tuple[subprocess.Popen, int]:
    port = free_port_on_all(hosts)
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", "--photos", str(photos), "--hosts", str(hosts), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.stdout is None or proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("the stand-in web did not start")
    return proc, port


# ------------------------------------------------------------------------------------------------------ manifests


def url_rows(n: int, hosts: int, photos: int, crawl: bool) -> list[tuple[str, int, int]]:
    """(kind, host index from 0, photo) of each URL: hosts weighted 1/sqrt(rank) (a few big hosts, a long tail)."""
    rng = random.Random(SEED + 1)
    weights = [1 / (rank + 1) ** 0.5 for rank in range(hosts)]
    rows = []
    for _ in range(n):
        host = rng.choices(range(hosts), weights)[0]
        photo = rng.randrange(photos)
        kind, u, acc = "i", rng.random(), 0.0
        for k, share in CRAWL_MIX:
            acc += share
            if u < acc:
                kind = k
                break
        rows.append((kind if crawl else "i", host, photo))
    return rows


def write_manifest(path: Path, urls: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"url": urls, "caption": [f"a photo, row {i}" for i in range(len(urls))]})
    pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)


# ------------------------------------------------------------------------------------------------------ measuring


def tree_rss_kib(root: int) -> int:
    """Summed VmRSS of `root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        pid, ppid = int(entry), int(fields.get("PPid", "0").strip() or 0)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS of the process tree in MiB, stdout), polling /proc every 0.2 s."""
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True
    )
    peak = 0
    out_chunks: list[str] = []
    err_chunks: list[str] = []
    import threading

    threads = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True),
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True),
    ]
    for t in threads:
        t.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss_kib(proc.pid))
        time.sleep(0.2)
    wall = time.monotonic() - started
    for t in threads:
        t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {''.join(err_chunks)[-2000:]}")
    return wall, peak // 1024, "".join(out_chunks)


def lyrics_run(binary: Path, manifest: Path, out: Path, spec: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    wall, rss, stdout = run_measured(
        [str(binary), "run", "--input", str(manifest), "--output", str(out), "--config", str(spec),
         "--progress", "off", "--summary", "json"]  # fmt: skip
    )
    summary = json.loads(stdout.strip().splitlines()[-1])
    ok = summary["rows"]["samples"]
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "rss": rss, "ok": ok, "errors": summary.get("errors_by_kind", {})}


def img2dataset_run(exe: Path, manifest: Path, out: Path) -> dict:
    import pyarrow.parquet as pq

    shutil.rmtree(out, ignore_errors=True)
    wall, rss, _ = run_measured(
        [str(exe), "--url_list", str(manifest), "--input_format", "parquet", "--url_col", "url",
         "--caption_col", "caption", "--output_format", "parquet", "--output_folder", str(out),
         "--processes_count", "2", "--thread_count", "64", "--timeout", "10", "--retries", "0",
         "--resize_mode", "keep_ratio_largest", "--image_size", str(MAX_SIDE), "--encode_quality", str(QUALITY),
         "--encode_format", "jpg", "--distributor", "multiprocessing", "--enable_wandb", "False"],
        env={**os.environ, "WANDB_MODE": "disabled", "DO_NOT_TRACK": "1"},
    )  # fmt: skip
    ok = sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))
    # img2dataset writes a row for every URL; the images are the rows whose status is "success".
    rows = sum(
        pq.read_table(p, columns=["status"]).column("status").to_pylist().count("success") for p in out.glob("*.parquet")
    )
    errors: dict[str, int] = {}
    for p in out.glob("*_stats.json"):
        for message, count in json.loads(p.read_text()).get("status_dict", {}).items():
            if message != "success":
                errors[message[:60]] = errors.get(message[:60], 0) + count
    shutil.rmtree(out, ignore_errors=True)
    if rows != ok:
        raise RuntimeError(f"img2dataset: {ok} successes in its stats but {rows} successful Parquet rows")
    return {"wall": wall, "rss": rss, "ok": ok, "errors": errors}


# ----------------------------------------------------------------------------------------------------------- main


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the stand-in web (the benchmark starts it itself)")
    serve.add_argument("--photos", required=True)
    serve.add_argument("--hosts", type=int, required=True)
    serve.add_argument("--port", type=int, required=True)
    ap.add_argument("--binary", type=Path, default=Path("target/release/lyrics-prep"))
    ap.add_argument("--work", type=Path, default=Path("bench-data/web"))
    ap.add_argument("--urls", type=int, default=20000)
    ap.add_argument("--hosts", type=int, default=100, help="loopback hosts 127.0.0.2 ... (at most 250)")
    ap.add_argument("--photos", type=int, default=500, help="distinct photos the URLs point at")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--runs",
        default="lyrics-crawl,img2dataset-crawl,lyrics-clean,lyrics-local",
        help="which of lyrics-crawl, img2dataset-crawl, lyrics-clean, img2dataset-clean, lyrics-local, in order",
    )
    ap.add_argument("--img2dataset", type=Path, help="the img2dataset executable (default: WORK/../venv/bin)")
    args = ap.parse_args()
    if args.command == "serve":
        serve_main(args)
        return
    if not 1 <= args.hosts <= 250:
        ap.error("--hosts must be 1 to 250")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    binary = args.binary.resolve()
    i2d = (args.img2dataset or work.parent / "venv" / "bin" / "img2dataset").resolve()
    photos = ensure_photos(work, args.photos)
    web, port = start_web(photos, args.hosts)
    try:
        crawl = url_rows(args.urls, args.hosts, args.photos, crawl=True)
        clean = url_rows(args.urls, args.hosts, args.photos, crawl=False)
        url = lambda kind, host, photo: f"http://127.0.0.{2 + host}:{port}/{kind}/{photo:05d}.jpg"  # noqa: E731
        manifests = {"crawl": work / "crawl.parquet", "clean": work / "clean.parquet", "local": work / "local.parquet"}
        write_manifest(manifests["crawl"], [url(*r) for r in crawl])
        write_manifest(manifests["clean"], [url(*r) for r in clean])
        write_manifest(manifests["local"], [str(photos / f"{p:05d}.jpg") for _, _, p in clean])
        expected = {"crawl": sum(k in SUCCESS_KINDS for k, _, _ in crawl), "clean": args.urls, "local": args.urls}
        spec = work / "job.toml"
        spec.write_text(JOB_SPEC)
        runs = [r.strip() for r in args.runs.split(",") if r.strip()]
        results: dict[str, list[dict]] = {r: [] for r in runs}
        for round_ in range(args.rounds):
            for name in runs:
                tool, variant = name.split("-", 1)
                log(f"round {round_ + 1}/{args.rounds}: {name}")
                if tool == "lyrics":
                    res = lyrics_run(binary, manifests[variant], work / "out", spec)
                else:
                    res = img2dataset_run(i2d, manifests[variant], work / "out")
                res["rate"] = res["ok"] / res["wall"]
                log(f"  {res['ok']} ok in {res['wall']:.1f} s ({res['rate']:.0f}/s), peak RSS {res['rss']} MiB; "
                    f"errors {json.dumps(res['errors'])}")  # fmt: skip
                results[name].append(res)
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(timeout=10)
        except subprocess.TimeoutExpired:
            web.kill()
    report(args, results, expected, binary)


def report(args, results: dict[str, list[dict]], expected: dict, binary: Path) -> None:
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.splitlines()
    lines = [
        f"machine: {machine()}",
        f"{args.urls} URLs on {args.hosts} hosts, {args.photos} distinct photos; answers after 75-225 ms; "
        f"crawl mix: 12% 404, 1% never answer, 0.5% slow (3-8 s), 1% HTML, 2% noai, 3% redirect "
        f"({expected['crawl']} fetchable images); {args.rounds} interleaved round(s); "
        f"{version[0] if version else 'lyrics-prep'}",
        "",
        "| run | successful images | images/s (median; per round) | wall s (median) | peak RSS MiB (max) |",
        "|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        if not rows:
            continue
        rates = [r["rate"] for r in rows]
        lines.append(
            f"| {name} | {rows[0]['ok']} of {expected[name.split('-', 1)[1]]} | {statistics.median(rates):.0f}; "
            + ", ".join(f"{x:.0f}" for x in rates)
            + f" | {statistics.median(r['wall'] for r in rows):.1f} | {max(r['rss'] for r in rows)} |"
        )
    lines.append("")

    def ratio(a: str, b: str) -> None:
        if results.get(a) and results.get(b):
            per_round = [x["rate"] / y["rate"] for x, y in zip(results[a], results[b])]
            lines.append(f"{a} / {b}: " + ", ".join(f"{x:.2f}" for x in per_round) + " (per round)")

    ratio("lyrics-crawl", "img2dataset-crawl")
    ratio("lyrics-clean", "img2dataset-clean")
    ratio("lyrics-clean", "lyrics-local")
    for name, rows in results.items():
        if rows:
            lines.append(f"{name} errors (last round): {json.dumps(rows[-1]['errors'])}")
    text = "\n".join(lines)
    print(text)
    (args.work.resolve() / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

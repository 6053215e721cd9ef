#!/usr/bin/env python3
"""The Ray launcher's overhead: the same job run by two `lyrics-prep run --worker i/2` processes (then `finalize`)
and by `python -m lyrics_prep_ray` with two Ray workers, side by side, in interleaved rounds.

    python3 bench/scaleout.py --binary target/release/lyrics-prep --work bench-data/scaleout --units 24

The corpus is the ingest benchmark's WebDataset tars (bench/ingest.py writes them to bench-data/wds/), repeated
under new keys into --units tars. The Ray cluster (2 CPUs, bound to 127.0.0.1) is started before the timings and
stopped after them, as a user's cluster is already running; the launcher's own start (ray.init, planning, task
submission) is timed. Both outputs are checked to hold the same shards, byte for byte. Prints a Markdown table.
"""

import argparse
import hashlib
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def corpus(source: Path, target: Path, units: int) -> int:
    """Writes `units` tars under `target`, copies of the tars in `source` with their keys prefixed; the image count."""
    tars = sorted(source.glob("*.tar"))
    if not tars:
        sys.exit(f"no tars in {source}: run bench/ingest.py first (it writes them)")
    target.mkdir(parents=True, exist_ok=True)
    images = 0
    for unit in range(units):
        out = target / f"shard-{unit:05d}.tar"
        src = tars[unit % len(tars)]
        with tarfile.open(src) as tin:
            members = [(m, tin.extractfile(m).read()) for m in tin.getmembers() if m.isfile()]
        images += sum(1 for m, _ in members if m.name.endswith(".jpg"))
        if out.exists():
            continue
        with tarfile.open(out.with_suffix(".partial"), "w") as tout:
            for member, data in members:
                info = tarfile.TarInfo(f"u{unit:05d}-{member.name}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tout.addfile(info, io.BytesIO(data))
        out.with_suffix(".partial").rename(out)
    return images


def shards(output: Path) -> dict:
    return {
        str(p.relative_to(output)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(output.rglob("*.parquet"))
    }


def timed(commands, env) -> float:
    """Runs `commands` (lists of argv run at once), then waits for all; the wall time of the whole."""
    start = time.perf_counter()
    for group in commands:
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for argv in group]
        for proc, argv in zip(procs, group):
            _, err = proc.communicate()
            if proc.returncode != 0:
                sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / "target/release/lyrics-prep"))
    ap.add_argument("--work", default=str(ROOT / "bench-data/scaleout"))
    ap.add_argument("--source", default=str(ROOT / "bench-data/wds"), help="tars to repeat (bench/ingest.py's)")
    ap.add_argument("--units", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    binary = str(Path(a.binary).resolve())
    work = Path(a.work).resolve()
    input_dir = work / "corpus"
    images = corpus(Path(a.source), input_dir, a.units)
    job = ROOT / "bench-data/lyrics-job.toml"
    config = ["--config", str(job)] if job.exists() else []

    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(ROOT / "python"))
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    ray_temp = tempfile.mkdtemp(prefix="ray-")
    subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_temp}"],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )
    ray_grouped = "Ray launcher, two workers, --units-per-task 1 (a process per unit)"
    times = {"two processes (--worker i/2, then finalize)": [], "Ray launcher, two workers": [], ray_grouped: []}
    try:
        for _ in range(a.rounds):
            for label in times:
                out = work / ("workers" if label.startswith("two") else "ray-grouped" if label == ray_grouped else "ray")
                shutil.rmtree(out, ignore_errors=True)
                common = ["--input", str(input_dir), "--output", str(out), *config]
                if label.startswith("two"):
                    workers = [[binary, "run", *common, "--worker", f"{i}/2", "--progress", "off"] for i in range(2)]
                    commands = [workers, [[binary, "finalize", "--output", str(out)]]]
                else:
                    commands = [[[sys.executable, "-m", "lyrics_prep_ray", *common, "--binary", binary,
                                  "--address", f"127.0.0.1:{port}", "--progress-every", "60",
                                  *(["--units-per-task", "1"] if label == ray_grouped else [])]]]
                times[label].append(timed(commands, env))
        same = shards(work / "workers") == shards(work / "ray") == shards(work / "ray-grouped")
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(ray_temp, ignore_errors=True)
    if not same:
        sys.exit("the two outputs differ")

    base = statistics.median(times["two processes (--worker i/2, then finalize)"])
    print(f"# Scale-out overhead, {images:,} images in {a.units} units, {a.rounds} interleaved rounds\n")
    print("| run | wall s (median) | all rounds | images/s | time / two processes |")
    print("|---|---:|---|---:|---:|")
    for label, ts in times.items():
        m = statistics.median(ts)
        rounds = ", ".join(f"{t:.1f}" for t in ts)
        print(f"| {label} | {m:.1f} | {rounds} | {images / m:.0f} | {m / base:.2f} |")
    print("\nThe shards of all outputs are identical, byte for byte.")
    print(f"\n```sh\npython3 bench/scaleout.py {' '.join(sys.argv[1:])}\n```")


if __name__ == "__main__":
    main()

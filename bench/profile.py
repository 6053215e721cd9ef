#!/usr/bin/env python3
"""Where an ingest run's CPU time goes: a `perf` profile of lyrics-prep on the ingest benchmark's corpus, in shares.

    python3 bench/profile.py --binary target/release/lyrics-prep --work bench-data

Runs `lyrics-prep run` (the ingest benchmark's job: max side 512, JPEG q90, Parquet) under `perf record` (sampling
every thread at 999 Hz), then sorts every sample's function into the steps of ingest: JPEG decode, resize, JPEG
encode, SHA-256, tar parsing, Parquet and zstd, memory copies and allocation, the kernel, and the rest (hand-offs,
the runtime). Prints a Markdown table of the shares and the ten hottest functions left in "other". The corpus is
the one `bench/ingest.py --images N` writes under WORK (it is made here if missing).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402  (the corpus and the job spec are the ingest benchmark's)

# First match wins; patterns are matched against "dso symbol".
STEPS = [
    ("SHA-256", r"sha256|Sha256|ring_core.*sha|sha2_"),
    ("resize", r"fast_image_resize|resample|convolution|interleave4"),
    (
        "JPEG decode",
        r"decode_mcu|idct|ycc_rgb|upsample|fill_bit_buffer|huff_decode|jdhuff|decompress|process_data|"
        r"jpeg_read|consume_|decode_mcu_fast|jsimd_can_idct|start_pass_huff_decoder|get_sos|read_markers",
    ),
    (
        "JPEG encode",
        r"encode_mcu|huff_encode|fdct|quantize|rgb_ycc|downsample|compress_data|forward_DCT|encode_one_block|"
        r"finish_pass|emit_|jpeg_write|compress_output|pre_process|jcsample|jchuff|encode_|convsamp",
    ),
    ("JPEG stream checks (EOI search)", r"image::jpeg::truncation|try_fold"),
    ("Parquet and zstd", r"ZSTD|zstd|parquet|arrow|HUF_|FSE_|snap"),
    ("tar parsing", r"\btar::|tar::archive|tar::header"),
    ("memory copies and allocation", r"memcpy|memmove|memset|malloc|_int_free|_int_malloc|cfree|realloc|__libc_|alloc::|unlink_chunk"),
    ("kernel: page faults", r"\[kernel.*(page_fault|clear_page|do_anonymous|handle_mm|folio_add|lru_)"),
    ("kernel: file reads and writes", r"\[kernel.*(copy_folio|_copy_to_iter|copy_page|filemap|ext4|xfs|vfs_|generic_perform)"),
    ("kernel: thread switches and wake-ups", r"\[kernel.*(spin_unlock_irqrestore|finish_task_switch|irqentry|schedule|futex|try_to_wake|_raw_spin_lock|select_task|enqueue|dequeue)"),
    ("kernel: the rest", r"\[kernel"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, default=Path("target/release/lyrics-prep"))
    ap.add_argument("--work", type=Path, default=Path("bench-data"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--config", type=Path, help="a job spec instead of the ingest benchmark's")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        print("perf is missing (Debian: linux-perf)", file=sys.stderr)
        return 1
    work = args.work.resolve()
    ingest.ensure_corpus(work, args.images)
    cfg = args.config or work / "lyrics-job.toml"
    if args.config is None:
        cfg.write_text(ingest.JOB_SPEC)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        out, data = Path(tmp) / "out", Path(tmp) / "perf.data"
        cmd = [str(args.binary.resolve()), "run", "--input", str(work / "wds"), "--output", str(out)]
        cmd += ["--config", str(cfg), "--progress", "off"]
        subprocess.run(["perf", "record", "-q", "-F", "999", "-o", str(data), "--", *cmd], check=True)
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym", "--percent-limit", "0"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    shares: dict[str, float] = collections.defaultdict(float)
    others: list[tuple[float, str]] = []
    line_re = re.compile(r"^\s+([0-9.]+)%\s+(\S+)\s+\[.\]\s+(.*)$")
    for line in report.splitlines():
        m = line_re.match(line)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
        text = f"{dso} {sym}"
        for step, pattern in STEPS:
            if re.search(pattern, text):
                shares[step] += pct
                break
        else:
            shares["other (hand-offs, runtime, the rest)"] += pct
            others.append((pct, f"{sym} ({dso})"))
    total = sum(shares.values()) or 1.0
    print(f"CPU time of `{' '.join(cmd[1:2])}` on {args.images:,} images, by step (perf, 999 Hz, every thread):\n")
    print("| step | share of CPU time |")
    print("|---|---:|")
    for step, _ in [*STEPS, ("other (hand-offs, runtime, the rest)", "")]:  # noqa: B007
        if step in shares:
            print(f"| {step} | {100 * shares[step] / total:.1f}% |")
    print("\nHottest functions in other:\n")
    for pct, name in sorted(others, reverse=True)[:10]:
        print(f"- {pct:.2f}% {name[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

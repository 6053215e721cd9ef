#!/usr/bin/env python3
"""`lyrics-prep sql` against DuckDB on the same shards: five annotation queries (the README's), each warm, median
of 5, side by side in one run. Prints a table.

    python3 bench/sql.py --binary target/release/lyrics-prep --work bench-data/sql [--images 40000]

The output is synthetic but of lyrics-prep's exact schema (copied from a real shard of `lyrics-prep demo`): refined
samples with 1-6 objects each (labels from a 20-tag vocabulary, boxes, COCO RLE masks of rectangles, tags), no
image bytes, and an errors table; plan and manifest as `run` writes them. lyrics-prep is timed two ways: as a
command is run (one `lyrics-prep sql` process per query, start-up and catalog included; its floor, `SELECT 1`, is
printed beside), and warm in one process as DuckDB is (the query piped six times into one `lyrics-prep sql
--timing`, the median of the last five). DuckDB runs in-process through its Python API, on `read_parquet` of the
same files.
"""

import argparse
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

LABELS = ["person", "dog", "cat", "car", "tree", "chair", "table", "cup", "bottle", "bird", "horse", "bus",
          "bicycle", "boat", "phone", "book", "clock", "bench", "sky", "grass"]
KINDS = [("decode", "not_an_image"), ("decode", "truncated"), ("read", "missing_file"), ("refine", "model")]


def rle_rectangle(h, w, x0, y0, x1, y1):
    """COCO compressed RLE (column-major runs, zeros first) of a filled rectangle."""
    runs, current, run = [], 0, 0
    for x in range(w):
        for y in range(h):
            v = 1 if x0 <= x < x1 and y0 <= y < y1 else 0
            if v != current:
                runs.append(run)
                run, current = 0, v
            run += 1
    runs.append(run)
    out = []
    for i, c in enumerate(runs):
        x = c - runs[i - 2] if i > 2 else c  # as pycocotools' rleToString: deltas against two counts back
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def synthesize(work, binary, images, seed=7):
    demo = work / "demo"
    if not (demo / "output" / "_SUCCESS").exists():
        subprocess.run([binary, "demo", "--to", str(demo)], check=True, capture_output=True)
    shard = sorted((demo / "output" / "samples").glob("*.parquet"))[0]
    schema = pq.read_schema(shard)
    error_schema = pq.read_schema(sorted((demo / "output" / "errors").glob("*.parquet"))[0])
    out = work / "output"
    for sub in ("samples", "errors", "_lyrics"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    per_shard, shards, objects_total = 10_000, [], 0
    mask_h, mask_w = 24, 32  # masks at a small size keep the files small; the functions do not care
    for unit in range((images + per_shard - 1) // per_shard):
        rows = []
        for i in range(unit * per_shard, min(images, (unit + 1) * per_shard)):
            objects = []
            for _ in range(rng.randint(1, 6)):
                label = "person" if rng.random() < 0.3 else rng.choice(LABELS)
                x0, y0 = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
                x1, y1 = x0 + rng.uniform(0.05, 0.3), y0 + rng.uniform(0.05, 0.3)
                px = [int(x0 * mask_w), int(y0 * mask_h), max(int(x1 * mask_w), int(x0 * mask_w) + 1),
                      max(int(y1 * mask_h), int(y0 * mask_h) + 1)]
                objects.append({
                    "label": label, "phrase": label, "score": rng.uniform(0.2, 1.0), "box": [x0, y0, x1, y1],
                    "mask": {"size": [mask_h, mask_w], "counts": rle_rectangle(mask_h, mask_w, *px)},
                    "mask_area": (px[2] - px[0]) * (px[3] - px[1]), "mask_score": rng.uniform(0.5, 1.0),
                })
            objects_total += len(objects)
            tags = [{"tag": t, "score": rng.uniform(0.68, 1.0)} for t in sorted({o["label"] for o in objects})]
            rows.append({
                "key": f"{i:09d}", "source": f"s3://corpus/shard-{unit:05d}.tar#{i:09d}.jpg",
                "image": {"bytes": None, "path": f"{i:09d}.jpg"}, "caption": "a synthetic scene",
                "captions": ["a synthetic scene"], "width": 640, "height": 480, "format": "jpeg",
                "sha256": "0" * 64, "meta": None, "tags": tags, "objects": objects, "refiner": "{}",
            })
        path = f"samples/part-{unit:06d}-000.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / path, compression="zstd")
        shards.append({"path": path, "table": "samples", "rows": len(rows), "bytes": (out / path).stat().st_size,
                       "schema_version": "2"})
    errors = [{"key": f"e{i}", "source": "s3://corpus/x.tar", "stage": s, "kind": k, "error": f"{k} of e{i}"}
              for i in range(5000) for s, k in [rng.choice(KINDS)]]
    path = "errors/part-000000-000.parquet"
    pq.write_table(pa.Table.from_pylist(errors, schema=error_schema), out / path, compression="zstd")
    shards.append({"path": path, "table": "errors", "rows": len(errors), "bytes": (out / path).stat().st_size,
                   "schema_version": "2"})
    units = [{"id": u, "object": f"corpus/shard-{u:05d}.tar"} for u in range(len(shards) - 1)]
    plan = {"created_by": "bench/sql.py", "spec_hash": "bench", "plan_hash": "bench", "input": "s3://corpus/",
            "tables": ["samples", "errors"], "format": "webdataset", "units": units}
    (out / "_lyrics" / "plan.json").write_text(json.dumps(plan))
    manifest = {"created_by": "bench/sql.py", "schema_version": "2", "spec_hash": "bench", "units": len(units),
                "items": images + len(errors), "rows": {"samples": images, "errors": len(errors)},
                "errors_by_kind": {}, "shards": shards}
    (out / "_lyrics" / "manifest.json").write_text(json.dumps(manifest))
    (out / "_SUCCESS").write_text("")
    return out, objects_total


def queries(samples, errors):
    """(name, lyrics-prep SQL, DuckDB SQL): the same question in each engine's dialect."""
    s = f"read_parquet('{samples}')"
    e = f"read_parquet('{errors}')"
    objects = f"(SELECT key, unnest(objects) AS o FROM {s})"
    return [
        ("top tags",
         "SELECT tag, count(*) AS n FROM tags GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10",
         f"SELECT t.tag, count(*) AS n FROM (SELECT unnest(tags) AS t FROM {s}) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"),
        ("images with >= 3 person boxes",
         "SELECT count(*) FROM (SELECT key FROM objects WHERE label = 'person' GROUP BY key HAVING count(*) >= 3)",
         f"SELECT count(*) FROM (SELECT key FROM {objects} WHERE o.label = 'person' GROUP BY key "
         "HAVING count(*) >= 3)"),
        ("box-area histogram per label",
         "SELECT label, floor(box_area(box) * 10) / 10 AS a, count(*) FROM objects GROUP BY 1, 2 ORDER BY 1, 2",
         f"SELECT o.label, floor(greatest(o.box[3] - o.box[1], 0) * greatest(o.box[4] - o.box[2], 0) * 10) / 10 AS a, "
         f"count(*) FROM {objects} GROUP BY 1, 2 ORDER BY 1, 2"),
        ("errors by stage and kind",
         "SELECT stage, kind, count(*) FROM errors GROUP BY 1, 2 ORDER BY 1, 2",
         f"SELECT stage, kind, count(*) FROM {e} GROUP BY 1, 2 ORDER BY 1, 2"),
        ("confident dogs (filter)",
         "SELECT count(*) FROM objects WHERE label = 'dog' AND score > 0.5",
         f"SELECT count(*) FROM {objects} WHERE o.label = 'dog' AND o.score > 0.5"),
    ]


def median_time(run, repeats=5):
    run()  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--work", default="bench-data/sql")
    parser.add_argument("--images", type=int, default=40_000)
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out, objects = synthesize(work, args.binary, args.images)
    print(f"{args.images} images, {objects} objects in {out}")
    con = duckdb.connect()

    def ours(sql):
        return lambda: subprocess.run([args.binary, "sql", "--output", str(out), "--format", "csv", sql],
                                      check=True, capture_output=True)

    floor = median_time(ours("SELECT 1"))
    print(f"lyrics-prep sql floor (process start, catalog, SELECT 1): {floor * 1000:.0f} ms\n")
    def warm_time(sql, repeats=5):
        # One process, the statement piped 1 + repeats times; `--timing` prints each one's time on stderr.
        script = (sql + ";\n") * (repeats + 1)
        run = subprocess.run([args.binary, "sql", "--output", str(out), "--format", "csv", "--timing"],
                             input=script, check=True, capture_output=True, text=True)
        times = [float(line.split()[1]) / 1000 for line in run.stderr.splitlines() if line.startswith("time: ")]
        if len(times) != repeats + 1:
            raise SystemExit(f"expected {repeats + 1} timings, got: {run.stderr}")
        return statistics.median(times[1:])

    print("| query | lyrics-prep sql, a process (ms) | lyrics-prep sql, warm (ms) | DuckDB (ms) | ratio, a process "
          "| ratio, warm |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ours_sql, duck_sql in queries(out / "samples" / "*.parquet", out / "errors" / "*.parquet"):
        # Both engines must give the same answer before their times mean anything.
        printed = subprocess.run([args.binary, "sql", "--output", str(out), "--format", "csv", ours_sql],
                                 check=True, capture_output=True, text=True).stdout.strip().splitlines()[1:]
        mine = [tuple(cell for cell in line.split(",")) for line in printed]
        theirs = [tuple(str(v) for v in row) for row in con.execute(duck_sql).fetchall()]
        if len(mine) != len(theirs) or [r[-1] for r in mine] != [r[-1] for r in theirs]:
            raise SystemExit(f"{name}: the engines disagree:\n{mine[:5]}\n{theirs[:5]}")
        a = median_time(ours(ours_sql))
        w = warm_time(ours_sql)
        b = median_time(lambda: con.execute(duck_sql).fetchall())
        print(f"| {name} | {a * 1000:.0f} | {w * 1000:.1f} | {b * 1000:.1f} | {a / b:.2f} | {w / b:.2f} |")


if __name__ == "__main__":
    main()

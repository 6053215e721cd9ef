#!/usr/bin/env python3
"""Reads a lyrics-prep output folder with four independent readers and checks they agree with the manifest.

    check_output.py OUTPUT_DIR --samples N [--errors M]

pyarrow, DuckDB and polars must see the schema and the row counts, from the shards' paths and (pyarrow, polars,
`datasets`) from each table's folder opened whole; Hugging Face `datasets` (offline) must load the
samples table with its Image feature and decode every image to the stored width and height; `datasets`'
`split_dataset_by_node` stands in for a trainer's sharded reading. Exits non-zero with a message on any mismatch.
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SAMPLE_COLUMNS = ["key", "source", "image", "caption", "captions", "width", "height", "format", "sha256", "meta"]
REFINED_COLUMNS = ["tags", "objects", "refiner"]
ERROR_COLUMNS = ["key", "source", "stage", "kind", "error"]


def sample_columns_ok(columns):
    """The base columns in order, then the refiner's columns (always written, null when no refiner ran)."""
    return columns in (SAMPLE_COLUMNS, SAMPLE_COLUMNS + REFINED_COLUMNS)


def fail(message):
    print(f"check_output: {message}", file=sys.stderr)
    sys.exit(1)


def expect(condition, message):
    if not condition:
        fail(message)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--errors", type=int, default=None)
    args = parser.parse_args()
    out = Path(args.output)

    manifest = json.loads((out / "_lyrics" / "manifest.json").read_text())
    expect((out / "_SUCCESS").exists(), "_SUCCESS is missing")
    expect(manifest["rows"]["samples"] == args.samples, f"manifest says {manifest['rows']['samples']} samples")
    for shard in manifest["shards"]:
        path = out / shard["path"]
        expect(path.exists(), f"manifest lists {shard['path']}, which is missing")
        expect(path.stat().st_size == shard["bytes"], f"{shard['path']} has {path.stat().st_size} bytes, manifest says {shard['bytes']}")

    sample_files = sorted(str(p) for p in (out / "samples").glob("*.parquet"))
    expect(sample_files, "no sample shards")

    import pyarrow.parquet as pq

    table = pq.read_table(sample_files)
    expect(table.num_rows == args.samples, f"pyarrow reads {table.num_rows} samples")
    expect(sample_columns_ok(table.column_names), f"pyarrow columns {table.column_names}")
    metadata = table.schema.metadata or {}
    expect(metadata.get(b"lyrics.schema_version") == b"3", "schema version metadata missing")
    expect(b"huggingface" in metadata, "huggingface features metadata missing")
    for f in sample_files:
        expect(pq.ParquetFile(f).metadata.num_rows > 0, f"{f} is empty")

    import duckdb

    pattern = str(out / "samples" / "*.parquet")
    n = duckdb.sql(f"select count(*) from read_parquet('{pattern}')").fetchall()[0][0]
    expect(n == args.samples, f"DuckDB counts {n} samples")
    keys = duckdb.sql(f"select count(distinct key) from read_parquet('{pattern}')").fetchall()[0][0]
    expect(keys == args.samples, f"DuckDB sees {keys} distinct keys for {args.samples} samples")
    dims = duckdb.sql(f"select min(width), min(height) from read_parquet('{pattern}')").fetchall()[0]
    expect(dims[0] > 0 and dims[1] > 0, f"DuckDB sees non-positive sizes {dims}")

    import polars as pl

    frame = pl.read_parquet(pattern)
    expect(frame.height == args.samples, f"polars reads {frame.height} samples")
    expect(sample_columns_ok(frame.columns), f"polars columns {frame.columns}")

    import datasets

    ds = datasets.load_dataset("parquet", data_files={"train": sample_files}, split="train")
    expect(len(ds) == args.samples, f"datasets loads {len(ds)} samples")
    expect(isinstance(ds.features["image"], datasets.Image), f"datasets sees image as {ds.features['image']}")
    for row in ds:
        image = row["image"]
        expect(image.size == (row["width"], row["height"]), f"{row['key']}: decoded {image.size}, stored {row['width']}x{row['height']}")
    from datasets.distributed import split_dataset_by_node

    parts = [len(split_dataset_by_node(ds, rank=r, world_size=2)) for r in range(2)]
    expect(sum(parts) == args.samples, f"split_dataset_by_node gives {parts}")

    # Each table's folder opened as a whole, as users open it: whatever else the folder holds (a staging file a
    # killed writer left) must not break these readers.
    for table in ("samples", "errors", "pretrain", "instruct"):
        folder = out / table
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            continue
        rows = manifest["rows"].get(table, 0)
        n = pq.read_table(str(folder)).num_rows
        expect(n == rows, f"pyarrow reads {n} rows from the folder {table}/, the manifest says {rows}")
        n = pl.read_parquet(str(folder) + "/").height
        expect(n == rows, f"polars reads {n} rows from the folder {table}/, the manifest says {rows}")
    n = len(datasets.load_dataset("parquet", data_dir=str(out / "samples"), split="train"))
    expect(n == args.samples, f"datasets loads {n} samples from the folder samples/")

    if args.errors is not None:
        error_files = sorted(str(p) for p in (out / "errors").glob("*.parquet"))
        errors = pq.read_table(error_files).num_rows if error_files else 0
        expect(errors == args.errors, f"pyarrow reads {errors} error rows, expected {args.errors}")
        if error_files:
            expect(pq.read_table(error_files).column_names == ERROR_COLUMNS, "error columns differ")
            m = duckdb.sql(f"select count(*) from read_parquet('{out / 'errors' / '*.parquet'}')").fetchall()[0][0]
            expect(m == args.errors, f"DuckDB counts {m} error rows")

    print(f"ok: {args.samples} samples read alike by pyarrow, DuckDB, polars and datasets")


if __name__ == "__main__":
    main()

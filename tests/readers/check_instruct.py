#!/usr/bin/env python3
"""Checks lyrics-prep's instruction data the way trainers consume it.

    check_instruct.py OUTPUT_DIR EXPORT_DIR --conversations N

- the `instruct` table loads with Hugging Face `datasets` (offline) and has N rows;
- every conversation passes a LLaVA-format validator: turns alternate human/gpt starting with human, exactly one
  `<image>` placeholder, in the first human turn, and no empty value;
- EXPORT_DIR/llava.json loads with `json.load`, holds the same conversations, and every image it names exists in
  EXPORT_DIR/images/ and decodes with Pillow;
- EXPORT_DIR/instruct.jsonl (when present) holds one valid JSON conversation per line.
"""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def fail(message):
    print(f"check_instruct: {message}", file=sys.stderr)
    sys.exit(1)


def validate(conversation, where):
    turns = conversation["conversations"]
    if len(turns) < 2 or len(turns) % 2:
        fail(f"{where}: {len(turns)} turns")
    for i, turn in enumerate(turns):
        if turn["from"] != ("human" if i % 2 == 0 else "gpt"):
            fail(f"{where}: turn {i} is from {turn['from']}")
        if not turn["value"].strip():
            fail(f"{where}: turn {i} is empty")
    images = sum(t["value"].count("<image>") for t in turns)
    if images != 1 or "<image>" not in turns[0]["value"]:
        fail(f"{where}: {images} <image> placeholders, or not in the first human turn")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("output")
    ap.add_argument("export")
    ap.add_argument("--conversations", type=int, required=True)
    a = ap.parse_args()
    import datasets

    files = sorted(str(p) for p in (Path(a.output) / "instruct").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train")
    if len(ds) != a.conversations:
        fail(f"datasets loads {len(ds)} conversations, expected {a.conversations}")
    for row in ds:
        validate(row, row["id"])
    exported = json.load(open(Path(a.export) / "llava.json"))
    if len(exported) != a.conversations:
        fail(f"llava.json has {len(exported)} conversations")
    from PIL import Image

    for entry in exported:
        validate(entry, entry["id"])
        image = Path(a.export) / "images" / entry["image"]
        if not image.exists():
            fail(f"{entry['id']}: image {image} missing")
        Image.open(image).verify()
    by_id = {row["id"]: row["conversations"] for row in ds}
    for entry in exported:
        if by_id[entry["id"]] != entry["conversations"]:
            fail(f"{entry['id']}: llava.json differs from the table")
    jsonl = Path(a.export) / "instruct.jsonl"
    if jsonl.exists():
        lines = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        if len(lines) != a.conversations:
            fail(f"instruct.jsonl has {len(lines)} lines")
        for entry in lines:
            validate(entry, entry["id"])
    print(f"ok: {a.conversations} conversations valid in the table, llava.json and images")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks lyrics-prep's ms-swift and InternVL exports the way those frameworks read them.

    fine_tuning_exports.py OUTPUT_DIR SWIFT_DIR INTERNVL_DIR --conversations N

OUTPUT_DIR is the job's output (its `samples` give each key's objects, `instruct` the conversations), SWIFT_DIR
holds `swift.jsonl` and `images/`, INTERNVL_DIR `internvl.jsonl` and `images/`.

ms-swift (github.com/modelscope/ms-swift): the file loads with Hugging Face `datasets`' JSON loader, as ms-swift
loads a local `.jsonl`; each record has `messages` alternating user/assistant, one `<image>` per image, as many
`<ref-object>` and `<bbox>` placeholders as `objects.ref` and `objects.bbox` hold, image paths that resolve
against the export folder (ms-swift's `_check_path` in swift/template/vision_utils.py, with ROOT_IMAGE_DIR). The
placeholders are then filled as ms-swift's templates fill them, ported here: `Template.normalize_bbox` (swift/
template/base.py: `int(round(x / width * norm_width))`, `bbox_type: norm1` meaning width = height = 1),
`Qwen2VLTemplate.replace_ref` / `replace_bbox` (swift/template/templates/qwen.py, `legacy` format) with
`Template._get_bbox_str`, for Qwen2-VL (`norm1000`) and Qwen2.5-VL (`norm_bbox = 'none'`: pixels of the image as
qwen-vl-utils' `fetch_image` resizes it, its `smart_resize` called here); `InternvlTemplate.replace_ref` /
`replace_bbox` (swift/template/templates/internvl.py). The boxes read back from the filled text, mapped to the
image, must each be an object's box of the sample, within one step of the model's grid plus one pixel; the refs
must be phrases the sample's objects or caption carry.

InternVL (github.com/OpenGVLab/InternVL): each line is a JSON object; `LazySupervisedDataset.multi_modal_get_item`
(internvl_chat/internvl/train/internvl_chat_finetune.py) needs `<image>` in the first turn (once), opens
`root/image` with `Image.open(...).convert('RGB')`, whose size must be the record's `width` and `height`; boxes are
read as `eval/refcoco/evaluate_grounding.py` reads them (`PATTERN = r'\\[*\\[(.*?),(.*?),(.*?),(.*?)\\]\\]*'`,
divided by 1000, times the image's width and height) and must each be an object's box of the sample.

The ms-swift check with ms-swift's own code, which needs torch, is tests/reference/swift_templates.py.
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REF, BOX = "<ref-object>", "<bbox>"


def fail(message):
    print(f"fine_tuning_exports: {message}", file=sys.stderr)
    sys.exit(1)


def objects_by_key(output):
    """Each sample's objects as (phrase, [x1, y1, x2, y2] fractions), its caption and its size."""
    import pyarrow.parquet as pq

    samples = {}
    for path in sorted((Path(output) / "samples").glob("*.parquet")):
        for row in pq.read_table(path, columns=["key", "width", "height", "caption", "objects"]).to_pylist():
            objects = [(o["phrase"], o["box"]) for o in row["objects"] or []]
            samples[row["key"]] = (objects, row["caption"] or "", row["width"], row["height"])
    return samples


def near(box, boxes, step, size):
    """Whether `box` (fractions) is one of `boxes` within `step` (a fraction) plus a pixel on each axis."""
    w, h = size
    tol = [step + 1 / w, step + 1 / h] * 2
    return any(all(abs(a - b) <= t + 1e-6 for a, b, t in zip(box, other, tol)) for other in boxes)


# --- ms-swift, ported -------------------------------------------------------------------------------------------


def normalize_bbox(bbox, bbox_type, width, height, norm_width, norm_height):
    """swift/template/base.py `Template.normalize_bbox` for one box."""
    if bbox_type == "norm1":
        width, height = 1, 1
    out = list(bbox)
    for i, (x, y) in enumerate(zip(bbox[::2], bbox[1::2])):
        out[2 * i] = int(round(x / width * norm_width))
        out[2 * i + 1] = int(round(y / height * norm_height))
    return out


def get_bbox_str(bbox):
    """swift/template/base.py `Template._get_bbox_str`."""
    return ",".join(f"({x},{y})" for x, y in zip(bbox[::2], bbox[1::2]))


def fill(content, refs, boxes, replace_ref, replace_bbox):
    """Each `<ref-object>` and `<bbox>` replaced in order, as `Template._pre_tokenize` does."""
    out = []
    for part in re.split(r"(<ref-object>|<bbox>)", content):
        if part == REF:
            out.append(replace_ref(refs.pop(0)))
        elif part == BOX:
            out.append(replace_bbox(boxes.pop(0)))
        else:
            out.append(part)
    return "".join(out)


def check_swift(folder, samples, expected):
    import datasets
    from PIL import Image
    sys.path.insert(0, str(Path(__file__).parent))
    # qwen-vl-utils' own smart_resize, read without importing torch.
    from grounded_formats import smart_resize

    ds = datasets.load_dataset("json", data_files={"train": str(Path(folder) / "swift.jsonl")}, split="train")
    if len(ds) != expected:
        fail(f"swift.jsonl: datasets loads {len(ds)} records, expected {expected}")
    boxes_read = 0
    for n, record in enumerate(ds):
        where = f"swift.jsonl record {n}"
        messages, images, objects = record["messages"], record["images"], record["objects"]
        if [m["role"] for m in messages] != ["user", "assistant"] * (len(messages) // 2) or not messages:
            fail(f"{where}: roles {[m['role'] for m in messages]}")
        if len(images) != 1 or sum(m["content"].count("<image>") for m in messages) != 1:
            fail(f"{where}: {len(images)} images and a <image> count that differs")
        if objects["bbox_type"] != "norm1":
            fail(f"{where}: bbox_type {objects['bbox_type']}")
        refs, bboxes = objects["ref"], objects["bbox"]
        for placeholder, values in ((REF, refs), (BOX, bboxes)):
            count = sum(m["content"].count(placeholder) for m in messages)
            if count != len(values):
                fail(f"{where}: {count} {placeholder} but {len(values)} values")
        # ms-swift resolves a relative path against ROOT_IMAGE_DIR: the export folder.
        path = Path(folder) / images[0]
        if not path.exists():
            fail(f"{where}: image {path} missing")
        image = Image.open(path)
        w, h = image.size
        key = Path(images[0]).relative_to("images").with_suffix("").as_posix()
        objects_of, caption, sw, sh = samples[key]
        if (sw, sh) != (w, h):
            fail(f"{where}: the image opens as {w}x{h}, the sample is {sw}x{sh}")
        known = [b for _, b in objects_of]
        phrases = {p for p, _ in objects_of}
        for ref in refs:
            if ref not in phrases and ref not in caption:
                fail(f"{where}: ref {ref!r} is no phrase of {key} nor words of its caption")
        rh, rw = smart_resize(h, w, 28)  # qwen-vl-utils' fetch_image: patch 14 × merge 2
        templates = {
            # name: (norm size, reader of the filled text back to fractions, grid step)
            "qwen2_vl": ((1000, 1000), (1000, 1000), 1 / 1000),
            "qwen2_5_vl": ((rw, rh), (rw, rh), 1 / min(rw, rh)),
        }
        for name, (norm, back, step) in templates.items():
            text = "".join(
                fill(
                    m["content"],
                    list(refs),
                    [normalize_bbox(b, "norm1", w, h, *norm) for b in bboxes],
                    lambda r: f"<|object_ref_start|>{r}<|object_ref_end|>",
                    lambda b: f"<|box_start|>{get_bbox_str(b)}<|box_end|>",
                )
                for m in messages
            )
            if REF in text or BOX in text:
                fail(f"{where} {name}: placeholders left in {text!r}")
            found = re.findall(r"<\|box_start\|>\((\d+),(\d+)\),\((\d+),(\d+)\)<\|box_end\|>", text)
            if len(found) != len(bboxes):
                fail(f"{where} {name}: {len(found)} boxes read back from {text!r}")
            for f in found:
                box = [int(f[0]) / back[0], int(f[1]) / back[1], int(f[2]) / back[0], int(f[3]) / back[1]]
                if not near(box, known, step, (w, h)):
                    fail(f"{where} {name}: box {f} ({box}) is no object of {key}: {known}")
            boxes_read += len(found)
        for b in bboxes:
            if not near(b, known, 0, (w, h)):
                fail(f"{where}: norm1 box {b} is no object of {key}")
        text = "".join(
            fill(
                m["content"],
                list(refs),
                [normalize_bbox(b, "norm1", w, h, 1000, 1000) for b in bboxes],
                lambda r: f"<ref>{r}</ref>",
                lambda b: f"<box>[{b}]</box>",
            )
            for m in messages
        )
        if len(re.findall(r"<box>\[\[\d+, \d+, \d+, \d+\]\]</box>", text)) != len(bboxes):
            fail(f"{where} internvl template: boxes not as InternVL writes them in {text!r}")
    return len(ds), boxes_read


def check_internvl(folder, samples, expected):
    from PIL import Image

    pattern = re.compile(r"\[*\[(.*?),(.*?),(.*?),(.*?)\]\]*")
    lines = [line for line in (Path(folder) / "internvl.jsonl").read_text().splitlines() if line.strip()]
    if len(lines) != expected:
        fail(f"internvl.jsonl: {len(lines)} lines, expected {expected}")
    boxes_read = 0
    for n, line in enumerate(lines):
        item = json.loads(line)
        where = f"internvl.jsonl line {n + 1} ({item.get('id')})"
        turns = item["conversations"]
        if sum(t["value"].count("<image>") for t in turns) != 1 or "<image>" not in turns[0]["value"]:
            fail(f"{where}: <image> is not once, in the first turn")
        if [t["from"] for t in turns] != ["human", "gpt"] * (len(turns) // 2):
            fail(f"{where}: turns {[t['from'] for t in turns]}")
        path = Path(folder) / "images" / item["image"]
        image = Image.open(path).convert("RGB")
        if image.size != (item["width"], item["height"]):
            fail(f"{where}: {path} opens as {image.size}, the record says {item['width']}x{item['height']}")
        key = Path(item["image"]).with_suffix("").as_posix()
        objects_of, caption, _, _ = samples[key]
        known = [b for _, b in objects_of]
        w, h = image.size
        for t in turns:
            for box_text in re.findall(r"<box>(.*?)</box>", t["value"]):
                for f in pattern.findall(box_text):
                    box = [float(v) / 1000 for v in f]
                    if not near(box, known, 1 / 1000, (w, h)):
                        fail(f"{where}: box {f} is no object of {key}: {known}")
                    boxes_read += 1
            for ref in re.findall(r"<ref>(.*?)</ref>", t["value"]):
                if ref not in {p for p, _ in objects_of} and ref not in caption:
                    fail(f"{where}: ref {ref!r} is no phrase of {key} nor words of its caption")
            if REF in t["value"] or BOX in t["value"]:
                fail(f"{where}: ms-swift placeholders left in {t['value']!r}")
    return len(lines), boxes_read


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("output")
    ap.add_argument("swift")
    ap.add_argument("internvl")
    ap.add_argument("--conversations", type=int, required=True)
    a = ap.parse_args()
    samples = objects_by_key(a.output)
    records, boxes = check_swift(a.swift, samples, a.conversations)
    print(f"ok: swift.jsonl: {records} records, {boxes} boxes read back through the Qwen2-VL and Qwen2.5-VL templates")
    lines, boxes = check_internvl(a.internvl, samples, a.conversations)
    print(f"ok: internvl.jsonl: {lines} records, {boxes} boxes read back as InternVL's evaluation reads them")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reads grounded text the way each trainer reads it, and maps the boxes back to pixels of the displayed image.

Where the trainer's code installs from PyPI without a GPU it is called directly:
- Kosmos-2: transformers' `extract_entities_with_patch_indices` and `patch_index_to_coordinate`
  (transformers/models/kosmos2/processing_kosmos2.py);
- Florence-2: transformers' `Florence2PostProcessor.parse_description_with_bboxes_from_text_and_spans`
  (transformers/models/florence2/processing_florence2.py). Its `dequantize` builds a torch tensor, and torch is not
  installed for the tests, so `dequantize` is the port below of the same method (bin centre, then `.int()`);
- Qwen2.5-VL and Qwen3-VL frames: qwen-vl-utils' `smart_resize` (qwen_vl_utils/vision_process.py), taken from the
  installed package's source with `ast` because the module imports torch at the top.

Where it does not, this file carries a faithful port, citing the repository, file and function:
- Qwen-VL: QwenLM/Qwen-VL, tokenization_qwen.py, `_fetch_all_box_with_ref` and `draw_bbox_on_latest_picture`;
- Qwen2-VL: the same reading with Qwen2-VL's special tokens (ms-swift, swift/template/templates/qwen.py,
  `replace_bbox` with `bbox_format == 'legacy'`);
- Shikra: shikras/shikra, mllm/dataset/process_function/box_process_function.py, `PlainBoxFormatter.extract`;
  mllm/dataset/utils/transform.py, `de_norm_box_xyxy`, inverted `box_xyxy_expand2square`;
- LLaVA-1.5: haotian-liu/LLaVA, llava/mm_utils.py, `expand2square` (the boxes are fractions of that square);
- InternVL: OpenGVLab/InternVL, internvl_chat/eval/refcoco/evaluate_grounding.py, `PATTERN` and the `/ 1000`
  scaling in `evaluate_chat_model`;
- MiniGPT-v2: Vision-CAIR/MiniGPT-4, demo_v2.py, `extract_substrings` and `visualize_all_bbox_together`;
- PaliGemma: google-research/big_vision, big_vision/evaluators/proj/paligemma/transfers/segmentation.py
  (`tokens[:, :4] / 1023`, y first);
- Ferret: apple/ml-ferret, ferret/eval/eval_flickr_entities.py, `decode_bbox_from_caption` and `resize_bbox`.

    grounded_formats.py CASES.json OUT.json

CASES.json: {"cases": [{"format", "width", "height", "text"}], "sizes": [[width, height], ...]}.
OUT.json: {"cases": [{"phrases": [...], "boxes": [[x1, y1, x2, y2] pixels of the displayed image]}],
"qwen2_5_vl": [[width, height] of smart_resize(factor 28)], "qwen3_vl": [... factor 32, 65536..16777216],
"kosmos2_patch_index": [[ul, lr]] of `coordinate_to_patch_index` for CASES.json's "kosmos2_boxes"}.
"""
import ast
import importlib.util
import json
import math
import re
import sys
import types
import typing

import numpy as np
import transformers.models.florence2.processing_florence2 as florence2
from transformers.models.kosmos2.processing_kosmos2 import (
    coordinate_to_patch_index,
    extract_entities_with_patch_indices,
    patch_index_to_coordinate,
)


def qwen_vl_utils_smart_resize():
    """qwen-vl-utils' own `smart_resize` and its helpers and constants, without importing torch."""
    spec = importlib.util.find_spec("qwen_vl_utils")
    assert spec is not None, "qwen-vl-utils is not installed (scripts/setup.sh installs it)"
    path = spec.submodule_search_locations[0] + "/vision_process.py"
    tree = ast.parse(open(path).read())
    wanted = {"round_by_factor", "ceil_by_factor", "floor_by_factor", "smart_resize"}
    body = [
        n for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name in wanted)
        or (isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and all(isinstance(t, ast.Name) and t.id.isupper() for t in n.targets))
    ]
    names = {f.name for f in body if isinstance(f, ast.FunctionDef)}
    assert names == wanted, f"qwen-vl-utils' vision_process.py no longer defines {wanted - names}"
    scope = {"math": math, "Optional": typing.Optional, "Tuple": typing.Tuple}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), scope)
    return scope["smart_resize"]


smart_resize = qwen_vl_utils_smart_resize()


def qwen_vl(text, w, h, start="<ref>", end="</ref>", box_start="<box>", box_end="</box>"):
    # QwenLM/Qwen-VL tokenization_qwen.py: to_list_format splits refs and boxes; _fetch_all_box_with_ref gives a box
    # its ref when the ref comes right before it; draw_bbox_on_latest_picture scales int(v / 1000 * side).
    pattern = re.compile(re.escape(start) + r"(.*?)" + re.escape(end) + r"|" + re.escape(box_start) + r"(.*?)"
                         + re.escape(box_end))
    out, previous = [], None
    for m in pattern.finditer(text):
        if m.group(1) is not None:
            previous = m.group(1).strip()
            continue
        x1, y1, x2, y2 = map(int, m.group(2).replace("(", "").replace(")", "").split(","))
        out.append((previous, [int(x1 / 1000 * w), int(y1 / 1000 * h), int(x2 / 1000 * w), int(y2 / 1000 * h)]))
        previous = None
    return out


def qwen2_vl(text, w, h):
    return qwen_vl(text, w, h, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>")


def json_boxes(text):
    body = text.strip().removeprefix("```json").removesuffix("```")
    return [(item.get("label"), item["bbox_2d"]) for item in json.loads(body)]


def qwen2_5_vl(text, w, h):
    # Absolute pixels of the image as smart_resize(h, w, 28) resizes it.
    rh, rw = smart_resize(h, w, 28)
    return [(p, [b[0] / rw * w, b[1] / rh * h, b[2] / rw * w, b[3] / rh * h]) for p, b in json_boxes(text)]


def qwen3_vl(text, w, h):
    return [(p, [b[0] / 1000 * w, b[1] / 1000 * h, b[2] / 1000 * w, b[3] / 1000 * h]) for p, b in json_boxes(text)]


def kosmos2(text, w, h):
    out = []
    for phrase, _, patches in extract_entities_with_patch_indices(text):
        for ul, lr in patches:
            x1, y1, x2, y2 = patch_index_to_coordinate(ul, lr, 32)
            out.append((phrase, [x1 * w, y1 * h, x2 * w, y2 * h]))
    return out


def expand2square_offsets(w, h):
    # shikras/shikra mllm/dataset/utils/transform.py box_xyxy_expand2square; LLaVA's expand2square pastes at the same
    # (max(w, h) - side) // 2.
    if w > h:
        return 0, (w - h) // 2
    return (h - w) // 2, 0


def shikra(text, w, h):
    # PlainBoxFormatter(precision=3).extract: `[a,b,c,d;a,b,c,d]` groups; the phrase is the text before the bracket.
    pat = re.compile(r'\[\d(?:\.\d*)?(?:,\d(?:\.\d*)?){3}(?:;\d(?:\.\d*)?(?:,\d(?:\.\d*)?){3})*\]')
    side = max(w, h)
    dx, dy = expand2square_offsets(w, h)
    out, at = [], 0
    for m in pat.finditer(text):
        phrase = text[at:m.start()].strip()
        at = m.end()
        for box in m.group(0).strip("[]").split(";"):
            x1, y1, x2, y2 = map(float, box.split(","))
            # de_norm_box_xyxy on the square, then box_xyxy_expand2square undone.
            out.append((phrase, [x1 * side - dx, y1 * side - dy, x2 * side - dx, y2 * side - dy]))
    return out


def llava(text, w, h):
    side = max(w, h)
    dx, dy = expand2square_offsets(w, h)
    out = []
    for group in text.split("; "):
        phrase = group[:group.find("[")].strip()
        for m in re.finditer(r"\[([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)\]", group):
            x1, y1, x2, y2 = map(float, m.groups())
            out.append((phrase, [x1 * side - dx, y1 * side - dy, x2 * side - dx, y2 * side - dy]))
    return out


def internvl(text, w, h):
    # evaluate_grounding.py: PATTERN finds `[x1, y1, x2, y2]`; boxes are divided by 1000 and scaled by hw.
    pattern = re.compile(r'\[*\[(.*?),(.*?),(.*?),(.*?)\]\]*')
    out = []
    for m in re.finditer(r"<ref>(.*?)</ref><box>(.*?)</box>", text):
        for b in pattern.findall(m.group(2)):
            x1, y1, x2, y2 = (float(v) / 1000 for v in b)
            out.append((m.group(1), [x1 * w, y1 * h, x2 * w, y2 * h]))
    return out


def minigpt_v2(text, w, h):
    # demo_v2.py: extract_substrings, then `</p>` splits the phrase, `<delim>` the boxes, integers / 100 * side.
    index = text.rfind('}')
    if index != -1:
        text = text[:index + 1]
    out = []
    for string in re.findall(r'<p>(.*?)\}(?!<)', text):
        obj, string = string.split('</p>')
        for bbox_string in string.split('<delim>'):
            integers = re.findall(r'-?\d+', bbox_string)
            if len(integers) == 4:
                x0, y0, x1, y1 = map(int, integers)
                out.append((obj, [x0 / 100 * w, y0 / 100 * h, x1 / 100 * w, y1 / 100 * h]))
    return out


def paligemma(text, w, h):
    # big_vision's segmentation evaluator: four <locNNNN> tokens, y_min x_min y_max x_max, divided by 1023.
    out = []
    for m in re.finditer(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>\s*([^;<]*)", text):
        y1, x1, y2, x2 = (int(v) / 1023 for v in m.groups()[:4])
        out.append((m.group(5).strip(), [x1 * w, y1 * h, x2 * w, y2 * h]))
    return out


def florence2_dequantize(locations, size):
    # Florence2PostProcessor.dequantize: the centre of the bin, then `.int()`.
    bins_w, bins_h = 1000, 1000
    per_bin_w, per_bin_h = size[0] / bins_w, size[1] / bins_h
    locations = np.asarray(locations, dtype=np.float64)
    scale = np.array([per_bin_w, per_bin_h, per_bin_w, per_bin_h])
    return ((locations + 0.5) * scale).astype(np.int64)


def florence2_parse(text, w, h):
    post = object.__new__(florence2.Florence2PostProcessor)
    post.banned_grounding_tokens = set()
    post.dequantize = florence2_dequantize
    # The method wraps the bins in torch.tensor before dequantizing; the port above takes a list as it is.
    florence2.torch = types.SimpleNamespace(tensor=lambda v: v)
    found = post.parse_description_with_bboxes_from_text_and_spans(text, image_size=(w, h))
    return [(i["cat_name"], list(i["bbox"])) for i in found]


def ferret(text, w, h):
    # eval_flickr_entities.py decode_bbox_from_caption: the entity is the text before `[`, the box int(v * side /
    # 1000); after `]` it skips to the next delimiter.
    out = []
    start = 0
    for i, char in enumerate(text):
        if char == '[':
            entity = text[start:i].strip()
            start = i + 1
        elif char == ']':
            box = text[start:i].strip()
            start = i + 1
            box_list = list(map(int, box.split(',')))
            ratio_w, ratio_h = w * 1.0 / 1000, h * 1.0 / 1000  # resize_bbox
            out.append((entity, [int(box_list[0] * ratio_w), int(box_list[1] * ratio_h),
                                 int(box_list[2] * ratio_w), int(box_list[3] * ratio_h)]))
            while start < len(text) and text[start] not in ['.', ',', ';', '!', '?']:
                start += 1
            start += 1
    return out


def lyrics(text, w, h):
    out = []
    for m in re.finditer(r"(?:^|; )([^;:]+): \[([\d.]+), ([\d.]+), ([\d.]+), ([\d.]+)\]", text):
        x1, y1, x2, y2 = map(float, m.groups()[1:])
        out.append((m.group(1), [x1 * w, y1 * h, x2 * w, y2 * h]))
    return out


READERS = {
    "lyrics": lyrics, "qwen": qwen_vl, "kosmos2": kosmos2, "shikra": shikra, "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl, "qwen3_vl": qwen3_vl, "internvl": internvl, "minigpt_v2": minigpt_v2,
    "paligemma": paligemma, "florence2": florence2_parse, "llava": llava, "ferret": ferret,
}


def main():
    cases_path, out_path = sys.argv[1], sys.argv[2]
    spec = json.load(open(cases_path))
    cases = []
    for case in spec["cases"]:
        reader = READERS.get(case["format"])
        if reader is None:
            sys.exit(f"no reader for the format {case['format']!r}: add one to {__file__}")
        found = reader(case["text"], case["width"], case["height"])
        cases.append({"phrases": [p for p, _ in found], "boxes": [[float(v) for v in b] for _, b in found]})
    sizes = spec["sizes"]
    out = {
        "cases": cases,
        "qwen2_5_vl": [list(reversed(smart_resize(h, w, 28))) for w, h in sizes],
        "qwen3_vl": [list(reversed(smart_resize(h, w, 32, 65536, 16777216))) for w, h in sizes],
        "kosmos2_patch_index": [list(coordinate_to_patch_index(tuple(b), 32)) for b in spec["kosmos2_boxes"]],
    }
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    main()

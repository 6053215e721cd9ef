#!/usr/bin/env python3
"""An independent Python implementation of the refiner's pre- and post-processing, to check lyrics-prep against.

It follows the reference code structure with numpy + onnxruntime + Pillow + tokenizers:
- RAM (recognize-anything `ram/transform.py`, `generate_tag`): 384x384 bilinear, ImageNet mean/std, sigmoid, per-class
  thresholds, tags in tag-list order; prompt as the Grounded-SAM RAM demo builds it.
- Grounding DINO (`groundingdino/util/inference.py`, X-AnyLabeling's ONNX runner, the Grounded-SAM demo):
  RandomResize([800], max_size=1333), ImageNet normalization, `generate_masks_with_special_tokens_and_transfer_map`,
  sigmoid, box/text thresholds, `get_phrases_from_posmap`, boxes to pixels, torchvision-style NMS.
- SAM (`segment_anything/utils/transforms.py` ResizeLongestSide, `Sam.preprocess`, the ONNX example notebook): box
  corners with labels 2 and 3, the first low-resolution mask of the decoder's output brought to the image as
  SamPredictor does (`Sam.postprocess_masks`), thresholded at 0.

    refiner_reference.py MODELS_DIR --export idea|hf OUT.json IMAGE...

Writes, for each image, {"image": path, "width", "height", "tags": [[tag, score]...],
"objects": [{"phrase", "score", "box": [x1,y1,x2,y2] normalized, "mask": {"size", "counts"}}]}.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SAM_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
SAM_STD = np.array([58.395, 57.12, 57.375], np.float32)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------------------------------------------ RAM


def ram_tags(session, image, tags, thresholds):
    x = np.asarray(image.resize((384, 384), Image.BILINEAR), np.float32) / 255.0
    x = ((x - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
    out = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    scores = sigmoid(out) if (out.min() < 0 or out.max() > 1) else out
    return [(tags[i], float(scores[i])) for i in range(len(tags)) if scores[i] > thresholds[i]]


# ---------------------------------------------------------------------------------------- Grounding DINO


def get_size_with_aspect_ratio(image_size, size, max_size=None):
    w, h = image_size
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (w <= h and w == size) or (h <= w and h == size):
        return (h, w)
    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)
    return (oh, ow)


def generate_masks_with_special_tokens_and_transfer_map(input_ids, special_tokens_list):
    bs, num_token = input_ids.shape
    special_tokens_mask = np.zeros((bs, num_token), dtype=bool)
    for special_token in special_tokens_list:
        special_tokens_mask |= input_ids == special_token
    idxs = np.argwhere(special_tokens_mask)
    attention_mask = np.eye(num_token, dtype=bool).reshape(1, num_token, num_token).repeat(bs, axis=0)
    position_ids = np.zeros((bs, num_token), dtype=np.int64)
    previous_col = 0
    for i in range(idxs.shape[0]):
        row, col = idxs[i]
        if (col == 0) or (col == num_token - 1):
            attention_mask[row, col, col] = True
            position_ids[row, col] = 0
        else:
            attention_mask[row, previous_col + 1 : col + 1, previous_col + 1 : col + 1] = True
            position_ids[row, previous_col + 1 : col + 1] = np.arange(0, col - previous_col)
        previous_col = col
    return attention_mask, position_ids


def get_phrases_from_posmap(posmap, input_ids, tokenizer, left_idx=0, right_idx=255):
    posmap = posmap.copy()
    posmap[0 : left_idx + 1] = False
    posmap[right_idx:] = False
    non_zero_idx = np.nonzero(posmap)[0]
    token_ids = [int(input_ids[i]) for i in non_zero_idx if i < len(input_ids)]
    return tokenizer.decode(token_ids)


def nms(boxes, scores, threshold):
    order = np.argsort(-scores, kind="stable")
    keep = []
    for i in order:
        ok = True
        for k in keep:
            xx1 = max(boxes[k][0], boxes[i][0]); yy1 = max(boxes[k][1], boxes[i][1])
            xx2 = min(boxes[k][2], boxes[i][2]); yy2 = min(boxes[k][3], boxes[i][3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            area = lambda b: max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
            union = area(boxes[k]) + area(boxes[i]) - inter
            if union > 0 and inter / union > threshold:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


def grounding_dino(session, export, tokenizer, image, caption, box_threshold, text_threshold, iou_threshold):
    w, h = image.size
    oh, ow = get_size_with_aspect_ratio((w, h), 800, 1333)
    shape = session.get_inputs()[0].shape
    if all(isinstance(d, int) for d in shape[2:]):
        oh, ow = shape[2], shape[3]  # a graph traced at one size: its callers stretch every image to it
    x = np.asarray(image.resize((ow, oh), Image.BILINEAR), np.float32) / 255.0
    x = ((x - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
    caption = caption.lower().strip()
    if not caption.endswith("."):
        caption = caption + "."
    enc = tokenizer.encode(caption)
    input_ids = np.array([enc.ids], np.int64)[:, :256]
    n = input_ids.shape[1]
    attention = np.array([enc.attention_mask], np.int64)[:, :n]
    types = np.array([enc.type_ids], np.int64)[:, :n]
    special = [tokenizer.token_to_id(t) for t in ["[CLS]", "[SEP]", ".", "?"] if tokenizer.token_to_id(t) is not None]
    text_mask, position_ids = generate_masks_with_special_tokens_and_transfer_map(input_ids, special)
    if export == "idea":
        feeds = {"img": x, "input_ids": input_ids, "attention_mask": attention.astype(bool), "position_ids": position_ids,
                 "token_type_ids": types, "text_token_mask": text_mask}
        logits, boxes = session.run(["logits", "boxes"], feeds)
    else:
        feeds = {"pixel_values": x, "input_ids": input_ids, "token_type_ids": types, "attention_mask": attention,
                 "pixel_mask": np.ones((1, oh, ow), np.int64)}
        logits, boxes = session.run(["logits", "pred_boxes"], feeds)
    logits = sigmoid(logits[0])
    boxes = boxes[0]
    keep = logits.max(axis=1) > box_threshold
    found = []
    for logit, box in zip(logits[keep], boxes[keep]):
        phrase = get_phrases_from_posmap(logit > text_threshold, enc.ids, tokenizer)
        b = box * np.array([w, h, w, h], np.float32)
        xyxy = [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]
        found.append((phrase, float(logit.max()), [float(v) for v in xyxy]))
    order = nms([f[2] for f in found], np.array([f[1] for f in found], np.float32), iou_threshold)
    return [found[i] for i in order]


class Timed:
    """An onnxruntime session whose `run` calls are timed, to sum what the loop spends inside the graphs."""

    total = 0.0

    def __init__(self, session):
        self.session = session

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, *args):
        start = time.perf_counter()
        out = self.session.run(*args)
        Timed.total += time.perf_counter() - start
        return out


# ------------------------------------------------------------------------------------------------------ SAM


def get_preprocess_shape(oldh, oldw, long_side_length):
    scale = long_side_length * 1.0 / max(oldh, oldw)
    newh, neww = oldh * scale, oldw * scale
    return (int(newh + 0.5), int(neww + 0.5))


def sam_masks(encoder, decoder, image, boxes):
    w, h = image.size
    nh, nw = get_preprocess_shape(h, w, 1024)
    x = np.asarray(image.resize((nw, nh), Image.BILINEAR), np.float32)
    x = (x - SAM_MEAN) / SAM_STD
    padded = np.zeros((1024, 1024, 3), np.float32)
    padded[:nh, :nw] = x
    emb = encoder.run(["image_embeddings"], {encoder.get_inputs()[0].name: padded.transpose(2, 0, 1)[None]})[0]
    out = []
    for box in boxes:
        coords = np.array(box, np.float64).reshape(2, 2)
        coords[..., 0] = coords[..., 0] * (nw / w)
        coords[..., 1] = coords[..., 1] * (nh / h)
        feeds = {
            "image_embeddings": emb,
            "point_coords": coords[None].astype(np.float32),
            "point_labels": np.array([[2, 3]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([h, w], np.float32),
        }
        low, iou = decoder.run(["low_res_masks", "iou_predictions"], feeds)
        out.append((postprocess_masks(low[0, 0], (nh, nw), (h, w)) > 0.0, float(iou[0, 0])))
    return out


def interpolate(plane, out_h, out_w):
    """torch.nn.functional.interpolate(mode="bilinear", align_corners=False) of a 2-D array."""
    in_h, in_w = plane.shape

    def axis(n_in, n_out):
        x = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (x - lo).astype(np.float32)

    (y0, y1, wy), (x0, x1, wx) = axis(in_h, out_h), axis(in_w, out_w)
    rows = plane[:, x0] * (1 - wx) + plane[:, x1] * wx
    return rows[y0] * (1 - wy)[:, None] + rows[y1] * wy[:, None]


def postprocess_masks(low, input_size, original_size):
    """SamPredictor's Sam.postprocess_masks: to the padded 1024 frame, the resized image cropped, to the original."""
    full = interpolate(low.astype(np.float32), 1024, 1024)[: input_size[0], : input_size[1]]
    return interpolate(full, original_size[0], original_size[1])


def rle_encode(mask):
    """pycocotools' compressed RLE of a HxW bool mask (column-major runs, zeros first)."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = [int(c) for c in np.diff(np.concatenate([[0], changes, [flat.size]]))]
    if flat.size and flat[0]:
        counts = [0] + counts
    s = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            s.append(chr(c + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(s)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models")
    ap.add_argument("--export", default="idea")
    ap.add_argument("--box-threshold", type=float, default=0.25)
    ap.add_argument("--text-threshold", type=float, default=0.2)
    ap.add_argument("--iou-threshold", type=float, default=0.6)
    ap.add_argument("--tag-threshold", type=float, default=0.68)
    ap.add_argument("--thresholds", help="RAM's per-class thresholds file (one per tag), instead of --tag-threshold")
    ap.add_argument("--max-detections", type=int, default=0, help="keep the best N boxes after NMS (0: all)")
    ap.add_argument("--session-times", action="store_true", help="print the summed session.run time on stderr")
    ap.add_argument("out")
    ap.add_argument("images", nargs="+")
    a = ap.parse_args()
    m = a.models.rstrip("/")
    opts = ort.SessionOptions()
    tagger = ort.InferenceSession(f"{m}/tagger.onnx", opts, providers=["CPUExecutionProvider"])
    detector = ort.InferenceSession(f"{m}/detector_{a.export}.onnx", opts, providers=["CPUExecutionProvider"])
    encoder = ort.InferenceSession(f"{m}/sam_encoder.onnx", opts, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(f"{m}/sam_decoder.onnx", opts, providers=["CPUExecutionProvider"])
    if a.session_times:
        tagger, detector, encoder, decoder = (Timed(x) for x in (tagger, detector, encoder, decoder))
    tokenizer = Tokenizer.from_file(f"{m}/tokenizer.json")
    tags = [t.strip() for t in open(f"{m}/tags.txt") if t.strip()]
    thresholds = [a.tag_threshold] * len(tags)
    if a.thresholds:
        thresholds = [float(t) for t in open(a.thresholds) if t.strip()]
    results = []
    for path in a.images:
        image = Image.open(path).convert("RGB")
        w, h = image.size
        found_tags = ram_tags(tagger, image, tags, thresholds)
        objects = []
        if found_tags:
            prompt = " | ".join(t for t, _ in found_tags).replace(" |", ",")
            detections = grounding_dino(detector, a.export, tokenizer, image, prompt, a.box_threshold, a.text_threshold, a.iou_threshold)
            if a.max_detections > 0:
                detections = sorted(detections, key=lambda d: -d[1])[: a.max_detections]
            clamped = [[min(max(b[0], 0), w), min(max(b[1], 0), h), min(max(b[2], 0), w), min(max(b[3], 0), h)] for _, _, b in detections]
            masks = sam_masks(encoder, decoder, image, clamped)
            for (phrase, score, _), box, (mask, iou) in zip(detections, clamped, masks):
                objects.append({
                    "phrase": phrase,
                    "score": score,
                    "box": [box[0] / w, box[1] / h, box[2] / w, box[3] / h],
                    "mask": rle_encode(mask),
                    "mask_score": iou,
                })
        results.append({"image": path, "width": w, "height": h, "tags": found_tags, "objects": objects})
    json.dump(results, open(a.out, "w"), indent=1)
    if a.session_times:
        print(f"session_run_s {Timed.total:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An independent Python implementation of SAM 3's text-prompted inference on its public ONNX layouts, to check
lyrics-prep against (numpy + onnxruntime + Pillow + tokenizers; no torch).

It follows usls's `scripts/sam3-image/inference_v2.py` (`Sam3ONNXInferenceV2`: `preprocess_image`, `encode_text`,
`decode` with one padding box labelled -10) and `inference.py` (v1: the text features are the decoder's prompt),
and ports transformers' `Sam3ImageProcessor.post_process_instance_segmentation`
(`models/sam3/image_processing_sam3.py`, which `Sam3Processor.post_process_instance_segmentation` calls):
scores = sigmoid(pred_logits) * sigmoid(presence_logits), kept where > threshold; boxes (xyxy fractions) times
[w, h, w, h] (`_scale_boxes`); masks sigmoid, `interpolate(bilinear, align_corners=False)` to the image, > 0.5.
Then lyrics-prep's merge rule: each prompt's kept instances through class-agnostic NMS (torchvision's: best score
first, ties in query order, IoU strictly above the threshold suppresses) and the cap, then all prompts' instances
through them again.

    sam3_reference.py MODELS_DIR --vision F --text F --decoder F --tokenizer F --threshold T --iou T --max N
        --prompt P [--prompt P ...] OUT.json IMAGE...

Writes, for each image, {"image", "width", "height", "objects": [{"phrase", "score", "box" (normalized, clamped),
"mask": COCO RLE}]}, and "margin": how close any decision was (a score to the threshold, an IoU to the NMS
threshold), so a caller can tell ties from disagreements.
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps
from tokenizers import Tokenizer

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from refiner_reference import interpolate, rle_encode, sigmoid  # noqa: E402


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def nms_at_most(boxes, scores, threshold, limit, margins):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if len(keep) == limit:
            break
        ok = True
        for k in keep:
            v = iou(boxes[k], boxes[i])
            margins.append(abs(v - threshold))
            if v > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


class Sam3:
    def __init__(self, vision, text, decoder, tokenizer):
        options = ort.SessionOptions()
        self.vision = ort.InferenceSession(vision, options, providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(text, options, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(decoder, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in self.decoder.get_inputs()]
        self.v2 = "input_boxes" in names
        shape = self.vision.get_inputs()[0].shape
        self.height, self.width = shape[2], shape[3]
        self.tokenizer = Tokenizer.from_file(tokenizer)
        self.tokenizer.enable_padding(length=32, pad_id=49407)
        self.tokenizer.enable_truncation(max_length=32)

    def preprocess_image(self, image):
        resized = np.array(image.resize((self.width, self.height), Image.BILINEAR))
        normalized = resized.astype(np.float32) / 127.5 - 1.0
        return normalized.transpose(2, 0, 1)[np.newaxis]

    def encode_text(self, text):
        encoded = self.tokenizer.encode(text)
        ids = np.array([encoded.ids], dtype=np.int64)
        mask = np.array([encoded.attention_mask], dtype=np.int64)
        return self.text.run(None, {"input_ids": ids, "attention_mask": mask})[:2]

    def decode(self, fpn, text_features, text_mask):
        feeds = dict(zip(["fpn_feat_0", "fpn_feat_1", "fpn_feat_2", "fpn_pos_2"], fpn))
        if self.v2:
            feeds.update({"text_features": text_features, "text_mask": text_mask,
                          "input_boxes": np.zeros((1, 1, 4), np.float32),
                          "input_boxes_labels": np.full((1, 1), -10, np.int64)})
        else:
            feeds.update({"prompt_features": text_features, "prompt_mask": text_mask})
        return self.decoder.run(["pred_masks", "pred_boxes", "pred_logits", "presence_logits"], feeds)


def post_process_instance_segmentation(outputs, threshold, mask_threshold, target_size, margins):
    """transformers' `Sam3ImageProcessor.post_process_instance_segmentation` for one image (batch of 1)."""
    pred_masks, pred_boxes, pred_logits, presence_logits = outputs
    scores = sigmoid(pred_logits[0].astype(np.float64)).astype(np.float32) * \
        sigmoid(presence_logits[0].astype(np.float64)).astype(np.float32)
    h, w = target_size
    boxes = pred_boxes[0] * np.array([w, h, w, h], np.float32)
    keep = scores > threshold
    margins.extend(np.abs(scores - threshold).tolist())
    kept = np.flatnonzero(keep)
    masks = [interpolate(sigmoid(pred_masks[0, q].astype(np.float32)), h, w) > mask_threshold for q in kept]
    return [(float(scores[q]), boxes[q].tolist(), m) for q, m in zip(kept, masks)]


def main():
    parser = argparse.ArgumentParser()
    for key in ["--vision", "--text", "--decoder", "--tokenizer"]:
        parser.add_argument(key, required=True)
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--iou", type=float, required=True)
    parser.add_argument("--max", type=int, required=True)
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("out")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    model = Sam3(args.vision, args.text, args.decoder, args.tokenizer)
    threshold = np.float32(args.threshold)
    results = []
    for path in args.images:
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        w, h = image.size
        fpn = model.vision.run(None, {"images": model.preprocess_image(image)})
        margins = []
        candidates = []
        for prompt in args.prompt:
            outputs = model.decode(fpn, *model.encode_text(prompt))
            found = post_process_instance_segmentation(outputs, threshold, 0.5, (h, w), margins)
            boxes, scores = [f[1] for f in found], [f[0] for f in found]
            for i in nms_at_most(boxes, scores, args.iou, args.max, margins):
                candidates.append((prompt, *found[i]))
        boxes, scores = [c[2] for c in candidates], [c[1] for c in candidates]
        objects = []
        for i in nms_at_most(boxes, scores, args.iou, args.max, margins):
            prompt, score, box, mask = candidates[i]
            b = [min(max(box[0], 0.0), w) / w, min(max(box[1], 0.0), h) / h,
                 min(max(box[2], 0.0), w) / w, min(max(box[3], 0.0), h) / h]
            objects.append({"phrase": prompt, "score": score, "box": b, "mask": rle_encode(mask)})
        results.append({"image": path, "width": w, "height": h, "objects": objects,
                        "margin": min(margins) if margins else 1.0})
    pathlib.Path(args.out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()

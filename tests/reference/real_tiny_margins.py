#!/usr/bin/env python3
"""How close each Grounding DINO decision in `examples/models/real-tiny/reference.json` came to going the other way.

With random weights many queries score alike, and ONNX Runtime's kernels differ by CPU (AVX-512 or AVX2 code paths)
in the last bits of the logits, as the sigmoid implementations of PyTorch and of lyrics-prep differ in the last bit
of a score. A detection whose fate such a difference decides tells a regression from nothing: the parity test
(tests/e2e_real_models.rs) leaves out the detections whose margin is under its tie threshold, and counts them.

Each query's margin, in logit units, is the smallest of:
- its best token logit's distance to the box threshold (kept or not);
- each of its phrase's token logits' distance to the text threshold (which tokens make the phrase);
- for every box it overlaps beyond the NMS IoU threshold, the two best logits' difference, or 0 where the two scores
  are within a few float32 units of each other (then the order is decided by rounding, or by the query order that
  the graph's top-k makes), or where the IoU is within rounding of the threshold;
- the margin of every such box scoring above it: NMS keeps or drops a box by what the boxes above it became.

The masks of transformers' SAM (`hf_sam`, `hf_sam_points`) are each the best of three by predicted IoU: their margin
is the best predicted IoU's lead over the second (random weights predict IoUs around 1e-3, some within 1e-7 of each
other, and the three masks differ).

    real_tiny_margins.py MODELS_DIR [--write]

runs the committed `gdino_hf.onnx` with ONNX Runtime on the reference's own inputs, and transformers' SAM split
(`hf_sam_*.onnx`) on SamProcessor's, on this machine's kernels, and checks that every decision of
MODELS_DIR/reference.json comes out the same here but for ties; with `--write` it then records the margins and
rivals found here in reference.json. It needs numpy, ONNX Runtime, Pillow and tokenizers
only; scripts/export_real_models.py calls `annotate` on the outputs it post-processes.
"""
import json
import math
import pathlib
import sys

import numpy as np

# The parity test's tie threshold (`TIE` in tests/e2e_real_models.rs): what a CPU may decide either way.
TIE = 1e-3
# The parity test's tie threshold for a mask choice (`MASK_TIE`), in predicted-IoU units: PyTorch's and ONNX
# Runtime's predicted IoUs differ by up to 8e-8 on these graphs.
MASK_TIE = 1e-5
# Rivals (boxes the reference suppressed or cut at the threshold) are recorded up to this margin.
RECORDED = 0.1
# Scores this many float32 units apart or closer are a tie: two sigmoid implementations may round them either way.
SCORE_ULPS = 4
# An IoU this close to the NMS threshold is decided by the box arithmetic's last bits.
IOU_ROUNDING = 1e-5


def logit(p):
    return math.log(p / (1.0 - p))


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def queries(logits, boxes, width, height, settings):
    """Every query of one image (`logits` [queries, 256], `boxes` [queries, 4] cx, cy, w, h relative) as transformers'
    post-processing sees it: score (float32 sigmoid of the best token logit), box in pixels, whether the threshold
    and class-agnostic NMS keep it, and its margin (for a query under the threshold: its distance to it)."""
    logits = np.asarray(logits, np.float32)
    best = logits.max(-1).astype(np.float64)
    scores = (1.0 / (1.0 + np.exp(-best))).astype(np.float32)
    cx, cy, w, h = np.asarray(boxes, np.float32).T
    scale = np.array([width, height, width, height], np.float32)
    pixels = (np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 1) * scale).tolist()
    box_logit, text_logit = logit(settings["box_threshold"]), logit(settings["text_threshold"])
    thr = settings["iou_threshold"]
    found = [{"query": q, "score": float(scores[q]), "box": pixels[q], "logit": float(best[q]),
              "margin": abs(float(best[q]) - box_logit), "passes": bool(scores[q] > settings["box_threshold"]),
              "kept": False} for q in range(len(best))]
    # NMS order: score, then query order (torch's stable sort, lyrics-prep's tie-break).
    order = sorted((d for d in found if d["passes"]), key=lambda d: (-d["score"], d["query"]))
    kept = []
    for rank, d in enumerate(order):
        # The tokens get_phrases_from_posmap may pick: not [CLS], not from 255 on; the padding is -inf.
        tokens = logits[d["query"], 1:255].astype(np.float64)
        tokens = tokens[np.isfinite(tokens)]
        margin = min([d["margin"]] + [float(np.min(np.abs(tokens - text_logit)))] * bool(len(tokens)))
        for other_rank, other in enumerate(order):
            overlap = iou(d["box"], other["box"])
            if other is d or overlap <= thr - IOU_ROUNDING:
                continue
            a, b = np.float32(d["score"]), np.float32(other["score"])
            tied = abs(float(a) - float(b)) <= SCORE_ULPS * float(np.spacing(max(a, b)))
            if overlap <= thr + IOU_ROUNDING or tied:
                margin = 0.0
            margin = min(margin, abs(d["logit"] - other["logit"]))
            if other_rank < rank:
                margin = min(margin, other["margin"])
        d["margin"] = margin
        if all(iou(d["box"], k["box"]) <= thr for k in kept):
            kept.append(d)
            d["kept"] = True
    return found


def annotate(detections, logits, boxes, width, height, settings):
    """Sets `margin` on each of one image's reference `detections` (transformers' post-processing then NMS, boxes in
    pixels) from the raw outputs they were made of, and returns the rivals: the queries the reference did not keep
    whose margin is under RECORDED (a tie may keep them elsewhere), as {"box", "score", "margin"}. Fails where the
    outputs do not give these detections other than by a tie."""
    found = queries(logits, boxes, width, height, settings)
    matched = set()
    for det in detections:
        match = next((d for d in found if d["query"] not in matched and abs(d["score"] - det["score"]) < 1e-5
                      and all(abs(x - y) < 1e-3 for x, y in zip(d["box"], det["box"]))), None)
        assert match is not None, f"no query gives {det}"
        assert match["kept"] or match["margin"] < TIE, f"the reference keeps {det}, and no tie explains it"
        matched.add(match["query"])
        det["margin"] = round(match["margin"], 6)
    others = [d for d in found if d["query"] not in matched]
    assert all(d["margin"] < TIE for d in others if d["kept"]), f"kept here, not in the reference: {others}"
    return [{"box": d["box"], "score": d["score"], "margin": round(d["margin"], 6)}
            for d in others if d["margin"] < RECORDED]


# --- recomputing the committed reference's margins ---------------------------------------------------------------

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
GDINO_HF_SIZE = (800, 1066)


def dino_input(img):
    """scripts/export_real_models.py's `dino_input`: stretched to the graph's size with PIL's bilinear filter, then
    torchvision's to_tensor + normalize in float32 (each byte divided by 255, the mean subtracted, divided by the
    std)."""
    from PIL import Image

    h, w = GDINO_HF_SIZE
    x = np.asarray(img.resize((w, h), Image.BILINEAR)).astype(np.float32) / np.float32(255)
    return ((x - MEAN) / STD).transpose(2, 0, 1)[None].copy()


def sam_input(img):
    """transformers' SamImageProcessor (PIL backend): the longest side to 1024 (each side rounded half up) with PIL's
    bilinear filter, rescaled, ImageNet-normalized, padded to 1024x1024 at the bottom and right. Returns the tensor
    and the resized (width, height)."""
    from PIL import Image

    scale = 1024 / max(img.width, img.height)
    w, h = int(img.width * scale + 0.5), int(img.height * scale + 0.5)
    x = np.asarray(img.resize((w, h), Image.BILINEAR)).astype(np.float32) * np.float32(1 / 255)
    padded = np.zeros((1024, 1024, 3), np.float32)
    padded[:h, :w] = (x - MEAN) / STD
    return padded.transpose(2, 0, 1)[None].copy(), (w, h)


def mask_margins(encoder, decoders, img, detections, count):
    """The predicted IoUs of transformers' SAM for the first `count` detections, as hf_sam_reference in
    scripts/export_real_models.py prompts it: {"hf_sam": the boxes, "hf_sam_points": each box's centre}, each a list
    of the three predicted IoUs per box."""
    pixels, (w, h) = sam_input(img)
    embeddings, positional = encoder.run(None, {"pixel_values": pixels})
    boxes = [[max(0.0, min(v, lim)) for v, lim in zip(d["box"], [img.width, img.height] * 2)]
             for d in detections[:count]]
    scale = np.array([w / img.width, h / img.height], np.float32)
    corners = (np.array(boxes, np.float32).reshape(-1, 2, 2) * scale).reshape(1, -1, 4)
    centres = np.array([[[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]] for b in boxes], np.float32)[None] * scale
    image = {"image_embeddings": embeddings, "image_positional_embeddings": positional}
    return {
        "hf_sam": decoders["hf_sam"].run(["iou_scores"], {**image, "input_boxes": corners})[0][0].tolist(),
        "hf_sam_points": decoders["hf_sam_points"].run(["iou_scores"], {
            **image, "input_points": centres, "input_labels": np.ones((1, len(boxes), 1), np.int64)})[0][0].tolist(),
    }


def choice_margin(predicted):
    """The best of three predicted IoUs' lead over the second."""
    first, second = sorted(predicted, reverse=True)[:2]
    return first - second


def prompt_of(tags):
    caption = " | ".join(t["tag"] for t in tags).replace(" |", ",").lower().strip()
    return caption if caption.endswith(".") else caption + "."


def main():
    import onnxruntime as ort
    from PIL import Image, ImageOps
    from tokenizers import Tokenizer

    models = pathlib.Path(sys.argv[1])
    write = sys.argv[2:] == ["--write"]
    path = models / "reference.json"
    reference = json.loads(path.read_text())
    settings = reference["settings"]
    tokenizer = Tokenizer.from_file(str(models / "tokenizer.json"))
    session = lambda name: ort.InferenceSession(str(models / name), providers=["CPUExecutionProvider"])  # noqa: E731
    graph = session("gdino_hf.onnx")
    encoder = session("hf_sam_vision_encoder.onnx")
    decoders = {"hf_sam": session("hf_sam_prompt_encoder_mask_decoder_boxes.onnx"),
                "hf_sam_points": session("hf_sam_prompt_encoder_mask_decoder.onnx")}
    rivals = {}
    for name, detections in reference["detections"].items():
        img = ImageOps.exif_transpose(Image.open(models / "photos" / f"{name}.png")).convert("RGB")
        rivals[name] = []
        if not detections:
            continue
        enc = tokenizer.encode(prompt_of(reference["tags"][name]))
        ids = np.array([enc.ids[:256]])
        h, w = GDINO_HF_SIZE
        logits, boxes = graph.run(["logits", "pred_boxes"], {
            "pixel_values": dino_input(img), "input_ids": ids, "token_type_ids": np.array([enc.type_ids[:256]]),
            "attention_mask": np.array([enc.attention_mask[:256]]), "pixel_mask": np.ones((1, h, w), np.int64)})
        recorded = [d.get("margin") for d in detections]
        rivals[name] = annotate(detections, logits[0], boxes[0], img.width, img.height, settings)
        ties = sum(d["margin"] < TIE for d in detections)
        # A tie here that the reference does not count as one (or the other way) would be a kernel difference
        # beyond what the parity test allows for.
        moved = sum(r is None or (r < TIE) != (d["margin"] < TIE) for r, d in zip(recorded, detections))
        masks, mask_ties = 0, 0
        for key, predicted in mask_margins(encoder, decoders, img, detections, len(reference["hf_sam"][name])).items():
            for mask, scores in zip(reference[key][name], predicted):
                margin = choice_margin(scores)
                tie = margin < MASK_TIE
                # Outside a tie the mask chosen here is the reference's: its predicted IoU is the reference's best.
                assert tie or abs(max(scores) - mask["score"]) < 1e-6, f"{name}/{key}: {scores} against {mask['score']}"
                moved += "margin" not in mask or (mask["margin"] < MASK_TIE) != tie
                mask["margin"] = round(margin, 9)
                masks, mask_ties = masks + 1, mask_ties + tie
        print(f"{name}: the reference's {len(detections)} detections here, {ties} within {TIE} of a decision, "
              f"{len(rivals[name])} rivals; {masks} masks chosen of three, {mask_ties} within {MASK_TIE}; "
              f"{moved} ties other than recorded")
    if write:
        reference["detection_rivals"] = rivals
        path.write_text(json.dumps(reference, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()

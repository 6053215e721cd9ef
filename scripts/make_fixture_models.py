#!/usr/bin/env python3
"""Generate the fixture models of examples/models/: tiny ONNX graphs with exactly the input and output signatures of
the real refiner models, whose outputs are known functions of the pixels, so that the whole refiner chain (resizing,
padding, normalization, tokenization, sub-sentence masks, posmaps, coordinate transforms, NMS, RLE) can be checked
against ground truth.

Palette: red (230,25,75), green (60,180,75), blue (0,130,200), yellow (255,225,25), purple (145,30,180) on grey
(128,128,128); a pixel "is" a colour when it is within 40 of it in every channel.

- tagger.onnx (RAM contract: `image` [B,3,384,384] ImageNet-normalized -> `logits` [B,5]): tag `<colour>` when at
  least 0.5% of the pixels are that colour (sigmoid 0.68 exactly at 0.5%).
- detector_idea.onnx (IDEA / X-AnyLabeling contract) and detector_hf.onnx (Hugging Face / optimum contract): query k
  is the tight box (cxcywh, normalized) of colour k's pixels, scored high (logit 10) on the prompt tokens that are
  colour k's word when colour k is present; every other logit is -10.
- sam_encoder.onnx (`image` [1,3,1024,1024] SAM-normalized -> `image_embeddings` [1,256,64,64]): the map of palette
  classes (0 = none, k+1 = colour k) of every second pixel, packed 8x8 per embedding cell (SpaceToDepth) in the first
  64 channels.

The graphs look at every second row and column only: fixtures are to be exact and cheap, so that benchmarks on
them measure the pre- and post-processing around the models.
- sam_decoder.onnx (the official decoder signature): mask = the pixels inside the box prompt whose class is the
  class found at the box centre, at the original image size (logits +/-10); `low_res_masks` the same test on the
  256x256 grid of 4x4 cells of the padded 1024 frame (class and box tested at each cell's centre), which is what
  SamPredictor's post-processing upsamples.

    python3 scripts/make_fixture_models.py examples/models
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
PALETTE = [
    ("red", (230, 25, 75)),
    ("green", (60, 180, 75)),
    ("blue", (0, 130, 200)),
    ("yellow", (255, 225, 25)),
    ("purple", (145, 30, 180)),
]
TOLERANCE = 40.0
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
SAM_MEAN = [123.675, 116.28, 103.53]
SAM_STD = [58.395, 57.12, 57.375]
LOGIT_068 = math.log(0.68 / 0.32)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!"] + [name for name, _ in PALETTE] + [
    "a", "an", "the", "and", "of", "on", "in", "with", "grey", "gray", "background", "rectangle", "ellipse",
    "shape", "shapes", "square", "circle", "two", "three", "##s", "##ish",
]


class Graph:
    """A small builder over onnx.helper: nodes get fresh output names."""

    def __init__(self):
        self.nodes = []
        self.inits = []
        self.count = 0

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, dtype=np.float32, hint="c"):
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, hint=None, outputs=1, **attrs):
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def named(self, op_type, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def model(self, name, inputs, outputs):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lyrics-prep-fixtures")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def pixels_0_255(g, x, mean, std, scale):
    """x is normalized NCHW; returns pixel values on 0..255: (x * std + mean) * scale."""
    std_c = g.const(np.array(std, np.float32).reshape(1, 3, 1, 1))
    mean_c = g.const(np.array(mean, np.float32).reshape(1, 3, 1, 1))
    v = g.op("Add", [g.op("Mul", [x, std_c]), mean_c])
    return g.op("Mul", [v, g.const(np.float32(scale))])


STRIDE = 2


def subsample(g, x):
    """Every STRIDE-th row and column of an NCHW tensor: the fixtures look at a quarter of the pixels, which keeps
    them cheap (the point of fixtures is to be exact, not to cost what a real model costs)."""
    big = np.iinfo(np.int64).max
    return g.op(
        "Slice",
        [x, g.const(np.array([0, 0], np.int64), np.int64), g.const(np.array([big, big], np.int64), np.int64),
         g.const(np.array([2, 3], np.int64), np.int64), g.const(np.array([STRIDE, STRIDE], np.int64), np.int64)],
    )


def colour_masks(g, pix):
    """[N,3,H,W] pixels -> [N,5,H,W] float 0/1: within TOLERANCE of each palette colour in every channel."""
    masks = []
    for _, rgb in PALETTE:
        colour = g.const(np.array(rgb, np.float32).reshape(1, 3, 1, 1))
        close = g.op("LessOrEqual", [g.op("Abs", [g.op("Sub", [pix, colour])]), g.const(np.float32(TOLERANCE))])
        closef = g.op("Cast", [close], to=TensorProto.FLOAT)
        masks.append(g.op("ReduceMin", [closef], axes=[1], keepdims=1))
    return g.op("Concat", masks, axis=1)


# ---------------------------------------------------------------------------------------------------- tagger


def tagger():
    g = Graph()
    pix = pixels_0_255(g, subsample(g, "image"), IMAGENET_MEAN, IMAGENET_STD, 255.0)
    masks = colour_masks(g, pix)  # [B,5,H/2,W/2]
    frac = g.op("ReduceMean", [masks], axes=[2, 3], keepdims=0)  # [B,5]
    shifted = g.op("Sub", [frac, g.const(np.float32(0.005))])
    g.named("Add", [g.op("Mul", [shifted, g.const(np.float32(1000.0))]), g.const(np.float32(LOGIT_068 + 1e-3))], "logits")
    return g.model(
        "ram_fixture",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 384, 384])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(PALETTE)])],
    )


# -------------------------------------------------------------------------------------------------- detector


def detector(export):
    g = Graph()
    if export == "idea":
        img, ids = "img", "input_ids"
    else:
        img, ids = "pixel_values", "input_ids"
    pix = pixels_0_255(g, subsample(g, img), IMAGENET_MEAN, IMAGENET_STD, 255.0)
    masks = colour_masks(g, pix)  # [1,5,H/2,W/2], sampled at even pixels
    shape = g.op("Shape", [masks])
    h = g.op("Gather", [shape, g.const(np.int64(2), np.int64)], axis=0)
    w = g.op("Gather", [shape, g.const(np.int64(3), np.int64)], axis=0)
    full = g.op("Shape", [img])
    hf = g.op("Cast", [g.op("Gather", [full, g.const(np.int64(2), np.int64)], axis=0)], to=TensorProto.FLOAT)
    wf = g.op("Cast", [g.op("Gather", [full, g.const(np.int64(3), np.int64)], axis=0)], to=TensorProto.FLOAT)
    big = g.const(np.float32(1e9))

    def extent(axis_reduce, length, lengthf):
        # present[k, i]: colour k occurs in column (or row) i.
        present = g.op("ReduceMax", [masks], axes=[axis_reduce], keepdims=0)  # [1,5,L]
        idx = g.op("Cast", [g.op("Range", [g.const(np.int64(0), np.int64), length, g.const(np.int64(1), np.int64)])], to=TensorProto.FLOAT)
        idx = g.op("Mul", [idx, g.const(np.float32(STRIDE))])  # back to full-resolution pixel indices
        on = g.op("Greater", [present, g.const(np.float32(0.5))])
        lo = g.op("ReduceMin", [g.op("Where", [on, idx, big])], axes=[2], keepdims=0)  # [1,5]
        hi = g.op("ReduceMax", [g.op("Where", [on, idx, g.op("Neg", [big])])], axes=[2], keepdims=0)
        hi = g.op("Add", [hi, g.const(np.float32(STRIDE))])
        hi = g.op("Min", [hi, lengthf])
        return g.op("Div", [lo, lengthf]), g.op("Div", [hi, lengthf])

    x1, x2 = extent(2, w, wf)  # reduce rows -> columns
    y1, y2 = extent(3, h, hf)  # reduce columns -> rows
    present = g.op("Greater", [g.op("ReduceMax", [masks], axes=[2, 3], keepdims=0), g.const(np.float32(0.5))])  # [1,5]
    half = g.const(np.float32(0.5))
    cx = g.op("Mul", [g.op("Add", [x1, x2]), half])
    cy = g.op("Mul", [g.op("Add", [y1, y2]), half])
    bw = g.op("Sub", [x2, x1])
    bh = g.op("Sub", [y2, y1])
    box = g.op("Concat", [g.op("Unsqueeze", [v, g.const(np.array([2], np.int64), np.int64)]) for v in (cx, cy, bw, bh)], axis=2)  # [1,5,4]
    zeros5 = g.const(np.zeros((1, 5, 4), np.float32))
    present3 = g.op("Unsqueeze", [present, g.const(np.array([2], np.int64), np.int64)])
    box = g.op("Where", [present3, box, zeros5])
    rest_boxes = g.const(np.zeros((1, 900 - len(PALETTE), 4), np.float32))
    boxes_name = "boxes" if export == "idea" else "pred_boxes"
    g.named("Concat", [box, rest_boxes], boxes_name, axis=1)

    # Token scores: query k scores 10 on tokens equal to colour k's word, when colour k is present.
    colour_ids = np.array([VOCAB.index(name) for name, _ in PALETTE], np.int64).reshape(1, 5, 1)
    ids3 = g.op("Unsqueeze", [ids, g.const(np.array([1], np.int64), np.int64)])  # [1,1,L]
    hit = g.op("Equal", [ids3, g.const(colour_ids, np.int64)])  # [1,5,L]
    hit = g.op("And", [hit, present3])
    ten, minus = g.const(np.float32(10.0)), g.const(np.float32(-10.0))
    scores = g.op("Where", [hit, ten, minus])  # [1,5,L]
    # The text inputs the fixture does not need still feed the graph (adding zero), as a real graph would use them.
    if export == "idea":
        extra = [("attention_mask", TensorProto.BOOL), ("position_ids", TensorProto.INT64), ("token_type_ids", TensorProto.INT64), ("text_token_mask", TensorProto.BOOL)]
    else:
        extra = [("token_type_ids", TensorProto.INT64), ("attention_mask", TensorProto.INT64), ("pixel_mask", TensorProto.INT64)]
    zero = g.const(np.float32(0.0))
    for name, _ in extra:
        total = g.op("ReduceSum", [g.op("Cast", [name], to=TensorProto.FLOAT)], keepdims=0)
        zero = g.op("Add", [zero, g.op("Mul", [total, g.const(np.float32(0.0))])])
    scores = g.op("Add", [scores, zero])
    # Pad the token axis to 256 with -10, and add the 895 empty queries.
    length = g.op("Gather", [g.op("Shape", [ids]), g.const(np.int64(1), np.int64)], axis=0)
    pad_right = g.op("Sub", [g.const(np.int64(256), np.int64), length])
    pads = g.op("Concat", [g.const(np.array([0, 0, 0, 0, 0], np.int64), np.int64), g.op("Unsqueeze", [pad_right, g.const(np.array([0], np.int64), np.int64)])], axis=0)
    padded = g.op("Pad", [scores, pads, minus], mode="constant")
    rest = g.op("ConstantOfShape", [g.const(np.array([1, 900 - len(PALETTE), 256], np.int64), np.int64)], value=numpy_helper.from_array(np.array([-10.0], np.float32)))
    g.named("Concat", [padded, rest], "logits", axis=1)

    if export == "idea":
        inputs = [
            helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "height", "width"]),
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "num_tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, [1, "num_tokens"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "num_tokens"]),
            helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [1, "num_tokens"]),
            helper.make_tensor_value_info("text_token_mask", TensorProto.BOOL, [1, "num_tokens", "num_tokens"]),
        ]
        outputs = [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 900, 256]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 900, 4]),
        ]
    else:
        inputs = [
            helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, "height", "width"]),
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "num_tokens"]),
            helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [1, "num_tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "num_tokens"]),
            helper.make_tensor_value_info("pixel_mask", TensorProto.INT64, [1, "height", "width"]),
        ]
        outputs = [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 900, 256]),
            helper.make_tensor_value_info("pred_boxes", TensorProto.FLOAT, [1, 900, 4]),
        ]
    return g.model(f"grounding_dino_{export}_fixture", inputs, outputs)


# --------------------------------------------------------------------------------------------------- SAM


def sam_encoder():
    g = Graph()
    pix = pixels_0_255(g, subsample(g, "image"), SAM_MEAN, SAM_STD, 1.0)
    masks = colour_masks(g, pix)  # [1,5,512,512]
    classes = g.const(np.arange(1, 6, dtype=np.float32).reshape(1, 5, 1, 1))
    class_map = g.op("ReduceSum", [g.op("Mul", [masks, classes]), g.const(np.array([1], np.int64), np.int64)], keepdims=1)  # [1,1,512,512]
    packed = g.op("SpaceToDepth", [class_map], blocksize=8)  # [1,64,64,64]
    padding = g.op("ConstantOfShape", [g.const(np.array([1, 192, 64, 64], np.int64), np.int64)], value=numpy_helper.from_array(np.array([0.0], np.float32)))
    g.named("Concat", [packed, padding], "image_embeddings", axis=1)
    return g.model(
        "sam_encoder_fixture",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 1024, 1024])],
        [helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, 256, 64, 64])],
    )


def sam_decoder():
    g = Graph()
    packed = g.op("Slice", ["image_embeddings", g.const(np.array([0], np.int64), np.int64), g.const(np.array([64], np.int64), np.int64), g.const(np.array([1], np.int64), np.int64)])
    class_map = g.op("DepthToSpace", [packed], blocksize=8, mode="DCR")  # [1,1,512,512]: class of 1024-space pixel (2y, 2x)
    cmap = g.op("Reshape", [class_map, g.const(np.array([512, 512], np.int64), np.int64)])
    size = g.op("Cast", ["orig_im_size"], to=TensorProto.INT64)
    h = g.op("Gather", [size, g.const(np.int64(0), np.int64)], axis=0)
    w = g.op("Gather", [size, g.const(np.int64(1), np.int64)], axis=0)
    hf = g.op("Gather", ["orig_im_size", g.const(np.int64(0), np.int64)], axis=0)
    wf = g.op("Gather", ["orig_im_size", g.const(np.int64(1), np.int64)], axis=0)
    # ResizeLongestSide: new side = floor(side * 1024 / longest + 0.5); per-axis scales new/old.
    longest = g.op("Max", [hf, wf])
    scale = g.op("Div", [g.const(np.float32(1024.0)), longest])
    nh = g.op("Floor", [g.op("Add", [g.op("Mul", [hf, scale]), g.const(np.float32(0.5))])])
    nw = g.op("Floor", [g.op("Add", [g.op("Mul", [wf, scale]), g.const(np.float32(0.5))])])
    sy = g.op("Div", [nh, hf])
    sx = g.op("Div", [nw, wf])
    one = g.const(np.int64(1), np.int64)
    zero = g.const(np.int64(0), np.int64)
    rows = g.op("Cast", [g.op("Range", [zero, h, one])], to=TensorProto.FLOAT)  # [H]
    cols = g.op("Cast", [g.op("Range", [zero, w, one])], to=TensorProto.FLOAT)  # [W]
    half = g.const(np.float32(0.5))
    rows_c = g.op("Add", [rows, half])
    cols_c = g.op("Add", [cols, half])

    def to_index(centres, s):
        v = g.op("Floor", [g.op("Div", [g.op("Mul", [centres, s]), g.const(np.float32(STRIDE))])])
        v = g.op("Clip", [v, g.const(np.float32(0.0)), g.const(np.float32(511.0))])
        return g.op("Cast", [v], to=TensorProto.INT64)

    ri = to_index(rows_c, sy)
    ci = to_index(cols_c, sx)
    sampled = g.op("Gather", [g.op("Gather", [cmap, ri], axis=0), ci], axis=1)  # [H,W]
    # The box prompt: corners (labels 2 and 3) in 1024 space.
    pts = g.op("Reshape", ["point_coords", g.const(np.array([-1, 2], np.int64), np.int64)])
    p1 = g.op("Gather", [pts, zero], axis=0)
    p2 = g.op("Gather", [pts, one], axis=0)
    bx1 = g.op("Gather", [p1, zero], axis=0)
    by1 = g.op("Gather", [p1, one], axis=0)
    bx2 = g.op("Gather", [p2, zero], axis=0)
    by2 = g.op("Gather", [p2, one], axis=0)
    quarter = g.const(np.float32(0.5 / STRIDE))
    cxi = g.op("Cast", [g.op("Clip", [g.op("Floor", [g.op("Mul", [g.op("Add", [bx1, bx2]), quarter])]), g.const(np.float32(0.0)), g.const(np.float32(511.0))])], to=TensorProto.INT64)
    cyi = g.op("Cast", [g.op("Clip", [g.op("Floor", [g.op("Mul", [g.op("Add", [by1, by2]), quarter])]), g.const(np.float32(0.0)), g.const(np.float32(511.0))])], to=TensorProto.INT64)
    centre_class = g.op("Gather", [g.op("Gather", [cmap, cyi], axis=0), cxi], axis=0)  # scalar
    same = g.op("Equal", [sampled, centre_class])
    valid = g.op("Greater", [centre_class, g.const(np.float32(0.5))])
    # Inside the box, in original pixels: pixel centres between the corners divided back by the scales.
    ox1, ox2 = g.op("Div", [bx1, sx]), g.op("Div", [bx2, sx])
    oy1, oy2 = g.op("Div", [by1, sy]), g.op("Div", [by2, sy])
    in_x = g.op("And", [g.op("GreaterOrEqual", [cols_c, ox1]), g.op("LessOrEqual", [cols_c, ox2])])  # [W]
    in_y = g.op("And", [g.op("GreaterOrEqual", [rows_c, oy1]), g.op("LessOrEqual", [rows_c, oy2])])  # [H]
    inside = g.op("And", [g.op("Unsqueeze", [in_y, g.const(np.array([1], np.int64), np.int64)]), g.op("Unsqueeze", [in_x, g.const(np.array([0], np.int64), np.int64)])])
    mask = g.op("And", [g.op("And", [same, inside]), valid])
    logits = g.op("Where", [mask, g.const(np.float32(10.0)), g.const(np.float32(-10.0))])  # [H,W]
    g.named("Unsqueeze", [logits, g.const(np.array([0, 1], np.int64), np.int64)], "masks")
    # The decoder's other inputs feed the graph with zero weight, as the official graph uses them.
    extra = g.op("Add", [g.op("ReduceSum", ["mask_input"], keepdims=0), g.op("ReduceSum", ["has_mask_input"], keepdims=0)])
    extra = g.op("Add", [extra, g.op("ReduceSum", ["point_labels"], keepdims=0)])
    iou = g.op("Add", [g.const(np.full((1, 1), 0.9, np.float32)), g.op("Mul", [extra, g.const(np.float32(0.0))])])
    g.named("Identity", [iou], "iou_predictions")
    # Low resolution: cell (i, j) of the padded frame is centred on 1024-space pixel (4i + 2, 4j + 2), whose class
    # is cmap[2i + 1, 2j + 1].
    two = g.const(np.array([2, 2], np.int64), np.int64)
    low_class = g.op("Slice", [cmap, g.const(np.array([1, 1], np.int64), np.int64), g.const(np.array([512, 512], np.int64), np.int64), g.const(np.array([0, 1], np.int64), np.int64), two])
    cells = g.op("Add", [g.op("Mul", [g.op("Cast", [g.op("Range", [zero, g.const(np.int64(256), np.int64), one])], to=TensorProto.FLOAT), g.const(np.float32(4.0))]), g.const(np.float32(2.0))])  # [256]
    low_x = g.op("And", [g.op("GreaterOrEqual", [cells, bx1]), g.op("LessOrEqual", [cells, bx2])])
    low_y = g.op("And", [g.op("GreaterOrEqual", [cells, by1]), g.op("LessOrEqual", [cells, by2])])
    low_inside = g.op("And", [g.op("Unsqueeze", [low_y, g.const(np.array([1], np.int64), np.int64)]), g.op("Unsqueeze", [low_x, g.const(np.array([0], np.int64), np.int64)])])
    low_mask = g.op("And", [g.op("And", [g.op("Equal", [low_class, centre_class]), low_inside]), valid])
    low = g.op("Where", [low_mask, g.const(np.float32(10.0)), g.const(np.float32(-10.0))])
    g.named("Unsqueeze", [low, g.const(np.array([0, 1], np.int64), np.int64)], "low_res_masks")
    return g.model(
        "sam_decoder_fixture",
        [
            helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, 256, 64, 64]),
            helper.make_tensor_value_info("point_coords", TensorProto.FLOAT, [1, "num_points", 2]),
            helper.make_tensor_value_info("point_labels", TensorProto.FLOAT, [1, "num_points"]),
            helper.make_tensor_value_info("mask_input", TensorProto.FLOAT, [1, 1, 256, 256]),
            helper.make_tensor_value_info("has_mask_input", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("orig_im_size", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, 1, "height", "width"]),
            helper.make_tensor_value_info("iou_predictions", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("low_res_masks", TensorProto.FLOAT, [1, 1, 256, 256]),
        ],
    )


# -------------------------------------------------------------------------------------------- tokenizer


def tokenizer_json():
    """A BERT-uncased style WordPiece tokenizer over VOCAB, in the tokenizer.json format of `tokenizers`."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    added = [
        {"id": VOCAB.index(t), "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for t in special
    ]
    cls, sep = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]},
            },
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": {t: i for i, t in enumerate(VOCAB)},
        },
    }


MODELS_TOML = """# Fixture models: tiny graphs with the real models' signatures whose outputs are known functions of the pixels
# (scripts/make_fixture_models.py). Use with: lyrics-prep run --input ... --output ... --models examples/models/fixtures.toml

[tagger]
family = "ram"
model = "tagger.onnx"
tags = "tags.txt"
threshold = 0.68
batch_size = 4

[detector]
family = "grounding_dino"
export = "idea"
model = "detector_idea.onnx"
tokenizer = "tokenizer.json"
box_threshold = 0.25
text_threshold = 0.2
iou_threshold = 0.6

[segmenter]
family = "sam"
encoder = "sam_encoder.onnx"
decoder = "sam_decoder.onnx"
"""


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(tagger(), out / "tagger.onnx")
    onnx.save(detector("idea"), out / "detector_idea.onnx")
    onnx.save(detector("hf"), out / "detector_hf.onnx")
    onnx.save(sam_encoder(), out / "sam_encoder.onnx")
    onnx.save(sam_decoder(), out / "sam_decoder.onnx")
    (out / "tags.txt").write_text("".join(f"{name}\n" for name, _ in PALETTE))
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json(), indent=1) + "\n")
    (out / "fixtures.toml").write_text(MODELS_TOML)
    (out / "fixtures_hf.toml").write_text(MODELS_TOML.replace('export = "idea"', 'export = "hf"').replace("detector_idea.onnx", "detector_hf.onnx"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/models")

//! Segmenters: a mask for each detected box, in each public export users download.
//!
//! - `sam`: Segment Anything with the official decoder export (`segment_anything/utils/onnx.py`:
//!   `image_embeddings`, `point_coords`, `point_labels`, `mask_input`, `has_mask_input`, `orig_im_size` → `masks`,
//!   `iou_predictions`). The encoder is samexporter's, either form: `input_image` [1, 3, 1024, 1024] (longest side to
//!   1024 with SAM's rounding, PIL bilinear, `(x − pixel_mean) / pixel_std` on 0..255 values, zero padding bottom and
//!   right) or, exported `--use-preprocess`, `input_image` [H, W, 3] with the resized image's raw 0..255 values (the
//!   graph normalizes and pads). Each box goes in as its two corners with labels 2 and 3, coordinates scaled by
//!   `ResizeLongestSide.apply_coords`; a `--return-single-mask` decoder (declared `iou_predictions` [1, 1]) also gets
//!   the padding point (0, 0) with label −1, without which it picks one of the multimask outputs instead of the box
//!   mask. Of a multimask export the first mask is taken, as `SamPredictor(multimask_output=False)`: its
//!   `low_res_masks` plane, brought to the image as `Sam.postprocess_masks` does and thresholded at 0.
//! - `hf_sam`: transformers' SamModel as optimum exports it and transformers.js ships SAM and SlimSAM:
//!   `vision_encoder` (`pixel_values` [1, 3, 1024, 1024]: SamProcessor's resize of the longest side to 1024,
//!   ImageNet normalization of RGB/255, zero padding → `image_embeddings`, `image_positional_embeddings`) and
//!   `prompt_encoder_mask_decoder` (`image_embeddings`, `image_positional_embeddings`, `input_points`
//!   [1, boxes, 1, 2] and `input_labels` in the resized frame → `iou_scores` [1, boxes, 3], `pred_masks`
//!   [1, boxes, 3, 256, 256]); every box of an image in one call (or `segmenter.batch_size` at a time). optimum's
//!   export has no box input, and transformers' point encoder embeds only labels 0 and 1 (not SAM's corner labels 2
//!   and 3), so a box goes in as its centre, a positive point, and its mask is kept inside the box. A decoder
//!   exported with `input_boxes` [1, boxes, 4] gets the boxes themselves. Of the three masks the best-scoring is
//!   kept; `post_process_masks` then upsamples it to the padded 1024 frame, crops the resized image and resizes
//!   that to the original (bilinear, half-pixel centres), thresholded at 0.
//! - `sam2`: SAM 2 / 2.1 as samexporter exports it: the encoder (`image` [1, 3, 1024, 1024], the image stretched to
//!   1024², ImageNet normalization → `high_res_feats_0`, `high_res_feats_1`, `image_embed`) and the decoder (those,
//!   `point_coords` [boxes, 2, 2] and `point_labels` [boxes, 2] of the box corners in the stretched frame,
//!   `mask_input`, `has_mask_input` → `masks` [boxes, 3, 256, 256], `iou_predictions`); every box in one call, the
//!   best-scoring mask resized to the image.
//! - `salient_crop`: ISNet salient-object segmentation (`input` [1, 3, 1024, 1024] = RGB/255 − 0.5 → `output`
//!   [1, 1, 1024, 1024] in 0..1, the model of npm `@imgly/background-removal-data`) on the box's crop widened by a
//!   margin, the probability map resized back (bilinear), thresholded, and kept inside the box.
//!
//! Low-resolution masks (SAM, HF SAM, SAM 2) leave the inference thread as they come out of the graph, 256×256
//! logits per box; [`MaskOut::finish`] upsamples and RLE-encodes them on the CPU threads.

use image::{GrayImage, RgbImage};

use super::batching::in_chunks;
use super::planes::Plane;
use super::preprocess::{IMAGENET, Normalization, SAM_PIXELS, longest_side_size, resize_bilinear, to_planar};
use super::runtime::{Contract, Device, Input, OnnxModel, refuse};
use super::{ModelError, SegmenterConfig, SegmenterFamily};
use crate::geometry::{BoxXyxy, Rle};

/// Side of SAM's square encoder input.
pub const SAM_SIDE: usize = 1024;
/// Side of ISNet's square input.
pub const ISNET_SIDE: usize = 1024;
/// Side of the low-resolution masks SAM's decoders give.
pub const LOW_RES_SIDE: usize = 256;

/// The empty `mask_input` of a box prompt. A static: zero pages, mapped once, instead of 256 KiB allocated,
/// zeroed and faulted in for every image on the inference thread.
static NO_MASK: [f32; LOW_RES_SIDE * LOW_RES_SIDE] = [0.0; LOW_RES_SIDE * LOW_RES_SIDE];

/// A mask at the original image's resolution, COCO RLE-encoded as soon as it is made (a full-resolution mask of
/// every object of a batch would otherwise be held until the batch is done), with the model's confidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub width: u32,
    pub height: u32,
    /// The mask, COCO compressed RLE (`size` is `[height, width]`).
    pub rle: Rle,
    /// Foreground pixels.
    pub area: u64,
    /// The model's confidence: SAM's predicted IoU, or ISNet's mean probability over the mask.
    pub score: f32,
}

impl Mask {
    /// The mask whose row-major pixel `i` of a `width`×`height` image is `foreground(i)`.
    pub fn encode(width: u32, height: u32, score: f32, foreground: impl Fn(usize) -> bool) -> Mask {
        let area = (0..width as usize * height as usize).filter(|&i| foreground(i)).count() as u64;
        Mask { width, height, rle: Rle::encode_with(height, width, foreground), area, score }
    }

    /// The row-major pixels (decoded from the RLE).
    pub fn pixels(&self) -> Result<Vec<bool>, ModelError> {
        self.rle.decode().map_err(|e| ModelError::Postprocess(e.to_string()))
    }
}

/// How a low-resolution mask maps onto the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// SAM's padded square: the image resized to `resized` (w, h) at the top left of a `side`² input.
    Padded { resized: (u32, u32), side: u32 },
    /// The image stretched to the whole input.
    Stretched,
}

/// A segmenter's output for one box: a finished mask, or low-resolution logits still to upsample (and, where the
/// prompt was not the box itself, the pixel rectangle `[x0, y0, x1, y1)` the mask is kept inside).
#[derive(Debug, Clone, PartialEq)]
pub enum MaskOut {
    Done(Mask),
    LowRes {
        logits: Plane,
        side: usize,
        frame: Frame,
        width: u32,
        height: u32,
        score: f32,
        within: Option<[u32; 4]>,
    },
}

impl MaskOut {
    /// The mask at the image's size (CPU work: upsampling and RLE encoding).
    pub fn finish(self) -> Mask {
        match self {
            MaskOut::Done(mask) => mask,
            MaskOut::LowRes { logits, side, frame, width, height, score, within } => {
                upsample_mask(&logits, side, frame, width, height, score, within)
            }
        }
    }
}

/// Interpolation taps of a bilinear resize from `src` to `dst` samples with half-pixel centres and clamped edges
/// (PyTorch's `interpolate(mode="bilinear", align_corners=False)`, OpenCV's `INTER_LINEAR`): for each output
/// sample, the two source indices and the weight of the second.
fn taps(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst.max(1) as f64;
    (0..dst)
        .map(|i| {
            let x = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
            let x0 = (x.floor() as usize).min(src - 1);
            let x1 = (x0 + 1).min(src - 1);
            (x0, x1, (x - x0 as f64) as f32)
        })
        .collect()
}

/// `src` (row-major `sw`×`sh`) resized to `dw`×`dh` by [`taps`], rows then columns: the whole computation
/// [`resize_region`] is held to.
#[cfg(test)]
fn resize_plane(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    let (tx, ty) = (taps(sw, dw), taps(sh, dh));
    let mut rows = vec![0f32; dw * sh];
    for y in 0..sh {
        let line = &src[y * sw..(y + 1) * sw];
        for (x, &(x0, x1, w)) in tx.iter().enumerate() {
            rows[y * dw + x] = line[x0] * (1.0 - w) + line[x1] * w;
        }
    }
    let mut out = vec![0f32; dw * dh];
    for (y, &(y0, y1, w)) in ty.iter().enumerate() {
        for x in 0..dw {
            out[y * dw + x] = rows[y0 * dw + x] * (1.0 - w) + rows[y1 * dw + x] * w;
        }
    }
    out
}

/// `src` (row-major, `sw` wide) resized by the taps of some output columns (`tx`) and rows (`ty`) only, as
/// [`resize_plane`] computes them (the same products and sums, in the same order): the `ty.len()` × `tx.len()`
/// values, row-major. Only the source rows the wanted rows read are interpolated.
fn resize_region(src: &[f32], sw: usize, tx: &[(usize, usize, f32)], ty: &[(usize, usize, f32)]) -> Vec<f32> {
    let (Some(first), Some(last)) = (ty.first(), ty.last()) else { return Vec::new() };
    let (r0, r1) = (first.0, last.1);
    let n = tx.len();
    let mut rows = vec![0f32; n * (r1 - r0 + 1)];
    for (y, out) in (r0..=r1).zip(rows.chunks_exact_mut(n.max(1))) {
        let line = &src[y * sw..(y + 1) * sw];
        for (o, &(x0, x1, w)) in out.iter_mut().zip(tx) {
            *o = line[x0] * (1.0 - w) + line[x1] * w;
        }
    }
    let mut out = Vec::with_capacity(n * ty.len());
    for &(y0, y1, w) in ty {
        let (a, b) = (&rows[(y0 - r0) * n..][..n], &rows[(y1 - r0) * n..][..n]);
        out.extend(a.iter().zip(b).map(|(a, b)| a * (1.0 - w) + b * w));
    }
    out
}

/// The bounding box `[c0, r0, c1, r1]` (inclusive) of the cells of a `side`² plane above 0; `None` when none is.
fn positive_cells(logits: &[f32], side: usize) -> Option<[usize; 4]> {
    let mut found: Option<[usize; 4]> = None;
    for (r, row) in logits.chunks_exact(side.max(1)).enumerate() {
        let (Some(c0), Some(c1)) = (row.iter().position(|v| *v > 0.0), row.iter().rposition(|v| *v > 0.0)) else {
            continue;
        };
        found = Some(match found {
            None => [c0, r, c1, r],
            Some([a, b, c, _]) => [a.min(c0), b, c.max(c1), r],
        });
    }
    found
}

/// The mask of low-resolution logits, as `SamProcessor.post_process_masks` (padded frame: to the input side, the
/// resized image cropped, to the original size) or SAM 2's predictor (stretched: straight to the original size)
/// make it, thresholded at 0, and kept inside `within` when given.
///
/// Only what the mask's pixels read is computed: of the intermediate resize, the cells inside the crop that the
/// final resize reads (rows and columns of the kept rectangle); of the final one, the kept rectangle's pixels,
/// row by row. The values are those of the whole computation, bit for bit (a test holds them to it).
fn upsample_mask(
    logits: &[f32],
    side: usize,
    frame: Frame,
    width: u32,
    height: u32,
    score: f32,
    within: Option<[u32; 4]>,
) -> Mask {
    let (w, h) = (width as usize, height as usize);
    // The plane the last resize reads: the crop of the padded input, or the logits themselves.
    let (pw, ph) = match frame {
        Frame::Padded { resized, side: input } => {
            let input = input as usize;
            ((resized.0 as usize).clamp(1, input), (resized.1 as usize).clamp(1, input))
        }
        Frame::Stretched => (side, side),
    };
    let (all_x, all_y) = (taps(pw, w), taps(ph, h));
    let [x0, y0, x1, y1] = within.map_or([0, 0, w, h], |r| r.map(|v| v as usize));
    let (x1, y1) = (x1.min(w), y1.min(h));
    let (x0, y0) = (x0.min(x1), y0.min(y1));
    // A pixel whose every logit cell is at most 0 is background (a bilinear value is a weighted mean of its cells),
    // so only the pixels that read a cell of the positive cells' bounding box are computed.
    let [x0, y0, x1, y1] = match positive_cells(logits, side) {
        None => [x0, y0, x0, y0],
        Some([lc0, lr0, lc1, lr1]) => {
            let inner = match frame {
                Frame::Padded { side: input, .. } => Some(taps(side, input as usize)),
                Frame::Stretched => None,
            };
            let cells = |t: &(usize, usize, f32)| match &inner {
                Some(inner) => (inner[t.0].0, inner[t.1].1),
                None => (t.0, t.1),
            };
            let reads = |all: &[(usize, usize, f32)], from: usize, to: usize, lo: usize, hi: usize| {
                let first = (from..to).find(|&i| cells(&all[i]).1 >= lo).unwrap_or(to);
                let last = (first..to).rev().find(|&i| cells(&all[i]).0 <= hi).map_or(first, |i| i + 1);
                (first, last)
            };
            let (cx0, cx1) = reads(&all_x, x0, x1, lc0, lc1);
            let (cy0, cy1) = reads(&all_y, y0, y1, lr0, lr1);
            [cx0, cy0, cx1.max(cx0), cy1.max(cy0)]
        }
    };
    let (rw, rh) = (x1 - x0, y1 - y0);
    let (tx, ty) = (&all_x[x0..x1], &all_y[y0..y1]);
    let mut region = vec![0u8; rw * rh];
    if let (Some(fx), Some(lx), Some(fy), Some(ly)) = (tx.first(), tx.last(), ty.first(), ty.last()) {
        // The plane's cells those pixels read: columns c0..=c1, rows r0..=r1 (taps only move forward).
        let (c0, c1, r0, r1) = (fx.0, lx.1, fy.0, ly.1);
        let nc = c1 - c0 + 1;
        let plane: Vec<f32> = match frame {
            Frame::Padded { side: input, .. } => {
                let inner = taps(side, input as usize);
                resize_region(logits, side, &inner[c0..=c1], &inner[r0..=r1])
            }
            Frame::Stretched => {
                (r0..=r1).flat_map(|r| logits[r * side + c0..=r * side + c1].iter().copied()).collect()
            }
        };
        for (&(ya, yb, wy), out) in ty.iter().zip(region.chunks_exact_mut(rw)) {
            let (top_row, bottom_row) = (&plane[(ya - r0) * nc..][..nc], &plane[(yb - r0) * nc..][..nc]);
            for (o, &(xa, xb, wx)) in out.iter_mut().zip(tx) {
                let (xa, xb) = (xa - c0, xb - c0);
                let top = top_row[xa] * (1.0 - wx) + top_row[xb] * wx;
                let bottom = bottom_row[xa] * (1.0 - wx) + bottom_row[xb] * wx;
                *o = u8::from(top * (1.0 - wy) + bottom * wy > 0.0);
            }
        }
    }
    match Rle::encode_region(height, width, [x0, y0, x1, y1], &region) {
        Ok((rle, area)) => Mask { width, height, rle, area, score },
        // The region is sized from the rectangle above; a mismatch would be a bug here, and costs the mask only.
        Err(_) => Mask::encode(width, height, score, |_| false),
    }
}

/// What [`Segmenter::prepare`] computes from the image alone: the encoder's input and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmenterImage {
    pub shape: Vec<usize>,
    pub tensor: Vec<f32>,
}

/// The image input a loaded segmenter's encoder takes, read from the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmenterInput {
    /// No encoder (salient_crop crops per box).
    #[default]
    None,
    /// SAM: [1, 3, 1024, 1024], normalized and padded by the caller.
    SamPlanar,
    /// SAM exported with its preprocessing: [H, W, 3], raw 0..255, the longest side 1024.
    SamRaw,
    /// transformers' SamProcessor: [1, 3, 1024, 1024], ImageNet-normalized RGB/255, padded.
    HfSam,
    /// SAM 2: [1, 3, 1024, 1024], the image stretched, ImageNet-normalized.
    Sam2,
}

const SAM_DECODER: Contract = Contract {
    key: "family = \"sam\" (official decoder)",
    inputs: &["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
    outputs: &["masks", "iou_predictions", "low_res_masks"],
};
/// optimum's SAM export, as transformers.js ships SAM and SlimSAM: points only (optimum passes
/// `input_boxes=None`, "not supported in the ONNX export").
const HF_SAM_DECODER: Contract = Contract {
    key: "family = \"hf_sam\" (prompt_encoder_mask_decoder)",
    inputs: &["image_embeddings", "image_positional_embeddings", "input_points", "input_labels"],
    outputs: &["iou_scores", "pred_masks"],
};
/// The same modules exported with the prompt encoder's box input.
const HF_SAM_DECODER_BOXES: Contract = Contract {
    key: "family = \"hf_sam\" (prompt_encoder_mask_decoder with input_boxes)",
    inputs: &["image_embeddings", "input_boxes"],
    outputs: &["iou_scores", "pred_masks"],
};
const SAM2_DECODER: Contract = Contract {
    key: "family = \"sam2\" (decoder)",
    inputs: &["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "mask_input"],
    outputs: &["masks", "iou_predictions"],
};
const SAM_ENCODER: Contract =
    Contract { key: "family = \"sam\" (encoder)", inputs: &[], outputs: &["image_embeddings"] };
const HF_SAM_ENCODER: Contract = Contract {
    key: "family = \"hf_sam\" (vision_encoder)",
    inputs: &["pixel_values"],
    outputs: &["image_embeddings", "image_positional_embeddings"],
};
const SAM2_ENCODER: Contract = Contract {
    key: "family = \"sam2\" (encoder)",
    inputs: &["image"],
    outputs: &["high_res_feats_0", "high_res_feats_1", "image_embed"],
};
const ENCODERS: [Contract; 3] = [SAM_ENCODER, HF_SAM_ENCODER, SAM2_ENCODER];
const DECODERS: [Contract; 4] = [SAM_DECODER, HF_SAM_DECODER, HF_SAM_DECODER_BOXES, SAM2_DECODER];

/// A loaded segmenter of any family, with its sessions.
pub enum Segmenter {
    /// SAM's image encoder and official prompt decoder.
    Sam { encoder: OnnxModel, decoder: OnnxModel, encoder_input: String, raw: bool, single_mask: bool },
    /// transformers' SAM split: vision encoder and prompt encoder + mask decoder, many boxes per call.
    HfSam { encoder: OnnxModel, decoder: OnnxModel, boxes_per_call: Option<usize>, prompt: HfSamPrompt },
    /// SAM 2: encoder and decoder, many boxes per call.
    Sam2 { encoder: OnnxModel, decoder: OnnxModel, boxes_per_call: Option<usize> },
    /// ISNet on each box's crop, with the crop margin and the foreground threshold.
    SalientCrop { model: OnnxModel, margin: f32, threshold: f32 },
}

/// How boxes reach an `hf_sam` decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfSamPrompt {
    /// `input_boxes` [1, boxes, 4]; `padded_points`: the graph also takes points, given one ignored point per box.
    Boxes { padded_points: bool },
    /// Points only (optimum's export): each box as its centre, a positive point (`input_points` [1, boxes, 1, 2],
    /// `input_labels` 1), the best of the three masks kept inside the box.
    Centres,
}

/// Whether a decoder's box dimension (`axis` of `input`) takes more than one box per call.
fn takes_many(decoder: &OnnxModel, input: &str, axis: usize) -> bool {
    decoder.input(input).is_some_and(|p| p.dim(axis).is_none_or(|d| d > 1))
}

impl Segmenter {
    /// Loads the sessions of `config`'s family from `files` (an encoder and a decoder, or salient_crop's model),
    /// refusing graphs that do not follow the family's contract and batch sizes the decoder cannot take.
    pub fn load(
        config: &SegmenterConfig,
        files: &[&std::path::Path],
        device: Device,
        threads: usize,
    ) -> Result<Segmenter, ModelError> {
        let pair = |want: &str| -> Result<(OnnxModel, OnnxModel), ModelError> {
            let [encoder, decoder] = files else {
                return Err(ModelError::Config(format!("{want} needs an encoder and a decoder")));
            };
            Ok((
                OnnxModel::load("segmenter.encoder", encoder, device, threads)?,
                OnnxModel::load("segmenter.decoder", decoder, device, threads)?,
            ))
        };
        let check = |model: &OnnxModel, contract: &Contract, all: &[Contract]| -> Result<(), ModelError> {
            if contract.matches(model) { Ok(()) } else { Err(refuse(model, contract.key, all)) }
        };
        let refuse_batch = |what: &str| -> Result<(), ModelError> {
            match config.batch_size {
                Some(n) if n > 1 => Err(ModelError::Config(format!(
                    "segmenter.batch_size = {n}: {what} takes one box per decoder call; remove the setting or use \
                     a decoder that takes many (hf_sam, sam2)"
                ))),
                _ => Ok(()),
            }
        };
        match config.family {
            SegmenterFamily::Sam => {
                let (encoder, decoder) = pair("sam")?;
                check(&encoder, &SAM_ENCODER, &ENCODERS)?;
                check(&decoder, &SAM_DECODER, &DECODERS)?;
                refuse_batch("the official SAM decoder")?;
                let port = encoder.input_ports.first().cloned().ok_or_else(|| ModelError::Contract {
                    model: encoder.name.clone(),
                    message: "the encoder has no input".into(),
                })?;
                let raw = match port.dims.len() {
                    4 => false,
                    3 => true,
                    _ => {
                        return Err(ModelError::Contract {
                            model: encoder.name.clone(),
                            message: format!(
                                "input {port}: expected [1, 3, 1024, 1024] (normalized) or [H, W, 3] (raw 0-255, \
                                 samexporter --use-preprocess)"
                            ),
                        });
                    }
                };
                let single_mask = decoder.output("iou_predictions").and_then(|p| p.dim(1)) == Some(1);
                Ok(Segmenter::Sam { encoder, decoder, encoder_input: port.name, raw, single_mask })
            }
            SegmenterFamily::HfSam => {
                let (encoder, decoder) = pair("hf_sam")?;
                check(&encoder, &HF_SAM_ENCODER, &ENCODERS)?;
                let (prompt, many) = if HF_SAM_DECODER_BOXES.matches(&decoder) {
                    let padded_points = decoder.input("input_points").is_some();
                    (HfSamPrompt::Boxes { padded_points }, takes_many(&decoder, "input_boxes", 1))
                } else {
                    check(&decoder, &HF_SAM_DECODER, &DECODERS)?;
                    (HfSamPrompt::Centres, takes_many(&decoder, "input_points", 1))
                };
                if !many {
                    refuse_batch("this prompt_encoder_mask_decoder")?;
                }
                Ok(Segmenter::HfSam { encoder, decoder, boxes_per_call: batch_of(config.batch_size, many), prompt })
            }
            SegmenterFamily::Sam2 => {
                let (encoder, decoder) = pair("sam2")?;
                check(&encoder, &SAM2_ENCODER, &ENCODERS)?;
                check(&decoder, &SAM2_DECODER, &DECODERS)?;
                let many = takes_many(&decoder, "point_coords", 0);
                if !many {
                    refuse_batch("this SAM 2 decoder")?;
                }
                Ok(Segmenter::Sam2 { encoder, decoder, boxes_per_call: batch_of(config.batch_size, many) })
            }
            SegmenterFamily::SalientCrop => {
                let [model] = files else { return Err(ModelError::Config("salient_crop needs one model".into())) };
                let model = OnnxModel::load("segmenter", model, device, threads)?;
                let contract =
                    Contract { key: "family = \"salient_crop\"", inputs: &["input"], outputs: &["output"] };
                check(&model, &contract, &[contract])?;
                refuse_batch("salient_crop")?;
                Ok(Segmenter::SalientCrop { model, margin: config.margin, threshold: config.mask_threshold })
            }
        }
    }

    /// The encoder input this segmenter takes (for [`Segmenter::prepare`]).
    pub fn input(&self) -> SegmenterInput {
        match self {
            Segmenter::Sam { raw: true, .. } => SegmenterInput::SamRaw,
            Segmenter::Sam { .. } => SegmenterInput::SamPlanar,
            Segmenter::HfSam { .. } => SegmenterInput::HfSam,
            Segmenter::Sam2 { .. } => SegmenterInput::Sam2,
            Segmenter::SalientCrop { .. } => SegmenterInput::None,
        }
    }

    /// What can be computed from the image alone, before boxes are known: the encoder's input.
    pub fn prepare(input: SegmenterInput, image: &RgbImage) -> Result<Option<SegmenterImage>, ModelError> {
        let side = SAM_SIDE;
        let padded = |normalization: &Normalization| -> Result<SegmenterImage, ModelError> {
            let (w, h) = longest_side_size(image.width(), image.height(), side as u32);
            let resized = resize_bilinear(image, w, h)?;
            Ok(SegmenterImage {
                shape: vec![1, 3, side, side],
                tensor: to_planar(&resized, normalization, side, side),
            })
        };
        Ok(match input {
            SegmenterInput::None => None,
            SegmenterInput::SamPlanar => Some(padded(&SAM_PIXELS)?),
            SegmenterInput::HfSam => Some(padded(&IMAGENET)?),
            SegmenterInput::SamRaw => {
                let (w, h) = longest_side_size(image.width(), image.height(), side as u32);
                let resized = resize_bilinear(image, w, h)?;
                Some(SegmenterImage {
                    shape: vec![h as usize, w as usize, 3],
                    tensor: resized.as_raw().iter().map(|v| f32::from(*v)).collect(),
                })
            }
            SegmenterInput::Sam2 => {
                let resized = resize_bilinear(image, side as u32, side as u32)?;
                Some(SegmenterImage {
                    shape: vec![1, 3, side, side],
                    tensor: to_planar(&resized, &IMAGENET, side, side),
                })
            }
        })
    }

    /// A mask for each box (pixels of the original image).
    pub fn infer(
        &mut self,
        image: &RgbImage,
        prepared: Option<&SegmenterImage>,
        boxes: &[BoxXyxy],
    ) -> Result<Vec<MaskOut>, ModelError> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let owned;
        let prepared = match prepared {
            Some(p) => Some(p),
            None => {
                owned = Segmenter::prepare(self.input(), image)?;
                owned.as_ref()
            }
        };
        let (ow, oh) = image.dimensions();
        let (nw, nh) = longest_side_size(ow, oh, SAM_SIDE as u32);
        let missing = || ModelError::Preprocess("no segmenter input was prepared".into());
        match self {
            Segmenter::Sam { encoder, decoder, encoder_input, single_mask, .. } => {
                let prepared = prepared.ok_or_else(missing)?;
                // The decoder reads the embeddings where the encoder's session left them: a copy would be 4 MiB an
                // image on the inference thread.
                let image_input =
                    vec![(encoder_input.as_str(), Input::F32(prepared.shape.clone(), &prepared.tensor))];
                encoder.run_with(image_input, &["image_embeddings"], |out| {
                    let embeddings = &out[0];
                    let (sx, sy) = (nw as f32 / ow as f32, nh as f32 / oh as f32);
                    let orig_size = [oh as f32, ow as f32];
                    // A single-mask export picks the box mask only with three or more points: the padding point.
                    let labels: &[f32] = if *single_mask { &[2.0, 3.0, -1.0] } else { &[2.0, 3.0] };
                    boxes
                        .iter()
                        .map(|b| {
                            let [x1, y1, x2, y2] = b.0;
                            let coords = [x1 * sx, y1 * sy, x2 * sx, y2 * sy, 0.0, 0.0];
                            let n = labels.len();
                            let inputs = vec![
                                ("image_embeddings", Input::F32(embeddings.shape.clone(), embeddings.data)),
                                ("point_coords", Input::F32(vec![1, n, 2], &coords[..n * 2])),
                                ("point_labels", Input::F32(vec![1, n], labels)),
                                ("mask_input", Input::F32(vec![1, 1, LOW_RES_SIDE, LOW_RES_SIDE], &NO_MASK)),
                                ("has_mask_input", Input::F32(vec![1], &[0.0])),
                                ("orig_im_size", Input::F32(vec![2], &orig_size)),
                            ];
                            // The first low-resolution mask, upsampled on the CPU threads as SamPredictor does: the
                            // graph's own full-resolution `masks` crop the padded frame one row off on some sizes (the
                            // pre-padding size is computed in float32 inside the graph), and four full-resolution planes
                            // per box would be copied out of the session.
                            decoder.run_with(inputs, &["low_res_masks", "iou_predictions"], |out| {
                                let (low, ious) = (&out[0], &out[1]);
                                let side = low.shape.last().copied().unwrap_or(0);
                                if side == 0 || low.data.len() < side * side || ious.data.is_empty() {
                                    return Err(ModelError::Contract {
                                        model: "segmenter.decoder".into(),
                                        message: format!(
                                            "low_res_masks {:?}, iou_predictions {:?}",
                                            low.shape, ious.shape
                                        ),
                                    });
                                }
                                Ok(MaskOut::LowRes {
                                    logits: Plane::copy_of(&low.data[..side * side]),
                                    side,
                                    frame: Frame::Padded { resized: (nw, nh), side: SAM_SIDE as u32 },
                                    width: ow,
                                    height: oh,
                                    score: ious.data[0],
                                    within: None,
                                })
                            })?
                        })
                        .collect()
                })?
            }
            Segmenter::HfSam { encoder, decoder, boxes_per_call, prompt } => {
                let prepared = prepared.ok_or_else(missing)?;
                let image_input = vec![("pixel_values", Input::F32(prepared.shape.clone(), &prepared.tensor))];
                encoder.run_with(image_input, &["image_embeddings", "image_positional_embeddings"], |out| {
                    let (embeddings, positional) = (&out[0], &out[1]);
                    let (sx, sy) = (nw as f32 / ow as f32, nh as f32 / oh as f32);
                    let frame = Frame::Padded { resized: (nw, nh), side: SAM_SIDE as u32 };
                    let prompt = *prompt;
                    in_box_batches(boxes, *boxes_per_call, |chunk| {
                        let n = chunk.len();
                        let mut inputs =
                            vec![("image_embeddings", Input::F32(embeddings.shape.clone(), embeddings.data))];
                        if decoder.input("image_positional_embeddings").is_some() {
                            inputs.push((
                                "image_positional_embeddings",
                                Input::F32(positional.shape.clone(), positional.data),
                            ));
                        }
                        let (coords, points, labels, within);
                        match prompt {
                            HfSamPrompt::Boxes { padded_points } => {
                                coords = scaled_corners(chunk, sx, sy);
                                inputs.push(("input_boxes", Input::F32(vec![1, n, 4], &coords)));
                                if padded_points {
                                    // Exports that also take points get one padding point per box (label −10: ignored).
                                    (points, labels) = (vec![0f32; n * 2], vec![-10i64; n]);
                                    inputs.push(("input_points", Input::F32(vec![1, n, 1, 2], &points)));
                                    inputs.push(("input_labels", Input::I64(vec![1, n, 1], &labels)));
                                }
                                within = None;
                            }
                            HfSamPrompt::Centres => {
                                points = chunk
                                    .iter()
                                    .flat_map(|b| [(b.0[0] + b.0[2]) / 2.0 * sx, (b.0[1] + b.0[3]) / 2.0 * sy])
                                    .collect();
                                labels = vec![1i64; n];
                                inputs.push(("input_points", Input::F32(vec![1, n, 1, 2], &points)));
                                inputs.push(("input_labels", Input::I64(vec![1, n, 1], &labels)));
                                within = Some(chunk.iter().map(|b| pixel_rect(b, ow, oh)).collect::<Vec<_>>());
                            }
                        }
                        // Only each box's best plane is copied out of the session's buffer.
                        decoder.run_with(inputs, &["iou_scores", "pred_masks"], |out| {
                            low_res_masks(&out[1], &out[0], n, frame, ow, oh, "pred_masks", within.as_deref())
                        })?
                    })
                })?
            }
            Segmenter::Sam2 { encoder, decoder, boxes_per_call } => {
                let prepared = prepared.ok_or_else(missing)?;
                let image_input = vec![("image", Input::F32(prepared.shape.clone(), &prepared.tensor))];
                encoder.run_with(
                    image_input,
                    &["high_res_feats_0", "high_res_feats_1", "image_embed"],
                    |feats| {
                        let (f0, f1, embed) = (&feats[0], &feats[1], &feats[2]);
                        let side = SAM_SIDE as f32;
                        let (sx, sy) = (side / ow as f32, side / oh as f32);
                        in_box_batches(boxes, *boxes_per_call, |chunk| {
                            let n = chunk.len();
                            let coords = scaled_corners(chunk, sx, sy);
                            let labels: Vec<f32> = (0..n).flat_map(|_| [2.0, 3.0]).collect();
                            let no_mask = vec![0f32; n * LOW_RES_SIDE * LOW_RES_SIDE];
                            // One value for every box: the export multiplies `has_mask_input` [k] into the mask embeddings
                            // [k, 256, 64, 64], which broadcasts only when k is 1.
                            let has_mask = [0f32];
                            let inputs = vec![
                                ("image_embed", Input::F32(embed.shape.clone(), embed.data)),
                                ("high_res_feats_0", Input::F32(f0.shape.clone(), f0.data)),
                                ("high_res_feats_1", Input::F32(f1.shape.clone(), f1.data)),
                                ("point_coords", Input::F32(vec![n, 2, 2], &coords)),
                                ("point_labels", Input::F32(vec![n, 2], &labels)),
                                ("mask_input", Input::F32(vec![n, 1, LOW_RES_SIDE, LOW_RES_SIDE], &no_mask)),
                                ("has_mask_input", Input::F32(vec![1], &has_mask)),
                            ];
                            decoder.run_with(inputs, &["masks", "iou_predictions"], |out| {
                                low_res_masks(&out[0], &out[1], n, Frame::Stretched, ow, oh, "masks", None)
                            })?
                        })
                    },
                )?
            }
            Segmenter::SalientCrop { model, margin, threshold } => {
                Ok(salient_masks(model, image, boxes, *margin, *threshold)?
                    .into_iter()
                    .map(MaskOut::Done)
                    .collect())
            }
        }
    }

    /// The sessions, for their run statistics.
    pub fn models(&self) -> Vec<&OnnxModel> {
        match self {
            Segmenter::Sam { encoder, decoder, .. }
            | Segmenter::HfSam { encoder, decoder, .. }
            | Segmenter::Sam2 { encoder, decoder, .. } => vec![encoder, decoder],
            Segmenter::SalientCrop { model, .. } => vec![model],
        }
    }
}

/// The corners of `boxes` in a decoder's input frame, `[x1, y1, x2, y2]` each, flattened.
fn scaled_corners(boxes: &[BoxXyxy], sx: f32, sy: f32) -> Vec<f32> {
    boxes.iter().flat_map(|b| [b.0[0] * sx, b.0[1] * sy, b.0[2] * sx, b.0[3] * sy]).collect()
}

/// Masks of `boxes` from `call` on consecutive chunks of at most `per_call` boxes (decoders that take many boxes
/// per call take them in one piece where they can), through [`in_chunks`]: out-of-memory halves the chunk, and a
/// chunk that fails otherwise is rerun box by box; the image fails with the first box that fails alone.
fn in_box_batches(
    boxes: &[BoxXyxy],
    per_call: Option<usize>,
    call: impl FnMut(&[BoxXyxy]) -> Result<Vec<MaskOut>, ModelError>,
) -> Result<Vec<MaskOut>, ModelError> {
    in_chunks(boxes, per_call.unwrap_or(boxes.len()), "segmenter.decoder", |_, _| true, call).into_iter().collect()
}

/// Boxes per decoder call: the setting, else every box of the image where the decoder takes many, else one.
fn batch_of(setting: Option<usize>, many: bool) -> Option<usize> {
    match (setting, many) {
        (Some(n), true) => Some(n),
        (_, true) => None,
        (_, false) => Some(1),
    }
}

/// The pixels `[x0, y0, x1, y1)` that `bbox`, clamped to the image, covers at least in part.
pub fn pixel_rect(bbox: &BoxXyxy, width: u32, height: u32) -> [u32; 4] {
    let b = bbox.clamped(width as f32, height as f32).0;
    let (x0, y0) = (b[0].floor() as u32, b[1].floor() as u32);
    [x0, y0, (b[2].ceil() as u32).clamp(x0, width), (b[3].ceil() as u32).clamp(y0, height)]
}

/// For each of `n` boxes, the best-scoring of its low-resolution masks (`pred` [.., n, k, s, s] with `scores`
/// [.., n, k]), handed on as logits for the CPU threads to upsample (kept inside `within[b]` where given).
#[allow(clippy::too_many_arguments)]
fn low_res_masks(
    pred: &super::runtime::View<'_>,
    scores: &super::runtime::View<'_>,
    n: usize,
    frame: Frame,
    width: u32,
    height: u32,
    name: &str,
    within: Option<&[[u32; 4]]>,
) -> Result<Vec<MaskOut>, ModelError> {
    let k = scores.data.len() / n.max(1);
    let side = pred.shape.last().copied().unwrap_or(0);
    let plane = side * side;
    if k == 0 || side == 0 || pred.data.len() != n * k * plane || scores.data.len() != n * k {
        return Err(ModelError::Contract {
            model: "segmenter.decoder".into(),
            message: format!("{name} {:?} and scores {:?} for {n} boxes", pred.shape, scores.shape),
        });
    }
    Ok((0..n)
        .map(|b| {
            let row = &scores.data[b * k..(b + 1) * k];
            // The best score, the first of equals.
            let best = (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best });
            let start = (b * k + best) * plane;
            MaskOut::LowRes {
                logits: Plane::copy_of(&pred.data[start..start + plane]),
                side,
                frame,
                width,
                height,
                score: row[best],
                within: within.and_then(|w| w.get(b).copied()),
            }
        })
        .collect())
}

/// The crop of `image` around `bbox` widened by `margin` of the box's size on each side, clipped to the image:
/// `(x0, y0, w, h)`.
pub fn crop_region(bbox: &BoxXyxy, margin: f32, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let b = bbox.clamped(width as f32, height as f32);
    let (mx, my) = (b.width() * margin, b.height() * margin);
    let x0 = (b.0[0] - mx).floor().max(0.0) as u32;
    let y0 = (b.0[1] - my).floor().max(0.0) as u32;
    let x1 = ((b.0[2] + mx).ceil() as u32).min(width).max(x0 + 1);
    let y1 = ((b.0[3] + my).ceil() as u32).min(height).max(y0 + 1);
    (x0.min(width - 1), y0.min(height - 1), x1 - x0.min(width - 1), y1 - y0.min(height - 1))
}

/// ISNet's input: RGB / 255 − 0.5.
const ISNET: Normalization = Normalization { divisor: 255.0, mean: [0.5; 3], std: [1.0; 3] };

/// ISNet's input for a crop: resized to 1024², RGB/255 − 0.5.
pub fn salient_input(image: &RgbImage, crop: (u32, u32, u32, u32)) -> Result<Vec<f32>, ModelError> {
    let (x0, y0, w, h) = crop;
    let cropped = image::imageops::crop_imm(image, x0, y0, w, h).to_image();
    let resized = resize_bilinear(&cropped, ISNET_SIDE as u32, ISNET_SIDE as u32)?;
    Ok(to_planar(&resized, &ISNET, ISNET_SIDE, ISNET_SIDE))
}

/// The full-image mask from ISNet's probability map of a crop: resized back to the crop, thresholded, and kept
/// inside the box. The score is the mean probability over the mask.
pub fn salient_output(
    probabilities: &[f32],
    crop: (u32, u32, u32, u32),
    bbox: &BoxXyxy,
    width: u32,
    height: u32,
    threshold: f32,
) -> Result<Mask, ModelError> {
    let (x0, y0, w, h) = crop;
    let side = ISNET_SIDE as u32;
    let gray = GrayImage::from_raw(
        side,
        side,
        probabilities.iter().map(|p| (p.clamp(0.0, 1.0) * 255.0).round() as u8).collect(),
    )
    .ok_or_else(|| ModelError::Postprocess(format!("ISNet output of {} values", probabilities.len())))?;
    let back = image::imageops::resize(&gray, w, h, image::imageops::FilterType::Triangle);
    let b = bbox.clamped(width as f32, height as f32).0;
    let (bx0, by0, bx1, by1) = (b[0].floor() as u32, b[1].floor() as u32, b[2].ceil() as u32, b[3].ceil() as u32);
    let mut pixels = vec![false; (width * height) as usize];
    let (mut sum, mut count) = (0f32, 0u32);
    let cut = (threshold * 255.0).round() as u8;
    for y in 0..h {
        for x in 0..w {
            let (gx, gy) = (x0 + x, y0 + y);
            if gx < bx0 || gx >= bx1 || gy < by0 || gy >= by1 {
                continue;
            }
            let v = back.get_pixel(x, y).0[0];
            if v > cut {
                pixels[(gy * width + gx) as usize] = true;
                sum += f32::from(v) / 255.0;
                count += 1;
            }
        }
    }
    let score = if count == 0 { 0.0 } else { sum / count as f32 };
    Ok(Mask::encode(width, height, score, |i| pixels[i]))
}

/// ISNet on every box, pipelined: while the model runs on box k, a second thread prepares the input of box k + 1
/// and finishes the mask of box k − 1, so cropping, resizing and thresholding hide behind inference.
fn salient_masks(
    model: &mut OnnxModel,
    image: &RgbImage,
    boxes: &[BoxXyxy],
    margin: f32,
    threshold: f32,
) -> Result<Vec<Mask>, ModelError> {
    let (w, h) = image.dimensions();
    let crops: Vec<_> = boxes.iter().map(|b| crop_region(b, margin, w, h)).collect();
    let finish =
        |probabilities: Vec<f32>, k: usize| salient_output(&probabilities, crops[k], &boxes[k], w, h, threshold);
    let mut masks = Vec::with_capacity(boxes.len());
    let mut input = salient_input(image, crops[0])?;
    let mut previous: Option<(Vec<f32>, usize)> = None;
    for k in 0..boxes.len() {
        let (run, (next, done)) = std::thread::scope(|scope| {
            let side = scope.spawn(|| {
                let next = crops.get(k + 1).map(|crop| salient_input(image, *crop));
                let done = previous.take().map(|(probabilities, j)| finish(probabilities, j));
                (next, done)
            });
            let run =
                model.run(vec![("input", Input::F32(vec![1, 3, ISNET_SIDE, ISNET_SIDE], &input))], &["output"]);
            let side = side
                .join()
                .unwrap_or_else(|_| (None, Some(Err(ModelError::Postprocess("mask thread crashed".into())))));
            (run, side)
        });
        if let Some(done) = done {
            masks.push(done?);
        }
        let mut outputs = run?;
        let probabilities = outputs.remove("output").map(|o| o.data).unwrap_or_default();
        previous = Some((probabilities, k));
        if let Some(next) = next {
            input = next?;
        }
    }
    if let Some((probabilities, j)) = previous {
        masks.push(finish(probabilities, j)?);
    }
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_widen_by_the_margin_and_stay_inside() {
        assert_eq!(crop_region(&BoxXyxy([10.0, 10.0, 30.0, 20.0]), 0.1, 100, 100), (8, 9, 24, 12));
        assert_eq!(crop_region(&BoxXyxy([0.0, 0.0, 100.0, 100.0]), 0.5, 100, 100), (0, 0, 100, 100));
        let (x, y, w, h) = crop_region(&BoxXyxy([99.5, 99.5, 99.6, 99.6]), 0.1, 100, 100);
        assert!(x + w <= 100 && y + h <= 100 && w >= 1 && h >= 1);
    }

    #[test]
    fn bilinear_taps_follow_half_pixel_centres() {
        // Doubling: output 0 sits at source -0.25 (clamped to 0), output 1 at 0.25.
        let t = taps(2, 4);
        assert_eq!(t[0], (0, 1, 0.0));
        assert_eq!((t[1].0, t[1].1), (0, 1));
        assert!((t[1].2 - 0.25).abs() < 1e-6);
        assert_eq!((t[3].0, t[3].1), (1, 1), "past the last centre both taps are the edge");
        // Same size: the identity.
        let plane = [1.0, -2.0, 3.0, -4.0];
        assert_eq!(resize_plane(&plane, 2, 2, 2, 2), plane.to_vec());
    }

    #[test]
    fn a_mask_kept_within_a_rectangle_has_nothing_outside_it() {
        let logits = vec![5.0f32; 16];
        let whole = upsample_mask(&logits, 4, Frame::Stretched, 8, 6, 0.5, None);
        assert_eq!(whole.area, 48);
        let rect = pixel_rect(&BoxXyxy([1.2, 0.5, 4.0, 9.0]), 8, 6);
        assert_eq!(rect, [1, 0, 4, 6], "floor of the start, ceil of the end, clamped to the image");
        let kept = upsample_mask(&logits, 4, Frame::Stretched, 8, 6, 0.5, Some(rect));
        let pixels = kept.pixels().unwrap();
        assert_eq!(kept.area, 3 * 6);
        for (i, p) in pixels.iter().enumerate() {
            assert_eq!(*p, (1..4).contains(&(i % 8)), "pixel {i}");
        }
        // A box outside the image keeps nothing, and never a rectangle that ends before it starts.
        let [x0, y0, x1, y1] = pixel_rect(&BoxXyxy([20.0, 20.0, 30.0, 30.0]), 8, 6);
        assert!(x0 <= x1 && y0 <= y1);
        assert_eq!(upsample_mask(&logits, 4, Frame::Stretched, 8, 6, 0.5, Some([x0, y0, x1, y1])).area, 0);
    }

    /// The upsampling as it was written first: the whole intermediate plane, then every pixel of the image.
    fn upsample_whole(
        logits: &[f32],
        side: usize,
        frame: Frame,
        width: u32,
        height: u32,
        within: Option<[u32; 4]>,
    ) -> Vec<bool> {
        let (w, h) = (width as usize, height as usize);
        let (plane, pw, ph) = match frame {
            Frame::Padded { resized, side: input } => {
                let input = input as usize;
                let full = resize_plane(logits, side, side, input, input);
                let (rw, rh) = ((resized.0 as usize).clamp(1, input), (resized.1 as usize).clamp(1, input));
                let mut crop = Vec::with_capacity(rw * rh);
                for y in 0..rh {
                    crop.extend_from_slice(&full[y * input..y * input + rw]);
                }
                (crop, rw, rh)
            }
            Frame::Stretched => (logits.to_vec(), side, side),
        };
        let (tx, ty) = (taps(pw, w), taps(ph, h));
        let [x0, y0, x1, y1] = within.map_or([0, 0, w, h], |r| r.map(|v| v as usize));
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if x < x0 || x >= x1 || y < y0 || y >= y1 {
                    return false;
                }
                let ((x0, x1, wx), (y0, y1, wy)) = (tx[x], ty[y]);
                let top = plane[y0 * pw + x0] * (1.0 - wx) + plane[y0 * pw + x1] * wx;
                let bottom = plane[y1 * pw + x0] * (1.0 - wx) + plane[y1 * pw + x1] * wx;
                top * (1.0 - wy) + bottom * wy > 0.0
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn upsampling_only_what_the_mask_reads_gives_the_whole_computations_pixels(
            side in 1usize..9, grow in 0usize..14, rw in 1usize..24, rh in 1usize..24,
            w in 1u32..40, h in 1u32..40, padded in proptest::bool::ANY,
            rect in proptest::option::of((0u32..44, 0u32..44, 0u32..44, 0u32..44)),
            seed in proptest::prelude::any::<u64>(), shift in proptest::sample::select(vec![0.0f32, 0.8, 0.97, 2.0]),
        ) {
            let mut state = seed | 1;
            let logits: Vec<f32> = (0..side * side).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                (state % 2001) as f32 / 1000.0 - 1.0 - shift
            }).collect();
            let input = side + grow;
            let frame = if padded {
                Frame::Padded { resized: (rw.min(input) as u32, rh.min(input) as u32), side: input as u32 }
            } else {
                Frame::Stretched
            };
            let within = rect.map(|(a, b, c, d)| [a.min(c), b.min(d), a.max(c), b.max(d)]);
            let mask = upsample_mask(&logits, side, frame, w, h, 0.5, within);
            let expected = upsample_whole(&logits, side, frame, w, h, within);
            proptest::prop_assert_eq!(mask.pixels().unwrap(), expected.clone());
            proptest::prop_assert_eq!(mask.area, expected.iter().filter(|p| **p).count() as u64);
        }
    }

    #[test]
    fn low_res_masks_map_through_the_padded_frame() {
        // A 4x4 low-res mask of a 16x16 padded input holding an 8x16 (w x h) image: the left half of the low-res
        // mask is the image; its top-left quarter is foreground.
        let mut logits = vec![-5.0f32; 16];
        for y in 0..2 {
            for x in 0..1 {
                logits[y * 4 + x] = 5.0;
            }
        }
        let mask = upsample_mask(&logits, 4, Frame::Padded { resized: (8, 16), side: 16 }, 4, 8, 0.9, None);
        let pixels = mask.pixels().unwrap();
        // Foreground: the left half of the columns, the top half of the rows (edges blur by a pixel).
        assert!(pixels[0] && pixels[8], "{pixels:?}");
        assert!(!pixels[3] && !pixels[7 * 4], "{pixels:?}");
        assert_eq!(mask.score, 0.9);
    }

    #[test]
    fn salient_output_is_kept_inside_the_box() {
        let probabilities = vec![1.0; ISNET_SIDE * ISNET_SIDE];
        let bbox = BoxXyxy([2.0, 2.0, 6.0, 5.0]);
        let mask = salient_output(&probabilities, (0, 0, 10, 10), &bbox, 10, 10, 0.5).unwrap();
        assert_eq!(mask.area, 12);
        assert_eq!(mask.pixels().unwrap().iter().filter(|p| **p).count(), 12);
        assert!((mask.score - 1.0).abs() < 1e-6);
    }
}

//! Segmenters: a mask for each detected box.
//!
//! - `sam`: Segment Anything. The image encoder runs once per image (`image` [1, 3, 1024, 1024]: longest side to
//!   1024 with SAM's rounding, PIL bilinear, `(x − pixel_mean) / pixel_std` on 0..255 values, zero padding bottom
//!   and right → `image_embeddings` [1, 256, 64, 64]); the official decoder export
//!   (`segment_anything/utils/onnx.py`: `image_embeddings`, `point_coords`, `point_labels`, `mask_input`,
//!   `has_mask_input`, `orig_im_size` → `masks`, `iou_predictions`, `low_res_masks`) takes each box as its two
//!   corners with labels 2 and 3 (no padding point, as `SamPredictor` with a box), coordinates scaled by
//!   `ResizeLongestSide.apply_coords`. Of a multimask export the first mask is taken, as the Grounded-SAM demo's
//!   `multimask_output=False`; masks are logits thresholded at 0.
//! - `salient_crop`: ISNet salient-object segmentation (`input` [1, 3, 1024, 1024] = RGB/255 − 0.5 → `output`
//!   [1, 1, 1024, 1024] in 0..1, the model of npm `@imgly/background-removal-data`) on the box's crop widened by a
//!   margin, the probability map resized back (bilinear), thresholded, and kept inside the box.

use image::{GrayImage, RgbImage};

use super::preprocess::{SAM_MEAN, SAM_STD, longest_side_size, resize_bilinear, to_planar};
use super::runtime::{Device, Input, OnnxModel};
use super::{ModelError, SegmenterConfig, SegmenterFamily};
use crate::geometry::{BoxXyxy, Rle};

/// Side of SAM's square encoder input.
pub const SAM_SIDE: usize = 1024;
/// Side of ISNet's square input.
pub const ISNET_SIDE: usize = 1024;

/// A mask at the original image's resolution, COCO RLE-encoded as soon as the model returns it (a full-resolution
/// mask of every object of a batch would otherwise be held until the batch is done), with the model's confidence.
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

/// A loaded segmenter of either family, with its sessions.
pub enum Segmenter {
    /// SAM's image encoder and prompt decoder.
    Sam { encoder: OnnxModel, decoder: OnnxModel, encoder_input: String },
    /// ISNet on each box's crop, with the crop margin and the foreground threshold.
    SalientCrop { model: OnnxModel, margin: f32, threshold: f32 },
}

impl Segmenter {
    /// Loads the sessions of `config`'s family from `files` (SAM: encoder and decoder; salient_crop: the model).
    pub fn load(
        config: &SegmenterConfig,
        files: &[&std::path::Path],
        device: Device,
        threads: usize,
    ) -> Result<Segmenter, ModelError> {
        match config.family {
            SegmenterFamily::Sam => {
                let [encoder, decoder] = files else {
                    return Err(ModelError::Config("sam needs an encoder and a decoder".into()));
                };
                let encoder = OnnxModel::load("segmenter.encoder", encoder, device, threads)?;
                encoder.expect(&[], &["image_embeddings"])?;
                let decoder = OnnxModel::load("segmenter.decoder", decoder, device, threads)?;
                decoder.expect(
                    &[
                        "image_embeddings",
                        "point_coords",
                        "point_labels",
                        "mask_input",
                        "has_mask_input",
                        "orig_im_size",
                    ],
                    &["masks", "iou_predictions"],
                )?;
                let encoder_input = encoder.inputs.first().cloned().unwrap_or_else(|| "image".into());
                Ok(Segmenter::Sam { encoder, decoder, encoder_input })
            }
            SegmenterFamily::SalientCrop => {
                let [model] = files else { return Err(ModelError::Config("salient_crop needs one model".into())) };
                let model = OnnxModel::load("segmenter", model, device, threads)?;
                model.expect(&["input"], &["output"])?;
                Ok(Segmenter::SalientCrop { model, margin: config.margin, threshold: config.mask_threshold })
            }
        }
    }

    /// What can be computed from the image alone, before boxes are known: SAM's encoder input.
    pub fn prepare(family: SegmenterFamily, image: &RgbImage) -> Result<Option<Vec<f32>>, ModelError> {
        match family {
            SegmenterFamily::Sam => {
                let (w, h) = longest_side_size(image.width(), image.height(), SAM_SIDE as u32);
                let resized = resize_bilinear(image, w, h)?;
                Ok(Some(to_planar(&resized, 1.0, SAM_MEAN, SAM_STD, SAM_SIDE, SAM_SIDE)))
            }
            SegmenterFamily::SalientCrop => Ok(None),
        }
    }

    /// A mask for each box (pixels of the original image).
    pub fn infer(
        &mut self,
        image: &RgbImage,
        prepared: Option<&[f32]>,
        boxes: &[BoxXyxy],
    ) -> Result<Vec<Mask>, ModelError> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Segmenter::Sam { encoder, decoder, encoder_input } => {
                let owned;
                let tensor = match prepared {
                    Some(t) => t,
                    None => {
                        owned = Segmenter::prepare(SegmenterFamily::Sam, image)?.unwrap_or_default();
                        &owned
                    }
                };
                let side = SAM_SIDE;
                let out = encoder.run(
                    vec![(encoder_input.as_str(), Input::F32(vec![1, 3, side, side], tensor))],
                    &["image_embeddings"],
                )?;
                let embeddings = &out["image_embeddings"];
                let (ow, oh) = image.dimensions();
                let (nw, nh) = longest_side_size(ow, oh, side as u32);
                let (sx, sy) = (nw as f32 / ow as f32, nh as f32 / oh as f32);
                let no_mask = vec![0f32; 256 * 256];
                let orig_size = [oh as f32, ow as f32];
                boxes
                    .iter()
                    .map(|b| {
                        let [x1, y1, x2, y2] = b.0;
                        let coords = [x1 * sx, y1 * sy, x2 * sx, y2 * sy];
                        let inputs = vec![
                            ("image_embeddings", Input::F32(embeddings.shape.clone(), &embeddings.data)),
                            ("point_coords", Input::F32(vec![1, 2, 2], &coords)),
                            ("point_labels", Input::F32(vec![1, 2], &[2.0, 3.0])),
                            ("mask_input", Input::F32(vec![1, 1, 256, 256], &no_mask)),
                            ("has_mask_input", Input::F32(vec![1], &[0.0])),
                            ("orig_im_size", Input::F32(vec![2], &orig_size)),
                        ];
                        let out = decoder.run(inputs, &["masks", "iou_predictions"])?;
                        let (masks, ious) = (&out["masks"], &out["iou_predictions"]);
                        let plane = (ow * oh) as usize;
                        if masks.data.len() < plane {
                            return Err(ModelError::Contract {
                                model: "segmenter.decoder".into(),
                                message: format!("masks {:?} for a {ow}x{oh} image", masks.shape),
                            });
                        }
                        let logits = &masks.data[..plane];
                        let score = ious.data.first().copied().unwrap_or(0.0);
                        Ok(Mask::encode(ow, oh, score, |i| logits[i] > 0.0))
                    })
                    .collect()
            }
            Segmenter::SalientCrop { model, margin, threshold } => {
                salient_masks(model, image, boxes, *margin, *threshold)
            }
        }
    }

    /// The sessions, for their run statistics.
    pub fn models(&self) -> Vec<&OnnxModel> {
        match self {
            Segmenter::Sam { encoder, decoder, .. } => vec![encoder, decoder],
            Segmenter::SalientCrop { model, .. } => vec![model],
        }
    }
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

/// ISNet's input for a crop: resized to 1024², RGB/255 − 0.5.
pub fn salient_input(image: &RgbImage, crop: (u32, u32, u32, u32)) -> Result<Vec<f32>, ModelError> {
    let (x0, y0, w, h) = crop;
    let cropped = image::imageops::crop_imm(image, x0, y0, w, h).to_image();
    let resized = resize_bilinear(&cropped, ISNET_SIDE as u32, ISNET_SIDE as u32)?;
    Ok(to_planar(&resized, 1.0 / 255.0, [0.5; 3], [1.0; 3], ISNET_SIDE, ISNET_SIDE))
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
    fn salient_output_is_kept_inside_the_box() {
        let probabilities = vec![1.0; ISNET_SIDE * ISNET_SIDE];
        let bbox = BoxXyxy([2.0, 2.0, 6.0, 5.0]);
        let mask = salient_output(&probabilities, (0, 0, 10, 10), &bbox, 10, 10, 0.5).unwrap();
        assert_eq!(mask.area, 12);
        assert_eq!(mask.pixels().unwrap().iter().filter(|p| **p).count(), 12);
        assert!((mask.score - 1.0).abs() < 1e-6);
    }
}

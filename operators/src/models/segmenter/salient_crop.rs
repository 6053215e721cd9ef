//! `salient_crop`: ISNet salient-object segmentation (`input` [1, 3, 1024, 1024] = RGB/255 − 0.5 → `output`
//! [1, 1, 1024, 1024] in 0..1, the model of npm `@imgly/background-removal-data`) on the box's crop widened by a
//! margin, the probability map resized back (bilinear), thresholded, and kept inside the box.

use std::path::Path;

use image::{GrayImage, RgbImage};
use serde_json::Value;

use super::{BoxSegmenter, Family, Mask, MaskOut, SegmenterImage, SegmenterInput, follow, refuse_batch};
use crate::geometry::BoxXyxy;
use crate::models::preprocess::{Normalization, resize_bilinear, to_planar};
use crate::models::refiner::shortest;
use crate::models::runtime::{Contract, Device, Input, OnnxModel};
use crate::models::{ModelError, SegmenterConfig};

pub(super) static FAMILY: Family =
    Family { files: &["model"], encoders: &[], decoders: &[], settings, load: SalientCrop::load };

/// Its one graph's contract, the only one its refusal lists.
const CONTRACT: Contract = Contract { key: "family = \"salient_crop\"", inputs: &["input"], outputs: &["output"] };

/// Side of ISNet's square input.
pub const ISNET_SIDE: usize = 1024;

/// The crop margin and the foreground threshold change every mask: both are in the `refiner` column.
fn settings(config: &SegmenterConfig) -> Vec<(&'static str, Value)> {
    vec![("margin", shortest(config.margin)), ("mask_threshold", shortest(config.mask_threshold))]
}

/// ISNet on each box's crop, with the crop margin and the foreground threshold.
struct SalientCrop {
    model: OnnxModel,
    margin: f32,
    threshold: f32,
}

impl SalientCrop {
    fn load(
        config: &SegmenterConfig,
        files: &[&Path],
        device: Device,
        threads: usize,
    ) -> Result<Box<dyn BoxSegmenter>, ModelError> {
        let [model] = files else { return Err(ModelError::Config("salient_crop needs one model".into())) };
        let model = OnnxModel::load("segmenter", model, device, threads)?;
        follow(&model, &CONTRACT, &[CONTRACT])?;
        refuse_batch(config, "salient_crop")?;
        Ok(Box::new(SalientCrop { model, margin: config.margin, threshold: config.mask_threshold }))
    }
}

impl BoxSegmenter for SalientCrop {
    fn input(&self) -> SegmenterInput {
        SegmenterInput::None
    }

    fn infer(
        &mut self,
        image: &RgbImage,
        _prepared: Option<&SegmenterImage>,
        boxes: &[BoxXyxy],
    ) -> Result<Vec<MaskOut>, ModelError> {
        let SalientCrop { model, margin, threshold } = self;
        Ok(salient_masks(model, image, boxes, *margin, *threshold)?.into_iter().map(MaskOut::Done).collect())
    }

    fn models(&self) -> Vec<&OnnxModel> {
        vec![&self.model]
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
    fn salient_output_is_kept_inside_the_box() {
        let probabilities = vec![1.0; ISNET_SIDE * ISNET_SIDE];
        let bbox = BoxXyxy([2.0, 2.0, 6.0, 5.0]);
        let mask = salient_output(&probabilities, (0, 0, 10, 10), &bbox, 10, 10, 0.5).unwrap();
        assert_eq!(mask.area, 12);
        assert_eq!(mask.pixels().unwrap().iter().filter(|p| **p).count(), 12);
        assert!((mask.score - 1.0).abs() < 1e-6);
    }
}

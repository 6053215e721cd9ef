//! `hf_sam`: transformers' SamModel as optimum exports it and transformers.js ships SAM and SlimSAM:
//! `vision_encoder` (`pixel_values` [1, 3, 1024, 1024]: SamProcessor's resize of the longest side to 1024,
//! ImageNet normalization of RGB/255, zero padding → `image_embeddings`, `image_positional_embeddings`) and
//! `prompt_encoder_mask_decoder` (`image_embeddings`, `image_positional_embeddings`, `input_points`
//! [1, boxes, 1, 2] and `input_labels` in the resized frame → `iou_scores` [1, boxes, 3], `pred_masks`
//! [1, boxes, 3, 256, 256]); every box of an image in one call (or `segmenter.batch_size` at a time). optimum's
//! export has no box input, and transformers' point encoder embeds only labels 0 and 1 (not SAM's corner labels 2
//! and 3), so a box goes in as its centre, a positive point, and its mask is kept inside the box. A decoder
//! exported with `input_boxes` [1, boxes, 4] gets the boxes themselves. Of the three masks the best-scoring is
//! kept; `post_process_masks` then upsamples it to the padded 1024 frame, crops the resized image and resizes
//! that to the original (bilinear, half-pixel centres), thresholded at 0.

use std::path::Path;

use image::RgbImage;

use super::masks::low_res_masks;
use super::{
    BoxSegmenter, Family, Frame, MaskOut, SAM_SIDE, SegmenterImage, SegmenterInput, batch_of, encoder_and_decoder,
    follow_decoder, follow_encoder, in_box_batches, no_settings, pixel_rect, prepared_image, refuse_batch,
    scaled_corners, takes_many,
};
use crate::geometry::BoxXyxy;
use crate::models::preprocess::{IMAGENET, longest_side_size};
use crate::models::runtime::{Contract, Device, Input, OnnxModel};
use crate::models::{ModelError, SegmenterConfig};

pub(super) static FAMILY: Family = Family {
    files: &["encoder", "decoder"],
    encoders: &[ENCODER],
    decoders: &[DECODER, DECODER_BOXES],
    settings: no_settings,
    load: HfSam::load,
};

/// optimum's SAM export, as transformers.js ships SAM and SlimSAM: points only (optimum passes
/// `input_boxes=None`, "not supported in the ONNX export").
const DECODER: Contract = Contract {
    key: "family = \"hf_sam\" (prompt_encoder_mask_decoder)",
    inputs: &["image_embeddings", "image_positional_embeddings", "input_points", "input_labels"],
    outputs: &["iou_scores", "pred_masks"],
};
/// The same modules exported with the prompt encoder's box input.
const DECODER_BOXES: Contract = Contract {
    key: "family = \"hf_sam\" (prompt_encoder_mask_decoder with input_boxes)",
    inputs: &["image_embeddings", "input_boxes"],
    outputs: &["iou_scores", "pred_masks"],
};
const ENCODER: Contract = Contract {
    key: "family = \"hf_sam\" (vision_encoder)",
    inputs: &["pixel_values"],
    outputs: &["image_embeddings", "image_positional_embeddings"],
};

/// How boxes reach an `hf_sam` decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HfSamPrompt {
    /// `input_boxes` [1, boxes, 4]; `padded_points`: the graph also takes points, given one ignored point per box.
    Boxes { padded_points: bool },
    /// Points only (optimum's export): each box as its centre, a positive point (`input_points` [1, boxes, 1, 2],
    /// `input_labels` 1), the best of the three masks kept inside the box.
    Centres,
}

/// transformers' SAM split: vision encoder and prompt encoder + mask decoder, many boxes per call.
struct HfSam {
    encoder: OnnxModel,
    decoder: OnnxModel,
    /// Boxes per decoder call (`None`: every box of the image).
    boxes_per_call: Option<usize>,
    prompt: HfSamPrompt,
}

impl HfSam {
    fn load(
        config: &SegmenterConfig,
        files: &[&Path],
        device: Device,
        threads: usize,
    ) -> Result<Box<dyn BoxSegmenter>, ModelError> {
        let (encoder, decoder) = encoder_and_decoder("hf_sam", files, device, threads)?;
        follow_encoder(&encoder, &ENCODER)?;
        let (prompt, many) = if DECODER_BOXES.matches(&decoder) {
            let padded_points = decoder.input("input_points").is_some();
            (HfSamPrompt::Boxes { padded_points }, takes_many(&decoder, "input_boxes", 1))
        } else {
            follow_decoder(&decoder, &DECODER)?;
            (HfSamPrompt::Centres, takes_many(&decoder, "input_points", 1))
        };
        if !many {
            refuse_batch(config, "this prompt_encoder_mask_decoder")?;
        }
        Ok(Box::new(HfSam { encoder, decoder, boxes_per_call: batch_of(config.batch_size, many), prompt }))
    }
}

impl BoxSegmenter for HfSam {
    fn input(&self) -> SegmenterInput {
        SegmenterInput::Padded { side: SAM_SIDE as u32, normalization: IMAGENET }
    }

    fn infer(
        &mut self,
        image: &RgbImage,
        prepared: Option<&SegmenterImage>,
        boxes: &[BoxXyxy],
    ) -> Result<Vec<MaskOut>, ModelError> {
        let HfSam { encoder, decoder, boxes_per_call, prompt } = self;
        let (ow, oh) = image.dimensions();
        let (nw, nh) = longest_side_size(ow, oh, SAM_SIDE as u32);
        let prepared = prepared_image(prepared)?;
        let image_input = vec![("pixel_values", Input::F32(prepared.shape.clone(), &prepared.tensor))];
        encoder.run_with(image_input, &["image_embeddings", "image_positional_embeddings"], |out| {
            let (embeddings, positional) = (&out[0], &out[1]);
            let (sx, sy) = (nw as f32 / ow as f32, nh as f32 / oh as f32);
            let frame = Frame::Padded { resized: (nw, nh), side: SAM_SIDE as u32 };
            let prompt = *prompt;
            in_box_batches(boxes, *boxes_per_call, |chunk| {
                let n = chunk.len();
                let mut inputs = vec![("image_embeddings", Input::F32(embeddings.shape.clone(), embeddings.data))];
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

    fn models(&self) -> Vec<&OnnxModel> {
        vec![&self.encoder, &self.decoder]
    }
}

//! `sam2`: SAM 2 / 2.1 as samexporter exports it: the encoder (`image` [1, 3, 1024, 1024], the image stretched to
//! 1024², ImageNet normalization → `high_res_feats_0`, `high_res_feats_1`, `image_embed`) and the decoder (those,
//! `point_coords` [boxes, 2, 2] and `point_labels` [boxes, 2] of the box corners in the stretched frame,
//! `mask_input`, `has_mask_input` → `masks` [boxes, 3, 256, 256], `iou_predictions`); every box in one call, the
//! best-scoring mask resized to the image.

use std::path::Path;

use image::RgbImage;

use super::masks::low_res_masks;
use super::{
    BoxSegmenter, Family, Frame, LOW_RES_SIDE, MaskOut, SAM_SIDE, SegmenterImage, SegmenterInput, batch_of,
    encoder_and_decoder, follow_decoder, follow_encoder, in_box_batches, no_settings, prepared_image, refuse_batch,
    scaled_corners, takes_many,
};
use crate::geometry::BoxXyxy;
use crate::models::preprocess::IMAGENET;
use crate::models::runtime::{Contract, Device, Input, OnnxModel};
use crate::models::{ModelError, SegmenterConfig};

pub(super) static FAMILY: Family = Family {
    files: &["encoder", "decoder"],
    encoders: &[ENCODER],
    decoders: &[DECODER],
    settings: no_settings,
    load: Sam2::load,
};

const DECODER: Contract = Contract {
    key: "family = \"sam2\" (decoder)",
    inputs: &["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "mask_input"],
    outputs: &["masks", "iou_predictions"],
};
const ENCODER: Contract = Contract {
    key: "family = \"sam2\" (encoder)",
    inputs: &["image"],
    outputs: &["high_res_feats_0", "high_res_feats_1", "image_embed"],
};

/// SAM 2: encoder and decoder, many boxes per call.
struct Sam2 {
    encoder: OnnxModel,
    decoder: OnnxModel,
    /// Boxes per decoder call (`None`: every box of the image).
    boxes_per_call: Option<usize>,
}

impl Sam2 {
    fn load(
        config: &SegmenterConfig,
        files: &[&Path],
        device: Device,
        threads: usize,
    ) -> Result<Box<dyn BoxSegmenter>, ModelError> {
        let (encoder, decoder) = encoder_and_decoder("sam2", files, device, threads)?;
        follow_encoder(&encoder, &ENCODER)?;
        follow_decoder(&decoder, &DECODER)?;
        let many = takes_many(&decoder, "point_coords", 0);
        if !many {
            refuse_batch(config, "this SAM 2 decoder")?;
        }
        Ok(Box::new(Sam2 { encoder, decoder, boxes_per_call: batch_of(config.batch_size, many) }))
    }
}

impl BoxSegmenter for Sam2 {
    fn input(&self) -> SegmenterInput {
        SegmenterInput::Stretched { side: SAM_SIDE as u32, normalization: IMAGENET }
    }

    fn infer(
        &mut self,
        image: &RgbImage,
        prepared: Option<&SegmenterImage>,
        boxes: &[BoxXyxy],
    ) -> Result<Vec<MaskOut>, ModelError> {
        let Sam2 { encoder, decoder, boxes_per_call } = self;
        let (ow, oh) = image.dimensions();
        let prepared = prepared_image(prepared)?;
        let image_input = vec![("image", Input::F32(prepared.shape.clone(), &prepared.tensor))];
        encoder.run_with(image_input, &["high_res_feats_0", "high_res_feats_1", "image_embed"], |feats| {
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
        })?
    }

    fn models(&self) -> Vec<&OnnxModel> {
        vec![&self.encoder, &self.decoder]
    }
}

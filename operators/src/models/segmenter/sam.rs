//! `sam`: Segment Anything with the official decoder export (`segment_anything/utils/onnx.py`:
//! `image_embeddings`, `point_coords`, `point_labels`, `mask_input`, `has_mask_input`, `orig_im_size` → `masks`,
//! `iou_predictions`). The encoder is samexporter's, either form: `input_image` [1, 3, 1024, 1024] (longest side to
//! 1024 with SAM's rounding, PIL bilinear, `(x − pixel_mean) / pixel_std` on 0..255 values, zero padding bottom and
//! right) or, exported `--use-preprocess`, `input_image` [H, W, 3] with the resized image's raw 0..255 values (the
//! graph normalizes and pads). Each box goes in as its two corners with labels 2 and 3, coordinates scaled by
//! `ResizeLongestSide.apply_coords`; a `--return-single-mask` decoder (declared `iou_predictions` [1, 1]) also gets
//! the padding point (0, 0) with label −1, without which it picks one of the multimask outputs instead of the box
//! mask. Of a multimask export the first mask is taken, as `SamPredictor(multimask_output=False)`: its
//! `low_res_masks` plane, brought to the image as `Sam.postprocess_masks` does and thresholded at 0.

use std::path::Path;

use image::RgbImage;

use super::{
    BoxSegmenter, Family, Frame, LOW_RES_SIDE, MaskOut, SAM_SIDE, SegmenterImage, SegmenterInput,
    encoder_and_decoder, follow_decoder, follow_encoder, no_settings, prepared_image, refuse_batch,
};
use crate::geometry::BoxXyxy;
use crate::models::planes::Plane;
use crate::models::preprocess::{SAM_PIXELS, longest_side_size};
use crate::models::runtime::{Contract, Device, Input, OnnxModel};
use crate::models::{ModelError, SegmenterConfig};

pub(super) static FAMILY: Family = Family {
    files: &["encoder", "decoder"],
    encoders: &[ENCODER],
    decoders: &[DECODER],
    settings: no_settings,
    load: Sam::load,
};

const DECODER: Contract = Contract {
    key: "family = \"sam\" (official decoder)",
    inputs: &["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
    outputs: &["masks", "iou_predictions", "low_res_masks"],
};
const ENCODER: Contract =
    Contract { key: "family = \"sam\" (encoder)", inputs: &[], outputs: &["image_embeddings"] };

/// The empty `mask_input` of a box prompt. A static: zero pages, mapped once, instead of 256 KiB allocated,
/// zeroed and faulted in for every image on the inference thread.
static NO_MASK: [f32; LOW_RES_SIDE * LOW_RES_SIDE] = [0.0; LOW_RES_SIDE * LOW_RES_SIDE];

/// SAM's image encoder and official prompt decoder.
struct Sam {
    encoder: OnnxModel,
    decoder: OnnxModel,
    /// The encoder's image input, by the name its graph gives it.
    encoder_input: String,
    /// The encoder takes the resized image's raw values (exported `--use-preprocess`).
    raw: bool,
    /// The decoder gives one mask per box (exported `--return-single-mask`).
    single_mask: bool,
}

impl Sam {
    fn load(
        config: &SegmenterConfig,
        files: &[&Path],
        device: Device,
        threads: usize,
    ) -> Result<Box<dyn BoxSegmenter>, ModelError> {
        let (encoder, decoder) = encoder_and_decoder("sam", files, device, threads)?;
        follow_encoder(&encoder, &ENCODER)?;
        follow_decoder(&decoder, &DECODER)?;
        refuse_batch(config, "the official SAM decoder")?;
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
        Ok(Box::new(Sam { encoder, decoder, encoder_input: port.name, raw, single_mask }))
    }
}

impl BoxSegmenter for Sam {
    fn input(&self) -> SegmenterInput {
        if self.raw {
            SegmenterInput::Resized { side: SAM_SIDE as u32 }
        } else {
            SegmenterInput::Padded { side: SAM_SIDE as u32, normalization: SAM_PIXELS }
        }
    }

    fn infer(
        &mut self,
        image: &RgbImage,
        prepared: Option<&SegmenterImage>,
        boxes: &[BoxXyxy],
    ) -> Result<Vec<MaskOut>, ModelError> {
        let Sam { encoder, decoder, encoder_input, single_mask, .. } = self;
        let (ow, oh) = image.dimensions();
        let (nw, nh) = longest_side_size(ow, oh, SAM_SIDE as u32);
        let prepared = prepared_image(prepared)?;
        // The decoder reads the embeddings where the encoder's session left them: a copy would be 4 MiB an
        // image on the inference thread.
        let image_input = vec![(encoder_input.as_str(), Input::F32(prepared.shape.clone(), &prepared.tensor))];
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
                                message: format!("low_res_masks {:?}, iou_predictions {:?}", low.shape, ious.shape),
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

    fn models(&self) -> Vec<&OnnxModel> {
        vec![&self.encoder, &self.decoder]
    }
}

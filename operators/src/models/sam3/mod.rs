//! SAM 3 (Segment Anything with Concepts): given a short noun phrase, a box, a mask and a score for every instance,
//! with a presence head. A [`SegmentingDetector`]: `[detector] family = "sam3"`, no `[segmenter]`.
//!
//! The ONNX contract is usls's public export (its `scripts/sam3-image/export.py` and `export_v2.py`, the graphs of
//! jamjamjon/assets release `sam3`), in both layouts:
//!
//! - vision encoder: `images` [B, 3, H, W] (1008² in the public files) → `fpn_feat_0` [B, C, H/3.5, W/3.5],
//!   `fpn_feat_1`, `fpn_feat_2`, `fpn_pos_2`;
//! - text encoder: `input_ids`, `attention_mask` [B, 32] → `text_features` [B, 32, C], `text_mask`;
//! - decoder → `pred_masks` [B, 200, 288, 288] (logits), `pred_boxes` [B, 200, 4] (xyxy, fractions of the image),
//!   `pred_logits` [B, 200], `presence_logits` [B, 1]; its prompt is either `prompt_features`, `prompt_mask`
//!   (v1, four graphs: the geometry encoder is a graph of its own, which text prompts do not need) or
//!   `text_features`, `text_mask`, `input_boxes`, `input_boxes_labels` (v2, three graphs: the geometry encoder
//!   folded into the decoder; a text prompt gives it one padding box labelled −10, as usls's `inference_v2.py`
//!   does). A decoder that follows neither is refused at load.
//!
//! Pre- and post-processing follow usls's `inference_v2.py` (`Sam3ONNXInferenceV2`): the image stretched to the
//! encoder's size with PIL's bilinear, `x / 127.5 − 1`; the prompt through the CLIP BPE `tokenizer.json`, padded
//! with `<|endoftext|>` and truncated to the text encoder's 32 tokens; an instance's score is
//! `sigmoid(pred_logits) · sigmoid(presence_logits)` (as transformers' `post_process_instance_segmentation` combines
//! them), kept when above `threshold`; its box scaled to the image's pixels; its mask logits upsampled to the
//! displayed image (bilinear, half-pixel centres) and thresholded at 0, on the CPU threads.
//!
//! The image is encoded once and its features serve every prompt; prompts go through the text encoder and the
//! decoder `batch_size` at a time (the features repeated along the batch). Each prompt's kept instances go through
//! the class-agnostic NMS and the cap (`iou_threshold`, `max_detections`), then the instances of all the prompts
//! through them again, so that a thing two tags name keeps one box.

use serde_json::json;
use tokenizers::Tokenizer;

use super::batching::in_chunks;
use super::planes::Plane;
use super::preprocess::{Normalization, sigmoid};
use super::runtime::{Contract, Device, Input, OnnxModel, View, refuse};
use super::segmenter::Frame;
use super::segmenting::{SegmentingDetector, StretchedInput};
use super::{
    DEFAULT_MAX_DETECTIONS, Detection, DetectorConfig, DetectorImage, DetectorPrompt, MaskOut, ModelError,
    ModelPaths, ModelsConfig, best_boxes,
};
use crate::geometry::BoxXyxy;

/// `threshold` when the models file sets none.
pub const DEFAULT_THRESHOLD: f32 = 0.5;
/// The text encoder's context when its graph does not declare one (the public export's).
const CONTEXT: usize = 32;
/// The vision encoder's side when its graph does not declare one (the public export's).
const SIDE: u32 = 1008;
/// The label of v2's padding box: "no box" (usls `inference_v2.py`, `GeometryEncoderWrapper`).
const NO_BOX_LABEL: i64 = -10;
/// usls's `preprocess_image`: `x / 127.5 − 1`.
const SIGNED_UNIT: Normalization = Normalization { divisor: 127.5, mean: [1.0; 3], std: [1.0; 3] };

const VISION: Contract = Contract {
    key: "family = \"sam3\" (vision_encoder)",
    inputs: &["images"],
    outputs: &["fpn_feat_0", "fpn_feat_1", "fpn_feat_2", "fpn_pos_2"],
};
const TEXT: Contract = Contract {
    key: "family = \"sam3\" (text_encoder)",
    inputs: &["input_ids", "attention_mask"],
    outputs: &["text_features", "text_mask"],
};
const OUTPUTS: &[&str] = &["pred_masks", "pred_boxes", "pred_logits", "presence_logits"];
const DECODER_V1: Contract = Contract {
    key: "family = \"sam3\" (decoder, v1: 4 graphs)",
    inputs: &["fpn_feat_0", "fpn_feat_1", "fpn_feat_2", "fpn_pos_2", "prompt_features", "prompt_mask"],
    outputs: OUTPUTS,
};
const DECODER_V2: Contract = Contract {
    key: "family = \"sam3\" (decoder, v2: 3 graphs)",
    inputs: &[
        "fpn_feat_0",
        "fpn_feat_1",
        "fpn_feat_2",
        "fpn_pos_2",
        "text_features",
        "text_mask",
        "input_boxes",
        "input_boxes_labels",
    ],
    outputs: OUTPUTS,
};
const FEATURES: [&str; 4] = ["fpn_feat_0", "fpn_feat_1", "fpn_feat_2", "fpn_pos_2"];

/// Which public layout the decoder follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `prompt_features`, `prompt_mask`: the geometry encoder is a separate graph.
    V1,
    /// `text_features`, `text_mask`, `input_boxes`, `input_boxes_labels`: the geometry encoder inside.
    V2,
}

/// A loaded SAM 3: its three sessions, tokenizer and thresholds.
pub struct Sam3 {
    vision: OnnxModel,
    text: OnnxModel,
    decoder: OnnxModel,
    layout: Layout,
    tokenizer: Tokenizer,
    pad_id: i64,
    context: usize,
    input: StretchedInput,
    threshold: f32,
    iou_threshold: f32,
    max_detections: usize,
    batch_size: usize,
}

/// One instance kept for a prompt, before the merge across prompts.
struct Candidate {
    detection: Detection,
    mask: MaskOut,
}

impl Sam3 {
    /// Loads the three graphs and the tokenizer of `config` (`[detector] family = "sam3"`), checking each graph's
    /// inputs and outputs and telling the decoder's layout from them.
    pub fn load(
        config: &DetectorConfig,
        files: &ModelPaths,
        device: Device,
        threads: usize,
    ) -> Result<Sam3, ModelError> {
        let load = |key: &str| {
            OnnxModel::load(&format!("detector.{key}"), files.get(&format!("detector.{key}"))?, device, threads)
        };
        let vision = load("vision_encoder")?;
        if !VISION.matches(&vision) {
            return Err(refuse(&vision, VISION.key, &[VISION]));
        }
        let text = load("text_encoder")?;
        if !TEXT.matches(&text) {
            return Err(refuse(&text, TEXT.key, &[TEXT]));
        }
        let decoder = load("decoder")?;
        let layout = if DECODER_V2.matches(&decoder) {
            Layout::V2
        } else if DECODER_V1.matches(&decoder) {
            Layout::V1
        } else {
            return Err(refuse(&decoder, "family = \"sam3\" (decoder)", &[DECODER_V1, DECODER_V2]));
        };
        let images = vision.input("images").cloned().ok_or_else(|| refuse(&vision, VISION.key, &[VISION]))?;
        let side = |axis: usize| images.dim(axis).map_or(SIDE, |d| d as u32);
        let input = StretchedInput { width: side(3), height: side(2), normalization: SIGNED_UNIT };
        let context = text.input("input_ids").and_then(|p| p.dim(1)).unwrap_or(CONTEXT);
        // A graph with a fixed batch takes that many prompts a run, at most.
        let fixed = [text.input("input_ids"), decoder.input("fpn_feat_0")]
            .into_iter()
            .flatten()
            .filter_map(|p| p.dim(0))
            .min();
        let batch_size = fixed.map_or(config.batch_size, |f| config.batch_size.min(f.max(1)));
        let path = files.get("detector.tokenizer")?;
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| ModelError::Load {
            model: "detector.tokenizer".into(),
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let pad = tokenizer.get_padding().map(|p| p.pad_id).or_else(|| tokenizer.token_to_id("<|endoftext|>"));
        let pad_id = pad.ok_or_else(|| ModelError::Load {
            model: "detector.tokenizer".into(),
            path: path.display().to_string(),
            message: "no padding token and no <|endoftext|> (SAM 3 takes CLIP's BPE tokenizer)".into(),
        })?;
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams { max_length: context, ..Default::default() }))
            .map_err(|e| ModelError::Load {
                model: "detector.tokenizer".into(),
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        Ok(Sam3 {
            vision,
            text,
            decoder,
            layout,
            tokenizer,
            pad_id: i64::from(pad_id),
            context,
            input,
            threshold: config.threshold.unwrap_or(DEFAULT_THRESHOLD),
            iou_threshold: config.iou_threshold,
            max_detections: config.max_detections,
            batch_size,
        })
    }

    /// `input_ids` and `attention_mask` of `prompts`, each `[context]`: the tokens with CLIP's start and end,
    /// truncated, then padded with the padding token (mask 0).
    fn tokens(&self, prompts: &[&str]) -> Result<(Vec<i64>, Vec<i64>), ModelError> {
        let mut ids = vec![self.pad_id; prompts.len() * self.context];
        let mut mask = vec![0i64; prompts.len() * self.context];
        for (k, prompt) in prompts.iter().enumerate() {
            let encoding = self
                .tokenizer
                .encode(*prompt, true)
                .map_err(|e| ModelError::Preprocess(format!("tokenize `{prompt}`: {e}")))?;
            for (i, (&id, &m)) in
                encoding.get_ids().iter().zip(encoding.get_attention_mask()).take(self.context).enumerate()
            {
                ids[k * self.context + i] = i64::from(id);
                mask[k * self.context + i] = i64::from(m);
            }
        }
        Ok((ids, mask))
    }

    /// The kept instances of each of `prompts` (at most `batch_size` of them) on the image's `features`.
    fn decode(
        &mut self,
        features: &[(Vec<usize>, Vec<f32>)],
        prompts: &[&str],
        width: u32,
        height: u32,
    ) -> Result<Vec<Vec<Candidate>>, ModelError> {
        let n = prompts.len();
        let (ids, attention) = self.tokens(prompts)?;
        let shape = vec![n, self.context];
        let text = self.text.run(
            vec![
                ("input_ids", Input::I64(shape.clone(), &ids)),
                ("attention_mask", Input::I64(shape.clone(), &attention)),
            ],
            &["text_features"],
        )?;
        let text_features = &text["text_features"];
        // The text encoder's `text_mask` is `attention_mask > 0` (usls `TextEncoderWrapper`): made here rather than
        // read back as a bool output.
        let text_mask: Vec<bool> = attention.iter().map(|m| *m > 0).collect();
        // One copy of the image's features for each prompt of the run; a run of one reads them in place.
        let repeated: Vec<Vec<f32>> =
            if n > 1 { features.iter().map(|(_, data)| data.repeat(n)).collect() } else { Vec::new() };
        let mut inputs: Vec<(&str, Input<'_>)> = Vec::with_capacity(8);
        for (k, (name, (shape, data))) in FEATURES.iter().zip(features).enumerate() {
            let mut shape = shape.clone();
            shape[0] = n;
            let data: &[f32] = if n > 1 { &repeated[k] } else { data };
            inputs.push((name, Input::F32(shape, data)));
        }
        let no_boxes = vec![0f32; n * 4];
        let no_labels = vec![NO_BOX_LABEL; n];
        let (features_name, mask_name) = match self.layout {
            Layout::V1 => ("prompt_features", "prompt_mask"),
            Layout::V2 => ("text_features", "text_mask"),
        };
        inputs.push((features_name, Input::F32(text_features.shape.clone(), &text_features.data)));
        inputs.push((mask_name, Input::Bool(shape, &text_mask)));
        if self.layout == Layout::V2 {
            inputs.push(("input_boxes", Input::F32(vec![n, 1, 4], &no_boxes)));
            inputs.push(("input_boxes_labels", Input::I64(vec![n, 1], &no_labels)));
        }
        let post = Post {
            threshold: self.threshold,
            iou_threshold: self.iou_threshold,
            max_detections: self.max_detections,
        };
        self.decoder.run_with(inputs, OUTPUTS, |out| post.instances(out, prompts, width, height))?
    }
}

/// What turns the decoder's outputs into instances.
struct Post {
    threshold: f32,
    iou_threshold: f32,
    max_detections: usize,
}

impl Post {
    /// Each prompt's instances above the threshold, through NMS and the cap, with their mask logits copied out of
    /// the session's buffer (only theirs).
    fn instances(
        &self,
        out: &[View<'_>],
        prompts: &[&str],
        width: u32,
        height: u32,
    ) -> Result<Vec<Vec<Candidate>>, ModelError> {
        let (masks, boxes, logits, presence) = (&out[0], &out[1], &out[2], &out[3]);
        let n = prompts.len();
        let queries = logits.data.len() / n.max(1);
        let side = masks.shape.last().copied().unwrap_or(0);
        let plane = side * side;
        if queries == 0
            || logits.data.len() != n * queries
            || boxes.data.len() != n * queries * 4
            || masks.data.len() != n * queries * plane
            || presence.data.len() != n
        {
            return Err(ModelError::Contract {
                model: "detector.decoder".into(),
                message: format!(
                    "pred_masks {:?}, pred_boxes {:?}, pred_logits {:?} and presence_logits {:?} disagree for {n} \
                     prompts",
                    masks.shape, boxes.shape, logits.shape, presence.shape
                ),
            });
        }
        let (w, h) = (width as f32, height as f32);
        Ok(prompts
            .iter()
            .enumerate()
            .map(|(k, prompt)| {
                let present = sigmoid(presence.data[k]);
                let mut scores = Vec::new();
                let mut kept: Vec<(usize, BoxXyxy)> = Vec::new();
                for q in 0..queries {
                    let score = sigmoid(logits.data[k * queries + q]) * present;
                    // Strictly above, as the reference filters; a NaN score keeps nothing.
                    if score.partial_cmp(&self.threshold) != Some(std::cmp::Ordering::Greater) {
                        continue;
                    }
                    let b = &boxes.data[(k * queries + q) * 4..(k * queries + q) * 4 + 4];
                    kept.push((q, BoxXyxy([b[0] * w, b[1] * h, b[2] * w, b[3] * h])));
                    scores.push(score);
                }
                let all: Vec<BoxXyxy> = kept.iter().map(|(_, b)| *b).collect();
                best_boxes(&all, &scores, self.iou_threshold, self.max_detections)
                    .into_iter()
                    .map(|i| {
                        let (q, bbox) = kept[i];
                        let start = (k * queries + q) * plane;
                        Candidate {
                            detection: Detection {
                                phrase: prompt.to_string(),
                                tokens: Vec::new(),
                                score: scores[i],
                                bbox,
                            },
                            mask: MaskOut::LowRes {
                                logits: Plane::copy_of(&masks.data[start..start + plane]),
                                side,
                                frame: Frame::Stretched,
                                width,
                                height,
                                score: scores[i],
                                within: None,
                            },
                        }
                    })
                    .collect()
            })
            .collect())
    }
}

impl SegmentingDetector for Sam3 {
    fn input(&self) -> StretchedInput {
        self.input
    }

    fn infer(
        &mut self,
        image: &DetectorImage,
        prompts: &[String],
        width: u32,
        height: u32,
    ) -> Result<Vec<(Detection, MaskOut)>, ModelError> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let shape = vec![1, 3, image.height, image.width];
        let features: Vec<(Vec<usize>, Vec<f32>)> =
            self.vision.run_with(vec![("images", Input::F32(shape, &image.tensor))], &FEATURES, |out| {
                out.iter().map(|v| (v.shape.clone(), v.data.to_vec())).collect()
            })?;
        let names: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let batch_size = self.batch_size;
        let found = in_chunks(
            &names,
            batch_size,
            "detector",
            |_, _| true,
            |chunk| self.decode(&features, chunk, width, height),
        );
        let mut candidates: Vec<Candidate> = Vec::new();
        for result in found {
            candidates.extend(result?);
        }
        let boxes: Vec<BoxXyxy> = candidates.iter().map(|c| c.detection.bbox).collect();
        let scores: Vec<f32> = candidates.iter().map(|c| c.detection.score).collect();
        let order = best_boxes(&boxes, &scores, self.iou_threshold, self.max_detections);
        let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
        Ok(order.into_iter().filter_map(|i| slots[i].take()).map(|c| (c.detection, c.mask)).collect())
    }

    fn models(&self) -> Vec<&OnnxModel> {
        vec![&self.vision, &self.text, &self.decoder]
    }
}

/// The `detector` entry of the `refiner` column for `family = "sam3"`: each file's source and checksum, and the
/// settings that change what is kept.
pub fn describe(config: &ModelsConfig, files: &ModelPaths, d: &DetectorConfig) -> serde_json::Value {
    let file = |key: &str| -> serde_json::Value {
        let key = format!("detector.{key}");
        let source = config.files().get(&key).map(|f| f.source().to_string()).unwrap_or_default();
        json!({ "source": source, "sha256": files.sha256.get(&key).cloned().unwrap_or_default() })
    };
    let num = |v: f32| -> serde_json::Value { v.to_string().parse::<f64>().map_or(json!(null), |f| json!(f)) };
    let mut v = json!({
        "family": d.family,
        "vision_encoder": file("vision_encoder"),
        "text_encoder": file("text_encoder"),
        "decoder": file("decoder"),
        "tokenizer": file("tokenizer"),
        "threshold": num(d.threshold.unwrap_or(DEFAULT_THRESHOLD)),
        "iou_threshold": num(d.iou_threshold),
    });
    if d.max_detections != DEFAULT_MAX_DETECTIONS {
        v["max_detections"] = json!(d.max_detections);
    }
    if d.prompt != DetectorPrompt::default() {
        v["prompt"] = json!(d.prompt);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logit(p: f32) -> f32 {
        (p / (1.0 - p)).ln()
    }

    #[test]
    fn scores_combine_the_presence_and_each_prompt_keeps_its_best_boxes() {
        // Two prompts, three queries, 2×2 masks. Prompt 0 is present (0.9): query 0 scores 0.9·0.8 = 0.72, query 1
        // 0.9·0.6 = 0.54 (kept, but it overlaps query 0), query 2 0.9·0.5 = 0.45 (below 0.5). Prompt 1 is absent
        // (presence 0.1): its best query scores 0.099, nothing kept.
        let logits = [logit(0.8), logit(0.6), logit(0.5), logit(0.99), logit(0.9), logit(0.9)];
        let presence = [logit(0.9), logit(0.1)];
        let boxes: Vec<f32> = [[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]]
            .repeat(2)
            .into_iter()
            .flatten()
            .collect();
        let masks: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32).collect();
        let views = [
            View { shape: vec![2, 3, 2, 2], data: &masks },
            View { shape: vec![2, 3, 4], data: &boxes },
            View { shape: vec![2, 3], data: &logits },
            View { shape: vec![2, 1], data: &presence },
        ];
        let post = Post { threshold: 0.5, iou_threshold: 0.6, max_detections: 100 };
        let found = post.instances(&views, &["dog", "cat"], 200, 100).unwrap();
        assert_eq!(found.len(), 2);
        assert!(found[1].is_empty());
        let kept = &found[0];
        assert_eq!(kept.len(), 1, "the overlapping query is suppressed");
        let dog = &kept[0];
        assert_eq!(dog.detection.phrase, "dog");
        assert!((dog.detection.score - 0.72).abs() < 1e-6);
        // Fractions of the image to its pixels.
        let b = dog.detection.bbox.0;
        assert!((b[0] - 20.0).abs() < 1e-4 && (b[1] - 10.0).abs() < 1e-4 && (b[2] - 100.0).abs() < 1e-4);
        match &dog.mask {
            MaskOut::LowRes { logits, side, frame, width, height, score, within } => {
                assert_eq!(&logits[..], &[0.0, 1.0, 2.0, 3.0]);
                assert_eq!((*side, *frame, *width, *height, *within), (2, Frame::Stretched, 200, 100, None));
                assert_eq!(*score, dog.detection.score);
            }
            other => panic!("{other:?}"),
        }
        // Outputs that disagree with the prompts' count are the decoder's contract error.
        let err = post.instances(&views, &["dog"], 200, 100).err().unwrap();
        assert!(matches!(err, ModelError::Contract { .. }), "{err}");
        // Strictly above the threshold: a score equal to it is not kept.
        let post = Post { threshold: sigmoid(logits[0]) * sigmoid(presence[0]), ..post };
        assert!(post.instances(&views, &["dog", "cat"], 200, 100).unwrap()[0].is_empty());
    }
}

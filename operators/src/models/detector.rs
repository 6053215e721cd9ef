//! Grounding DINO, open-vocabulary detection prompted with text, in both published ONNX contracts:
//!
//! - IDEA-Research / X-AnyLabeling (`img`, `input_ids`, `attention_mask`, `position_ids`, `token_type_ids`,
//!   `text_token_mask` → `logits` [1, 900, 256], `boxes` cxcywh): the caller builds the sub-sentence attention
//!   mask and position ids, as `generate_masks_with_special_tokens_and_transfer_map` does;
//! - Hugging Face transformers / optimum (`pixel_values`, `input_ids`, `token_type_ids`, `attention_mask`,
//!   `pixel_mask` → `logits`, `pred_boxes`): the graph builds them itself.
//!
//! Pre- and post-processing follow Grounding DINO's `inference.py` and the Grounded-SAM demo: shorter side 800,
//! longer at most 1333 (PIL bilinear), ImageNet normalization — or, for a graph that declares a static image size
//! (X-AnyLabeling's IDEA export is traced at 1×3×800×1200, and tracing freezes transformers' multi-scale shapes at the
//! traced size), the image stretched to that size, as that export's callers do (boxes are fractions of the input, so
//! they map back unchanged; `image_size` in the models file does the same for a graph declared dynamic that only
//! works at the size it was traced at); BERT tokenization from `tokenizer.json`; a query is
//! kept when its best token score (sigmoid) is above `box_threshold`, its phrase is the decoded tokens scoring above
//! `text_threshold` (`get_phrases_from_posmap`, [CLS] and positions from 255 on excluded), its score the best token
//! score; boxes go to pixel corners of the original image and through class-agnostic NMS.

use image::RgbImage;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::preprocess::{IMAGENET, dino_size, resize_bilinear, sigmoid, to_planar};
use super::runtime::{Contract, Device, Input, OnnxModel, refuse};
use super::{DetectorConfig, DetectorExport, ModelError};
use crate::geometry::{BoxXyxy, cxcywh_to_xyxy, nms_at_most};

/// One detection, in pixels of the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The tokens scoring above `text_threshold`, decoded: empty until [`Phrases::decode`] fills it on a CPU
    /// thread (decoding is not the inference thread's work).
    pub phrase: String,
    /// The ids of those tokens.
    pub tokens: Vec<u32>,
    /// The best token score (sigmoid) of the query.
    pub score: f32,
    /// Corners in pixels of the original image (not clamped).
    pub bbox: BoxXyxy,
}

/// The detector's image input: `[3, h, w]` and its size.
#[derive(Debug, Clone)]
pub struct DetectorImage {
    /// Planar RGB, ImageNet-normalized, row-major.
    pub tensor: Vec<f32>,
    pub width: usize,
    pub height: usize,
}

/// The text inputs of one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct TextInputs {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    pub position_ids: Vec<i64>,
    /// Row-major `[L, L]` sub-sentence self-attention mask.
    pub text_token_mask: Vec<bool>,
}

/// A loaded Grounding DINO: its session, tokenizer and thresholds.
pub struct Detector {
    model: OnnxModel,
    tokenizer: Arc<Tokenizer>,
    export: DetectorExport,
    /// The static (width, height) the graph declares for its image, if any.
    fixed_size: Option<(u32, u32)>,
    special: Vec<u32>,
    box_threshold: f32,
    text_threshold: f32,
    iou_threshold: f32,
    max_text_len: usize,
    max_detections: usize,
    /// The HF export's `pixel_mask` of one unpadded image, all ones, kept from one call to the next: at 800×1066
    /// it is 6.8 MB of `i64` that a fresh allocation would page-fault in and fill on the inference thread for
    /// every image.
    ones: Vec<i64>,
}

const IDEA: Contract = Contract {
    key: "export = \"idea\"",
    inputs: &["img", "input_ids", "attention_mask", "position_ids", "token_type_ids", "text_token_mask"],
    outputs: &["logits", "boxes"],
};
const HF: Contract = Contract {
    key: "export = \"hf\"",
    inputs: &["pixel_values", "input_ids", "token_type_ids", "attention_mask", "pixel_mask"],
    outputs: &["logits", "pred_boxes"],
};

impl Detector {
    /// Loads the model and its tokenizer, checking the export's input and output names.
    pub fn load(
        config: &DetectorConfig,
        model: &std::path::Path,
        tokenizer: &std::path::Path,
        device: Device,
        threads: usize,
    ) -> Result<Detector, ModelError> {
        let model = OnnxModel::load("detector", model, device, threads)?;
        let (contract, image) = match config.export {
            DetectorExport::Idea => (IDEA, "img"),
            DetectorExport::Hf => (HF, "pixel_values"),
        };
        if !contract.matches(&model) {
            return Err(refuse(&model, contract.key, &[IDEA, HF]));
        }
        let port = model.input(image).cloned().ok_or_else(|| refuse(&model, contract.key, &[IDEA, HF]))?;
        let declared = match (port.dim(3), port.dim(2)) {
            (Some(w), Some(h)) => Some((w as u32, h as u32)),
            _ => None,
        };
        let fixed_size = match (config.image_size, declared) {
            (Some([h, w]), Some(d)) if (w, h) != d => {
                return Err(ModelError::Config(format!(
                    "detector.image_size = [{h}, {w}]: the graph's input {port} takes {} x {} (height x width) only; \
                     remove the setting",
                    d.1, d.0
                )));
            }
            (Some([h, w]), _) if h == 0 || w == 0 => {
                return Err(ModelError::Config(format!(
                    "detector.image_size = [{h}, {w}]: both sides must be > 0"
                )));
            }
            (Some([h, w]), _) => Some((w, h)),
            (None, declared) => declared,
        };
        if config.batch_size > 1 && port.dim(0).is_some_and(|b| b < config.batch_size) {
            return Err(ModelError::Config(format!(
                "detector.batch_size = {}: the graph's input {port} takes a fixed batch of {}",
                config.batch_size,
                port.dim(0).unwrap_or(1)
            )));
        }
        let tokenizer = Tokenizer::from_file(tokenizer).map_err(|e| ModelError::Load {
            model: "detector".into(),
            path: tokenizer.display().to_string(),
            message: format!("tokenizer: {e}"),
        })?;
        let special = ["[CLS]", "[SEP]", ".", "?"].iter().filter_map(|t| tokenizer.token_to_id(t)).collect();
        Ok(Detector {
            model,
            tokenizer: Arc::new(tokenizer),
            export: config.export,
            fixed_size,
            special,
            box_threshold: config.box_threshold,
            text_threshold: config.text_threshold,
            iou_threshold: config.iou_threshold,
            max_text_len: config.max_text_len,
            max_detections: config.max_detections,
            ones: Vec::new(),
        })
    }

    /// The prompt tokens the model sees; the rest of a prompt is cut.
    pub fn max_text_len(&self) -> usize {
        self.max_text_len
    }

    /// The static (width, height) the graph declares for its image, if any.
    pub fn fixed_size(&self) -> Option<(u32, u32)> {
        self.fixed_size
    }

    /// The model input of one image: stretched to `fixed_size` when the graph declares one, else resized as
    /// Grounding DINO resizes.
    pub fn prepare(image: &RgbImage, fixed_size: Option<(u32, u32)>) -> Result<DetectorImage, ModelError> {
        let (w, h) = fixed_size.unwrap_or_else(|| dino_size(image.width(), image.height(), 800, 1333));
        let resized = resize_bilinear(image, w, h)?;
        let (w, h) = (w as usize, h as usize);
        Ok(DetectorImage { tensor: to_planar(&resized, &IMAGENET, w, h), width: w, height: h })
    }

    /// Tokenizes `caption` and builds the sub-sentence mask and position ids, truncated to `max_text_len`.
    pub fn text_inputs(&self, caption: &str) -> Result<TextInputs, ModelError> {
        let encoding = self
            .tokenizer
            .encode(caption, true)
            .map_err(|e| ModelError::Preprocess(format!("tokenize `{caption}`: {e}")))?;
        // The masks are those of the whole prompt cut to `max_text_len`, as the reference cuts them (only the kept
        // block is made): a phrase cut in two keeps attending to itself with its positions, not as tokens with no
        // phrase.
        let all = encoding.get_ids();
        let (mask, positions) = sub_sentence_masks(all, &self.special, self.max_text_len);
        let n = positions.len();
        Ok(TextInputs {
            input_ids: all.iter().take(n).map(|&i| i64::from(i)).collect(),
            attention_mask: encoding.get_attention_mask().iter().take(n).map(|&m| i64::from(m)).collect(),
            token_type_ids: encoding.get_type_ids().iter().take(n).map(|&t| i64::from(t)).collect(),
            position_ids: positions,
            text_token_mask: mask,
        })
    }

    /// Detections of `caption` in one prepared image of an original `orig_w`×`orig_h` image.
    pub fn infer(
        &mut self,
        image: &DetectorImage,
        caption: &str,
        orig_w: u32,
        orig_h: u32,
    ) -> Result<Vec<Detection>, ModelError> {
        Ok(self.infer_batch(&[(image, caption, orig_w, orig_h)])?.pop().unwrap_or_default())
    }

    /// Whether images of different prepared sizes can share a run: the Hugging Face contract takes a pixel mask, so
    /// smaller images are padded; the IDEA contract has none.
    pub fn pads_images(&self) -> bool {
        self.export == DetectorExport::Hf
    }

    /// Detections of each `(image, caption, original width, original height)` in one run: prompts padded to the
    /// longest (attention masks zero, padding tokens attending to themselves only), images padded to the largest
    /// with the pixel mask set (HF contract; the IDEA contract needs images of one size).
    pub fn infer_batch(
        &mut self,
        items: &[(&DetectorImage, &str, u32, u32)],
    ) -> Result<Vec<Vec<Detection>>, ModelError> {
        let Some(first) = items.first() else { return Ok(Vec::new()) };
        let b = items.len();
        let texts: Vec<TextInputs> =
            items.iter().map(|(_, caption, _, _)| self.text_inputs(caption)).collect::<Result<_, _>>()?;
        let l = texts.iter().map(|t| t.input_ids.len()).max().unwrap_or(0).max(1);
        let (w, h) = (
            items.iter().map(|(i, ..)| i.width).max().unwrap_or(first.0.width),
            items.iter().map(|(i, ..)| i.height).max().unwrap_or(first.0.height),
        );
        if !self.pads_images() && items.iter().any(|(i, ..)| (i.width, i.height) != (w, h)) {
            return Err(ModelError::Preprocess("images of different sizes in one IDEA detector run".into()));
        }
        let mut input_ids = vec![0i64; b * l];
        let mut attention = vec![0i64; b * l];
        let mut token_types = vec![0i64; b * l];
        let mut positions = vec![0i64; b * l];
        let mut text_mask = vec![false; b * l * l];
        for (k, t) in texts.iter().enumerate() {
            let n = t.input_ids.len();
            input_ids[k * l..k * l + n].copy_from_slice(&t.input_ids);
            attention[k * l..k * l + n].copy_from_slice(&t.attention_mask);
            token_types[k * l..k * l + n].copy_from_slice(&t.token_type_ids);
            positions[k * l..k * l + n].copy_from_slice(&t.position_ids);
            for row in 0..l {
                let dst = k * l * l + row * l;
                if row < n {
                    text_mask[dst..dst + n].copy_from_slice(&t.text_token_mask[row * n..(row + 1) * n]);
                } else {
                    text_mask[dst + row] = true;
                }
            }
        }
        let one_image = b == 1 && (first.0.width, first.0.height) == (w, h);
        let mut padded = Vec::new();
        if !one_image {
            padded = vec![0f32; b * 3 * h * w];
            for (k, (image, ..)) in items.iter().enumerate() {
                let (iw, ih) = (image.width, image.height);
                for c in 0..3 {
                    for y in 0..ih {
                        let src = &image.tensor[(c * ih + y) * iw..(c * ih + y + 1) * iw];
                        let dst = ((k * 3 + c) * h + y) * w;
                        padded[dst..dst + iw].copy_from_slice(src);
                    }
                }
            }
        }
        let mut padded_mask = Vec::new();
        if self.export == DetectorExport::Hf {
            if one_image {
                // Every pixel is real: the ones of the last image of this size serve again.
                if self.ones.len() != h * w {
                    self.ones = vec![1; h * w];
                }
            } else {
                padded_mask = vec![0i64; b * h * w];
                for (k, (image, ..)) in items.iter().enumerate() {
                    for y in 0..image.height {
                        padded_mask[(k * h + y) * w..(k * h + y) * w + image.width].fill(1);
                    }
                }
            }
        }
        let pixel_mask: &[i64] = if one_image { &self.ones } else { &padded_mask };
        let pixel_data: &[f32] = if one_image { &first.0.tensor } else { &padded };
        let pixels = Input::F32(vec![b, 3, h, w], pixel_data);
        let attention_bool: Vec<bool> = attention.iter().map(|m| *m != 0).collect();
        let (inputs, boxes_name) = match self.export {
            DetectorExport::Idea => (
                vec![
                    ("img", pixels),
                    ("input_ids", Input::I64(vec![b, l], &input_ids)),
                    ("attention_mask", Input::Bool(vec![b, l], &attention_bool)),
                    ("position_ids", Input::I64(vec![b, l], &positions)),
                    ("token_type_ids", Input::I64(vec![b, l], &token_types)),
                    ("text_token_mask", Input::Bool(vec![b, l, l], &text_mask)),
                ],
                "boxes",
            ),
            DetectorExport::Hf => (
                vec![
                    ("pixel_values", pixels),
                    ("input_ids", Input::I64(vec![b, l], &input_ids)),
                    ("token_type_ids", Input::I64(vec![b, l], &token_types)),
                    ("attention_mask", Input::I64(vec![b, l], &attention)),
                    ("pixel_mask", Input::I64(vec![b, h, w], pixel_mask)),
                ],
                "pred_boxes",
            ),
        };
        let post = Post {
            box_threshold: self.box_threshold,
            text_threshold: self.text_threshold,
            iou_threshold: self.iou_threshold,
            max_detections: self.max_detections,
        };
        // Read where the session left them: a copy of the logits would be ~1 MB an image on the inference thread.
        self.model.run_with(inputs, &["logits", boxes_name], |out| {
            let (logits, boxes) = (&out[0], &out[1]);
            let queries = boxes.data.len() / (4 * b);
            let width = logits.data.len() / (queries * b).max(1);
            if queries == 0 || logits.data.len() != b * queries * width || boxes.data.len() != b * queries * 4 {
                return Err(ModelError::Contract {
                    model: "detector".into(),
                    message: format!(
                        "logits {:?} and boxes {:?} disagree for a batch of {b}",
                        logits.shape, boxes.shape
                    ),
                });
            }
            items
                .iter()
                .zip(&texts)
                .enumerate()
                .map(|(k, ((_, _, orig_w, orig_h), text))| {
                    let logits = &logits.data[k * queries * width..(k + 1) * queries * width];
                    let boxes = &boxes.data[k * queries * 4..(k + 1) * queries * 4];
                    post.detections(logits, boxes, queries, width, &text.input_ids, *orig_w, *orig_h)
                })
                .collect()
        })?
    }

    /// The session, for its run statistics.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// What decodes the phrases of this detector's detections.
    pub fn phrases(&self) -> Phrases {
        Phrases(self.tokenizer.clone())
    }
}

/// What turns a detector's outputs into detections.
struct Post {
    box_threshold: f32,
    text_threshold: f32,
    iou_threshold: f32,
    max_detections: usize,
}

impl Post {
    /// The kept detections of one image's `logits` [queries, width] and `boxes` [queries, 4] (cxcywh, fractions).
    #[allow(clippy::too_many_arguments)]
    fn detections(
        &self,
        logits: &[f32],
        boxes: &[f32],
        queries: usize,
        width: usize,
        input_ids: &[i64],
        orig_w: u32,
        orig_h: u32,
    ) -> Result<Vec<Detection>, ModelError> {
        // Queries over the box threshold, then NMS and the cap; phrases are decoded for the kept boxes only (a
        // graph can pass hundreds of queries, and decoding is the costly part).
        let mut passing: Vec<(usize, f32, BoxXyxy)> = Vec::new();
        for q in 0..queries {
            let row = &logits[q * width..(q + 1) * width];
            // The sigmoid is monotonic: test the best logit first.
            let best = sigmoid(row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            // Strictly above, as the reference filters; a NaN score keeps nothing.
            if best.partial_cmp(&self.box_threshold) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            let b = &boxes[q * 4..q * 4 + 4];
            let bbox = cxcywh_to_xyxy([b[0], b[1], b[2], b[3]]).scaled(orig_w as f32, orig_h as f32);
            passing.push((q, best, bbox));
        }
        let boxes: Vec<BoxXyxy> = passing.iter().map(|p| p.2).collect();
        let scores: Vec<f32> = passing.iter().map(|p| p.1).collect();
        best_boxes(&boxes, &scores, self.iou_threshold, self.max_detections)
            .into_iter()
            .map(|i| {
                let (q, score, bbox) = passing[i];
                let tokens = self.phrase_tokens(&logits[q * width..(q + 1) * width], input_ids);
                Ok(Detection { phrase: String::new(), tokens, score, bbox })
            })
            .collect()
    }

    /// `get_phrases_from_posmap`: the tokens scoring above the text threshold, [CLS] (position 0) and positions
    /// from 255 on left out (decoded without special tokens by [`Phrases::decode`]).
    fn phrase_tokens(&self, logits: &[f32], input_ids: &[i64]) -> Vec<u32> {
        logits
            .iter()
            .enumerate()
            .filter(|(i, v)| *i > 0 && *i < 255 && sigmoid(**v) > self.text_threshold)
            .filter_map(|(i, _)| input_ids.get(i).and_then(|id| u32::try_from(*id).ok()))
            .collect()
    }
}

/// What decodes detections' phrases: the detector's tokenizer, shared with the CPU threads.
#[derive(Clone)]
pub struct Phrases(Arc<Tokenizer>);

impl Phrases {
    /// Fills `detection.phrase` from its tokens, without special tokens, as the reference decodes them.
    pub fn decode(&self, detection: &mut Detection) -> Result<(), ModelError> {
        detection.phrase = self
            .0
            .decode(&detection.tokens, true)
            .map_err(|e| ModelError::Postprocess(format!("decode phrase: {e}")))?;
        Ok(())
    }
}

impl std::fmt::Debug for Phrases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Phrases")
    }
}

/// The indices of the boxes kept: class-agnostic NMS, then at most `max` of them, by score (highest first, ties
/// in query order, so the choice is the same on every run).
pub fn best_boxes(boxes: &[BoxXyxy], scores: &[f32], iou_threshold: f32, max: usize) -> Vec<usize> {
    // `nms` keeps boxes best first, ties in index order: its first `max` are the `max` best kept.
    nms_at_most(boxes, scores, iou_threshold, max)
}

/// Grounding DINO's `generate_masks_with_special_tokens_and_transfer_map` for one prompt, cut to its first `keep`
/// tokens: each sub-sentence (the tokens after a special token up to and including the next) attends only to
/// itself, with positions restarting at 0; the first and last tokens of the whole prompt, when special, attend to
/// themselves with position 0. Returns the row-major `[n, n]` mask and the `n` position ids, `n` being `keep` or
/// the prompt's length if shorter. Only the kept block is made: the whole prompt's mask is `len²` (a prompt of a
/// few thousand tags would be hundreds of MB), and the block is what the reference keeps of it.
pub fn sub_sentence_masks(ids: &[u32], special: &[u32], keep: usize) -> (Vec<bool>, Vec<i64>) {
    let total = ids.len();
    let n = keep.min(total);
    let mut mask = vec![false; n * n];
    for i in 0..n {
        mask[i * n + i] = true;
    }
    let mut positions = vec![0i64; n];
    let mut previous = 0usize;
    for (col, id) in ids.iter().enumerate() {
        if previous + 1 >= n {
            break; // every later sub-sentence starts past the cut
        }
        if !special.contains(id) {
            continue;
        }
        // The whole prompt's first and last tokens attend to themselves at position 0, as every token starts.
        if col != 0 && col != total - 1 {
            let last = col.min(n - 1);
            for r in previous + 1..=last {
                for c in previous + 1..=last {
                    mask[r * n + c] = true;
                }
                positions[r] = (r - previous - 1) as i64;
            }
        }
        previous = col;
    }
    (mask, positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_detections_are_kept_best_first_ties_in_query_order() {
        let boxes: Vec<BoxXyxy> =
            (0..6).map(|i| BoxXyxy([i as f32 * 10.0, 0.0, i as f32 * 10.0 + 5.0, 5.0])).collect();
        let scores = [0.5, 0.9, 0.5, 0.7, 0.9, 0.3];
        assert_eq!(best_boxes(&boxes, &scores, 0.6, 3), vec![1, 4, 3]);
        assert_eq!(best_boxes(&boxes, &scores, 0.6, 4), vec![1, 4, 3, 0]);
        assert_eq!(best_boxes(&boxes, &scores, 0.6, 100), vec![1, 4, 3, 0, 2, 5]);
        // Overlapping boxes are suppressed before the cap, so a suppressed box never takes a kept one's place.
        let mut overlapping = boxes.clone();
        overlapping[4] = BoxXyxy([10.0, 0.0, 15.0, 5.0]);
        assert_eq!(best_boxes(&overlapping, &scores, 0.6, 3), vec![1, 3, 0]);
    }

    /// The whole prompt's mask, made as the reference makes it, to compare the cut block with.
    fn whole_prompt_masks(ids: &[u32], special: &[u32]) -> (Vec<bool>, Vec<i64>) {
        let n = ids.len();
        let mut mask = vec![false; n * n];
        let mut positions = vec![0i64; n];
        for i in 0..n {
            mask[i * n + i] = true;
        }
        let mut previous = 0;
        for (col, id) in ids.iter().enumerate() {
            if special.contains(id) {
                if col != 0 && col != n - 1 {
                    for r in previous + 1..=col {
                        (previous + 1..=col).for_each(|c| mask[r * n + c] = true);
                        positions[r] = (r - previous - 1) as i64;
                    }
                }
                previous = col;
            }
        }
        (mask, positions)
    }

    proptest::proptest! {
        #[test]
        fn the_cut_block_is_the_whole_prompts_mask_cut(
            ids in proptest::collection::vec(0u32..6, 0..40),
            keep in 0usize..45,
        ) {
            let special = [0, 1];
            let (whole, whole_positions) = whole_prompt_masks(&ids, &special);
            let (mask, positions) = sub_sentence_masks(&ids, &special, keep);
            let n = keep.min(ids.len());
            let cut: Vec<bool> = (0..n).flat_map(|r| whole[r * ids.len()..r * ids.len() + n].to_vec()).collect();
            proptest::prop_assert_eq!(mask, cut);
            proptest::prop_assert_eq!(positions, whole_positions[..n].to_vec());
        }
    }

    #[test]
    fn the_first_max_text_len_tags_make_the_inputs_that_all_tags_make() {
        // What the refiner relies on when it prompts with the first `max_text_len` tags only: the real BERT
        // vocabulary, all of RAM's tags (random weights pass them all).
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models/real-tiny");
        let tokenizer = tokenizers::Tokenizer::from_file(format!("{dir}/tokenizer.json")).unwrap();
        let special: Vec<u32> =
            ["[CLS]", "[SEP]", ".", "?"].iter().filter_map(|t| tokenizer.token_to_id(t)).collect();
        let list = std::fs::read_to_string(format!("{dir}/ram_tag_list.txt")).unwrap();
        let tags: Vec<crate::models::tagger::Tag> =
            list.lines().map(|t| crate::models::tagger::Tag { tag: t.to_string(), score: 1.0 }).collect();
        let inputs = |tags: &[crate::models::tagger::Tag]| {
            let encoding = tokenizer.encode(crate::models::tagger::prompt_of(tags), true).unwrap();
            let (mask, positions) = sub_sentence_masks(encoding.get_ids(), &special, 256);
            (encoding.get_ids()[..positions.len()].to_vec(), mask, positions)
        };
        assert!(tags.len() > 4000);
        assert_eq!(inputs(&tags[..256]), inputs(&tags));
    }

    #[test]
    fn sub_sentences_attend_to_themselves() {
        // [CLS] red , blue . green . [SEP] with '.' = 9, [CLS] = 1, [SEP] = 2.
        let ids = [1, 5, 6, 7, 9, 8, 9, 2];
        let (mask, positions) = sub_sentence_masks(&ids, &[1, 2, 9], ids.len());
        assert_eq!(positions, vec![0, 0, 1, 2, 3, 0, 1, 0]);
        let n = ids.len();
        let row = |r: usize| (0..n).map(|c| mask[r * n + c] as u8).collect::<Vec<_>>();
        assert_eq!(row(0), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(row(2), [0, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(row(5), [0, 0, 0, 0, 0, 1, 1, 0]);
        assert_eq!(row(7), [0, 0, 0, 0, 0, 0, 0, 1]);
    }
}

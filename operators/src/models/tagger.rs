//! The RAM / RAM++ tagger (recognize-anything; its ONNX exports take `image` or `img` [B, 3, 384, 384]).
//!
//! Two export styles are met: X-AnyLabeling's (`img` with a fixed batch of 1 → `targets`, RAM's per-class thresholds
//! baked in as 0/1, and `bs`) and dynamic-batch exports giving `logits`. The input size and a fixed batch are read
//! from the graph: a graph that takes one image per run gets batches of one from the start.
//!
//! Follows `ram/models/ram.py` `generate_tag` and the Grounded-SAM RAM demo: the image resized to 384×384 (PIL
//! bilinear, as `ram/transform.py`), ImageNet mean and std; a tag is kept when its sigmoid score is above its class
//! threshold (strictly; `threshold` by default, per-class values from a file as `ram_tag_list_threshold.txt`), in
//! tag-list order. Exports that output logits, probabilities, or the 0/1 targets of thresholds baked into the graph
//! (`tag`, `targets`) are all read as scores in `[0, 1]`; which of them a model gives is decided once, when it is
//! loaded (`tagger.scores`, else the name of its output), never from the values of a batch, so that how images are
//! batched (and an out-of-memory retry halving a batch) cannot change a row. The detector prompt is built as the
//! demo builds it:
//! `" | ".join(tags).replace(" |", ",").lower()` plus a final `.`.

use image::RgbImage;

use super::preprocess::{IMAGENET, resize_bilinear, sigmoid, to_planar};
use super::runtime::{Device, Input, OnnxModel};
use super::{ModelError, TaggerConfig, TaggerScores};

/// Side of the square image the tagger takes.
pub const TAGGER_SIDE: u32 = 384;

/// A tag with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub tag: String,
    /// Probability in `[0, 1]` (the sigmoid of the model's logit, for models that output logits).
    pub score: f32,
}

/// A loaded RAM / RAM++ tagger: its session, tag list and per-class thresholds.
pub struct Tagger {
    model: OnnxModel,
    input: String,
    /// The input's (width, height).
    side: (u32, u32),
    /// The batch the graph declares, when fixed.
    fixed_batch: Option<usize>,
    output: String,
    /// Whether the output is logits (put through the sigmoid) or already scores in `[0, 1]`.
    logits: bool,
    tags: Vec<String>,
    thresholds: Vec<f32>,
    /// The batch input, kept from one run to the next (7 MB for four images at 384², which a fresh allocation would
    /// page-fault in on the inference thread every batch).
    batch: Vec<f32>,
}

/// Whether the tagger output `output` gives logits, from `tagger.scores` or, when that is `auto`, the output's
/// name: `logits` (RAM's own export) are logits; `tag`, `targets`, `probs`, `scores`, `sigmoid` are scores.
pub fn output_is_logits(output: &str, scores: TaggerScores) -> Result<bool, ModelError> {
    match scores {
        TaggerScores::Logits => Ok(true),
        TaggerScores::Probabilities => Ok(false),
        TaggerScores::Auto => {
            let name = output.to_ascii_lowercase();
            if name.contains("logit") {
                Ok(true)
            } else if ["tag", "target", "prob", "score", "sigmoid"].iter().any(|n| name.contains(n)) {
                Ok(false)
            } else {
                Err(ModelError::Config(format!(
                    "tagger.scores: the tagger's output `{output}` does not say whether it gives logits or \
                     probabilities; set tagger.scores = \"logits\" or \"probabilities\""
                )))
            }
        }
    }
}

/// Scores in `[0, 1]` of a batch of raw outputs. Every value is read the same way whatever else is in the batch.
fn scores_of(raw: &[f32], logits: bool) -> Vec<f32> {
    if logits { raw.iter().map(|v| sigmoid(*v)).collect() } else { raw.to_vec() }
}

impl Tagger {
    /// Loads the model; `tags` and `thresholds` are the contents of the tag list and the optional thresholds file.
    pub fn load(
        config: &TaggerConfig,
        model: &std::path::Path,
        tags: &str,
        thresholds: Option<&str>,
        device: Device,
        threads: usize,
    ) -> Result<Tagger, ModelError> {
        let model = OnnxModel::load("tagger", model, device, threads)?;
        let port = model.input_ports.first().cloned().ok_or_else(|| ModelError::Contract {
            model: "tagger".into(),
            message: "the model has no input".into(),
        })?;
        if port.dims.len() != 4 || port.dim(1).is_some_and(|c| c != 3) {
            return Err(ModelError::Contract {
                model: "tagger".into(),
                message: format!("input {port}: expected [batch, 3, height, width]"),
            });
        }
        let side = (
            port.dim(3).map_or(TAGGER_SIDE, |d| d as u32).max(1),
            port.dim(2).map_or(TAGGER_SIDE, |d| d as u32).max(1),
        );
        let fixed_batch = port.dim(0);
        let input = port.name;
        let output = model.outputs.first().cloned().ok_or_else(|| ModelError::Contract {
            model: "tagger".into(),
            message: "the model has no output".into(),
        })?;
        let logits = output_is_logits(&output, config.scores)?;
        let tags: Vec<String> = tags.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        if tags.is_empty() {
            return Err(ModelError::Config("tagger.tags: the tag list is empty".into()));
        }
        let mut per_class = vec![config.threshold; tags.len()];
        if let Some(text) = thresholds {
            for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                let value: f32 = line.trim().parse().map_err(|_| {
                    ModelError::Config(format!(
                        "tagger.thresholds: line {} `{}` is not a number",
                        i + 1,
                        line.trim()
                    ))
                })?;
                if let Some(slot) = per_class.get_mut(i) {
                    *slot = value;
                }
            }
        }
        Ok(Tagger {
            model,
            input,
            side,
            fixed_batch,
            output,
            logits,
            tags,
            thresholds: per_class,
            batch: Vec::new(),
        })
    }

    /// The input's (width, height), read from the graph (384 × 384 when dynamic).
    pub fn side(&self) -> (u32, u32) {
        self.side
    }

    /// Images per run at most: the graph's fixed batch, else `None`.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// Number of tags in the tag list (the classes the model scores).
    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }

    /// The model input of one image at the graph's `(width, height)`: `[3, height, width]`.
    pub fn prepare(image: &RgbImage, (w, h): (u32, u32)) -> Result<Vec<f32>, ModelError> {
        let resized = resize_bilinear(image, w, h)?;
        Ok(to_planar(&resized, &IMAGENET, w as usize, h as usize))
    }

    /// Tags of a batch of prepared images.
    pub fn infer(&mut self, batch: &[&[f32]]) -> Result<Vec<Vec<Tag>>, ModelError> {
        let (w, h) = (self.side.0 as usize, self.side.1 as usize);
        if let Some(image) = batch.iter().find(|image| image.len() != 3 * w * h) {
            return Err(ModelError::Preprocess(format!(
                "a tagger input of {} values for a {w}x{h} graph",
                image.len()
            )));
        }
        let mut data = std::mem::take(&mut self.batch);
        let input: &[f32] = match batch {
            [one] => one,
            _ => {
                data.clear();
                for image in batch {
                    data.extend_from_slice(image);
                }
                &data
            }
        };
        let inputs = vec![(self.input.as_str(), Input::F32(vec![batch.len(), 3, h, w], input))];
        let output_name = self.output.clone();
        let outputs = self.model.run(inputs, &[output_name.as_str()]);
        self.batch = data;
        let outputs = outputs?;
        let scores = &outputs[&output_name];
        let classes = scores.data.len() / batch.len().max(1);
        if classes != self.tags.len() {
            return Err(ModelError::Contract {
                model: "tagger".into(),
                message: format!(
                    "the model scores {classes} classes but the tag list has {} tags",
                    self.tags.len()
                ),
            });
        }
        Ok(scores_of(&scores.data, self.logits)
            .chunks(classes)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .filter(|(i, score)| **score > self.thresholds[*i])
                    .map(|(i, score)| Tag { tag: self.tags[i].clone(), score: *score })
                    .collect()
            })
            .collect())
    }

    /// The session, for its run statistics.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }
}

/// The Grounding DINO prompt for `tags`, as the Grounded-SAM RAM demo builds it.
pub fn prompt_of(tags: &[Tag]) -> String {
    let joined = tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>().join(" | ");
    let mut caption = joined.replace(" |", ",").to_lowercase().trim().to_string();
    if !caption.ends_with('.') {
        caption.push('.');
    }
    caption
}

/// The Grounding DINO prompt of a caption, as its `inference.py` prepares one: lower case, trimmed, a final `.`.
pub fn caption_prompt(caption: &str) -> String {
    let mut caption = caption.to_lowercase().trim().to_string();
    if !caption.ends_with('.') {
        caption.push('.');
    }
    caption
}

/// The prompt of a fixed vocabulary, as transformers joins candidate labels: `"person. car. dog."`.
pub fn classes_prompt(classes: &[String]) -> String {
    let labels: Vec<String> = classes.iter().map(|c| c.trim().to_lowercase()).collect();
    format!("{}.", labels.join(". "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_and_classes_become_prompts() {
        assert_eq!(caption_prompt(" A Dog on a sofa "), "a dog on a sofa.");
        assert_eq!(caption_prompt("two cats."), "two cats.");
        assert_eq!(classes_prompt(&["Person".into(), "traffic light".into()]), "person. traffic light.");
    }

    #[test]
    fn prompts_follow_the_demo() {
        let tags =
            |names: &[&str]| names.iter().map(|t| Tag { tag: t.to_string(), score: 1.0 }).collect::<Vec<_>>();
        assert_eq!(prompt_of(&tags(&["Red", "blue", "traffic light"])), "red, blue, traffic light.");
        assert_eq!(prompt_of(&tags(&["dog"])), "dog.");
        assert_eq!(prompt_of(&[]), ".");
    }

    #[test]
    fn scores_do_not_depend_on_the_rest_of_the_batch() {
        // Two images of a logits model: the second's logits happen to lie in [0, 1]. Alone (as after an
        // out-of-memory halving) or together, it must get the same scores.
        let (first, second) = ([4.0, -3.0], [0.9, 0.2]);
        let together = scores_of(&[first, second].concat(), true);
        let alone = scores_of(&second, true);
        assert_eq!(&together[2..], &alone[..]);
        assert!((alone[0] - sigmoid(0.9)).abs() < 1e-6, "{alone:?}");
        assert_eq!(scores_of(&second, false), second);
    }

    #[test]
    fn the_kind_of_output_is_decided_by_the_model_not_the_values() {
        assert!(output_is_logits("logits", TaggerScores::Auto).unwrap());
        assert!(!output_is_logits("tag", TaggerScores::Auto).unwrap());
        assert!(!output_is_logits("targets", TaggerScores::Auto).unwrap());
        assert!(!output_is_logits("logits", TaggerScores::Probabilities).unwrap());
        assert!(output_is_logits("output", TaggerScores::Logits).unwrap());
        let err = output_is_logits("output", TaggerScores::Auto).unwrap_err().to_string();
        assert!(err.contains("tagger.scores") && err.contains("output"), "{err}");
    }
}

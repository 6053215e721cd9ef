//! The models file: which model of each family the refiner runs, from which files, with which thresholds.
//!
//! ```toml
//! [tagger]
//! family = "ram"                  # ram | ram_plus
//! model = "ram_plus.onnx"         # a path (relative to this file), a URI, or hf://org/repo/path@revision
//! tags = "ram_tag_list.txt"       # one tag per line
//! thresholds = "thresholds.txt"   # optional per-class thresholds, one per line; else `threshold`
//! threshold = 0.68
//! batch_size = 4
//!
//! [detector]
//! family = "grounding_dino"
//! export = "idea"                 # idea (IDEA / X-AnyLabeling) | hf (Hugging Face / optimum)
//! model = { source = "hf://org/repo/gdino.onnx@main", sha256 = "..." }
//! tokenizer = "tokenizer.json"
//! prompt = "tags"                 # tags | caption | ["person", "car", "dog"]
//! max_detections = 100            # boxes kept per image, the best first
//!
//! # or a detector that segments (no [segmenter]): SAM 3, one prompt per tag (see `sam3`)
//! # family = "sam3"
//! # vision_encoder = "vision-encoder.onnx"
//! # text_encoder = "text-encoder.onnx"
//! # decoder = "decoder.onnx"        # either public layout: v1 (prompt_features) or v2 (geometry folded in)
//! # tokenizer = "tokenizer.json"    # CLIP BPE
//! # threshold = 0.5                 # instance score (with the presence score) kept above this
//!
//! [segmenter]
//! family = "sam"                  # sam | hf_sam | sam2 (encoder + decoder) | salient_crop (ISNet on each box)
//! encoder = "sam_encoder.onnx"
//! decoder = "sam_decoder.onnx"
//! ```
//!
//! Every file is a [`FileRef`]: a source string, or a table with `source` and an expected `sha256`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ModelError;
use super::segmenter::SegmenterFamily;

/// A file of a model: where it comes from and, optionally, the SHA-256 it must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileRef {
    /// Just where the file comes from.
    Source(String),
    /// Where the file comes from and the SHA-256 it must have (hex; `None` checks nothing).
    Checked { source: String, sha256: Option<String> },
}

impl FileRef {
    /// Where the file comes from: a path, a URI or `hf://org/repo/path@revision`.
    pub fn source(&self) -> &str {
        match self {
            FileRef::Source(source) | FileRef::Checked { source, .. } => source,
        }
    }

    /// The SHA-256 the file must have, if one is given.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            FileRef::Source(_) => None,
            FileRef::Checked { sha256, .. } => sha256.as_deref(),
        }
    }
}

/// Which tagger the `[tagger]` section loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaggerFamily {
    /// Recognize Anything (RAM).
    Ram,
    /// RAM++ (same contract, per-class thresholds usually given).
    RamPlus,
}

/// The `[tagger]` section: a RAM-style tagger whose tags become the detector's prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaggerConfig {
    pub family: TaggerFamily,
    pub model: FileRef,
    /// The tag list, one tag per line, in the model's class order.
    pub tags: FileRef,
    /// Per-class thresholds, one per line in tag-list order; classes without one use `threshold`.
    #[serde(default)]
    pub thresholds: Option<FileRef>,
    /// A tag is kept when its score is strictly above its class threshold.
    #[serde(default = "default_tag_threshold")]
    pub threshold: f32,
    /// Images per tagger run (halved on out-of-memory).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// What the model's output holds; `auto` tells by the output's name.
    #[serde(default)]
    pub scores: TaggerScores,
}

/// What a tagger's output holds: logits (put through the sigmoid) or scores already in `[0, 1]`
/// (probabilities, or the 0/1 targets of thresholds baked into the graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaggerScores {
    /// Decided from the output's name when the model is loaded (`logits`; `tag`, `targets`, `probs`, ...).
    #[default]
    Auto,
    /// Logits: scores are their sigmoid.
    Logits,
    /// Scores in `[0, 1]` as they are.
    Probabilities,
}

/// Which detector the `[detector]` section loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorFamily {
    /// Grounding DINO, in either export of [`DetectorExport`].
    GroundingDino,
    /// SAM 3: a detector that segments, one prompt per tag, class or caption phrase (`models::sam3`).
    Sam3,
}

/// Which published ONNX contract of Grounding DINO the file follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorExport {
    /// IDEA-Research / X-AnyLabeling: `img`, `input_ids`, `attention_mask`, `position_ids`, `token_type_ids`,
    /// `text_token_mask` → `logits`, `boxes`.
    #[default]
    Idea,
    /// Hugging Face transformers / optimum: `pixel_values`, `input_ids`, `token_type_ids`, `attention_mask`,
    /// `pixel_mask` → `logits`, `pred_boxes`.
    Hf,
}

/// What the detector is prompted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptSource {
    /// The tagger's tags, as the Grounded-SAM RAM demo joins them (the Lyrics recipe).
    #[default]
    Tags,
    /// The sample's caption (lower case, a final `.`), so its phrases are grounded.
    Caption,
}

/// `detector.prompt`: `"tags"`, `"caption"`, or a fixed vocabulary `["person", "car", "dog"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DetectorPrompt {
    Source(PromptSource),
    /// The same classes for every image, joined as transformers joins candidate labels (`"person. car. dog."`).
    Classes(Vec<String>),
}

impl Default for DetectorPrompt {
    fn default() -> Self {
        DetectorPrompt::Source(PromptSource::Tags)
    }
}

/// The `[detector]` section: Grounding DINO, prompted with the tagger's tags (or the caption, or fixed classes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    pub family: DetectorFamily,
    #[serde(default)]
    pub export: DetectorExport,
    /// grounding_dino: the model.
    #[serde(default)]
    pub model: Option<FileRef>,
    /// sam3: the vision encoder (`images` → FPN features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision_encoder: Option<FileRef>,
    /// sam3: the text encoder (`input_ids`, `attention_mask` → `text_features`, `text_mask`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<FileRef>,
    /// sam3: the decoder (FPN features and a prompt → `pred_masks`, `pred_boxes`, `pred_logits`,
    /// `presence_logits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<FileRef>,
    /// sam3: an instance is kept when its score (its logit's sigmoid times the presence score's) is above this
    /// (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// The `tokenizer.json` the export was traced with (BERT for Grounding DINO, CLIP BPE for SAM 3).
    pub tokenizer: FileRef,
    /// A query is kept when its best token score is above this.
    #[serde(default = "default_box_threshold")]
    pub box_threshold: f32,
    /// Tokens scoring above this make up a kept query's phrase.
    #[serde(default = "default_text_threshold")]
    pub text_threshold: f32,
    /// Class-agnostic NMS drops a box overlapping a better one by more than this IoU.
    #[serde(default = "default_iou_threshold")]
    pub iou_threshold: f32,
    /// Text tokens the model takes at most (Grounding DINO: 256).
    #[serde(default = "default_max_text_len")]
    pub max_text_len: usize,
    /// Boxes kept per image at most, the best-scoring first, before segmentation: each box costs a decoder run
    /// and a mask.
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
    /// Images per detector run (prompts padded to the longest); above 1 only for graphs with a dynamic batch.
    /// sam3: prompts per text encoder and decoder run, the image's features shared by them.
    #[serde(default = "default_one")]
    pub batch_size: usize,
    /// What the detector is prompted with.
    #[serde(default)]
    pub prompt: DetectorPrompt,
    /// `[height, width]` every image is stretched to, for an export whose callers do so although its graph declares
    /// any size (a graph traced at one size works at that size only). A graph that declares a static size is
    /// stretched to that size without the setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[u32; 2]>,
}

/// The `[segmenter]` section: a mask for each detected box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmenterConfig {
    pub family: SegmenterFamily,
    /// sam, hf_sam, sam2: the image encoder.
    #[serde(default)]
    pub encoder: Option<FileRef>,
    /// sam, hf_sam, sam2: the prompt decoder.
    #[serde(default)]
    pub decoder: Option<FileRef>,
    /// salient_crop: the ISNet model (`input` → `output`).
    #[serde(default)]
    pub model: Option<FileRef>,
    /// salient_crop: margin added around the box before cropping, as a fraction of the box side.
    #[serde(default = "default_margin")]
    pub margin: f32,
    /// salient_crop: probability above which a pixel is foreground.
    #[serde(default = "default_half")]
    pub mask_threshold: f32,
    /// Boxes per decoder call, for decoders that take many (hf_sam, sam2; default: every box of an image in one
    /// call). A decoder that takes one box per call refuses a setting above 1.
    #[serde(default)]
    pub batch_size: Option<usize>,
}

/// A whole models file. Each family is optional, but a detector prompted with tags (the default) needs a tagger,
/// and a segmenter needs a detector's boxes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    #[serde(default)]
    pub tagger: Option<TaggerConfig>,
    #[serde(default)]
    pub detector: Option<DetectorConfig>,
    #[serde(default)]
    pub segmenter: Option<SegmenterConfig>,
}

impl SegmenterConfig {
    /// Its file keys, each with the file it names, if any.
    fn named_files(&self) -> [(&'static str, &Option<FileRef>); 3] {
        [("encoder", &self.encoder), ("decoder", &self.decoder), ("model", &self.model)]
    }
}

fn default_tag_threshold() -> f32 {
    0.68
}
fn default_box_threshold() -> f32 {
    0.25
}
fn default_text_threshold() -> f32 {
    0.2
}
fn default_iou_threshold() -> f32 {
    0.6
}
fn default_max_text_len() -> usize {
    256
}
/// The default of `detector.max_detections`.
pub const DEFAULT_MAX_DETECTIONS: usize = 100;

fn default_max_detections() -> usize {
    DEFAULT_MAX_DETECTIONS
}
fn default_batch() -> usize {
    4
}
fn default_one() -> usize {
    1
}
fn default_margin() -> f32 {
    0.1
}
fn default_half() -> f32 {
    0.5
}

impl DetectorConfig {
    /// The files each family needs, and the keys only another family takes.
    fn validate_files(&self, has_segmenter: bool) -> Result<(), ModelError> {
        let family = match self.family {
            DetectorFamily::GroundingDino => "grounding_dino",
            DetectorFamily::Sam3 => "sam3",
        };
        // (key, whether it is set): the keys the family needs, and those it does not take.
        type Keys<'a> = &'a [(&'a str, bool)];
        let (needed, foreign): (Keys, Keys) = match self.family {
            DetectorFamily::GroundingDino => (
                &[("model", self.model.is_some())],
                &[
                    ("vision_encoder", self.vision_encoder.is_some()),
                    ("text_encoder", self.text_encoder.is_some()),
                    ("decoder", self.decoder.is_some()),
                    ("threshold", self.threshold.is_some()),
                ],
            ),
            DetectorFamily::Sam3 => (
                &[
                    ("vision_encoder", self.vision_encoder.is_some()),
                    ("text_encoder", self.text_encoder.is_some()),
                    ("decoder", self.decoder.is_some()),
                ],
                &[("model", self.model.is_some()), ("image_size", self.image_size.is_some())],
            ),
        };
        if let Some((key, _)) = needed.iter().find(|(_, set)| !set) {
            return Err(ModelError::Config(format!("detector.{key} is required for family \"{family}\"")));
        }
        if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
            return Err(ModelError::Config(format!("detector.{key} is not a setting of family \"{family}\"")));
        }
        if let Some(t) = self.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(ModelError::Config(format!("detector.threshold = {t} is out of range: allowed 0 to 1")));
        }
        if self.family == DetectorFamily::Sam3 && has_segmenter {
            return Err(ModelError::Config(
                "family \"sam3\" segments its own boxes: remove the [segmenter] section".into(),
            ));
        }
        Ok(())
    }
}

impl ModelsConfig {
    /// Parses and validates a models file; errors name the key.
    pub fn parse(text: &str) -> Result<ModelsConfig, ModelError> {
        let config: ModelsConfig = toml::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let unit = |key: &str, v: f32| -> Result<(), ModelError> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ModelError::Config(format!("{key} = {v} is out of range: allowed 0 to 1")))
            }
        };
        let positive = |key: &str, v: usize| -> Result<(), ModelError> {
            if v >= 1 { Ok(()) } else { Err(ModelError::Config(format!("{key} = {v}: must be at least 1"))) }
        };
        if let Some(t) = &self.tagger {
            unit("tagger.threshold", t.threshold)?;
            positive("tagger.batch_size", t.batch_size)?;
        }
        if let Some(d) = &self.detector {
            unit("detector.box_threshold", d.box_threshold)?;
            unit("detector.text_threshold", d.text_threshold)?;
            unit("detector.iou_threshold", d.iou_threshold)?;
            positive("detector.batch_size", d.batch_size)?;
            positive("detector.max_text_len", d.max_text_len)?;
            positive("detector.max_detections", d.max_detections)?;
            d.validate_files(self.segmenter.is_some())?;
            if let DetectorPrompt::Classes(classes) = &d.prompt
                && (classes.is_empty() || classes.iter().any(|c| c.trim().is_empty()))
            {
                return Err(ModelError::Config(
                    "detector.prompt: a list of classes must name at least one class, none of them empty".into(),
                ));
            }
        }
        if let Some(s) = &self.segmenter {
            if let Some(n) = s.batch_size {
                positive("segmenter.batch_size", n)?;
            }
            unit("segmenter.mask_threshold", s.mask_threshold)?;
            if !(0.0..=10.0).contains(&s.margin) {
                return Err(ModelError::Config(format!("segmenter.margin = {}: allowed 0 to 10", s.margin)));
            }
            // Each file the family takes is required.
            let named = s.named_files();
            for key in s.family.files() {
                if !named.iter().any(|(named, file)| named == key && file.is_some()) {
                    return Err(ModelError::Config(format!(
                        "segmenter.{key} is required for family {:?}",
                        s.family
                    )));
                }
            }
            if self.detector.is_none() {
                return Err(ModelError::Config("a segmenter needs a [detector] to give it boxes".into()));
            }
        }
        if self.tagger.is_none()
            && self.detector.as_ref().is_some_and(|d| d.prompt == DetectorPrompt::Source(PromptSource::Tags))
        {
            return Err(ModelError::Config(
                "a detector prompted with tags needs a [tagger] (or set detector.prompt = \"caption\" or a list of \
                 classes)"
                    .into(),
            ));
        }
        if self.tagger.is_none() && self.detector.is_none() && self.segmenter.is_none() {
            return Err(ModelError::Config(
                "the models file names no model ([tagger], [detector], [segmenter])".into(),
            ));
        }
        Ok(())
    }

    /// Every file the config names, by a stable key (`tagger.model`, `detector.tokenizer`, ...).
    pub fn files(&self) -> BTreeMap<String, FileRef> {
        let mut files = BTreeMap::new();
        if let Some(t) = &self.tagger {
            files.insert("tagger.model".into(), t.model.clone());
            files.insert("tagger.tags".into(), t.tags.clone());
            if let Some(th) = &t.thresholds {
                files.insert("tagger.thresholds".into(), th.clone());
            }
        }
        if let Some(d) = &self.detector {
            let named = [
                ("model", &d.model),
                ("vision_encoder", &d.vision_encoder),
                ("text_encoder", &d.text_encoder),
                ("decoder", &d.decoder),
            ];
            for (key, file) in named {
                if let Some(file) = file {
                    files.insert(format!("detector.{key}"), file.clone());
                }
            }
            files.insert("detector.tokenizer".into(), d.tokenizer.clone());
        }
        if let Some(s) = &self.segmenter {
            for (key, file) in s.named_files() {
                if let Some(file) = file {
                    files.insert(format!("segmenter.{key}"), file.clone());
                }
            }
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
        [tagger]
        family = "ram_plus"
        model = "t.onnx"
        tags = { source = "hf://org/repo/tags.txt@v1", sha256 = "ab" }
        [detector]
        family = "grounding_dino"
        export = "hf"
        model = "d.onnx"
        tokenizer = "tokenizer.json"
        [segmenter]
        family = "sam"
        encoder = "e.onnx"
        decoder = "s3://bucket/d.onnx"
    "#;

    #[test]
    fn a_full_config_parses_with_defaults() {
        let c = ModelsConfig::parse(FULL).unwrap();
        let d = c.detector.as_ref().unwrap();
        assert_eq!((d.box_threshold, d.text_threshold, d.iou_threshold), (0.25, 0.2, 0.6));
        assert_eq!(d.export, DetectorExport::Hf);
        assert_eq!(c.tagger.as_ref().unwrap().threshold, 0.68);
        let files = c.files();
        assert_eq!(files["tagger.tags"].sha256(), Some("ab"));
        assert_eq!(files["segmenter.decoder"].source(), "s3://bucket/d.onnx");
        assert_eq!(files.len(), 6);
    }

    #[test]
    fn errors_name_the_key() {
        let err = ModelsConfig::parse(&FULL.replace("\"sam\"", "\"salient_crop\"")).unwrap_err().to_string();
        assert!(err.contains("segmenter.model"), "{err}");
        let err = ModelsConfig::parse(&FULL.replace("family = \"ram_plus\"", "family = \"clip\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("clip") && err.contains("ram_plus"), "{err}");
        let err =
            ModelsConfig::parse(&FULL.replace("export = \"hf\"", "box_threshold = 2.0")).unwrap_err().to_string();
        assert!(err.contains("detector.box_threshold"), "{err}");
        let err =
            ModelsConfig::parse("[detector]\nfamily = \"grounding_dino\"\nmodel = \"d\"\ntokenizer = \"t\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("tagger"), "{err}");
        let err =
            ModelsConfig::parse(&FULL.replace("export = \"hf\"", "max_detections = 0")).unwrap_err().to_string();
        assert!(err.contains("detector.max_detections"), "{err}");
    }

    #[test]
    fn prompts_are_tags_caption_or_classes() {
        let c = ModelsConfig::parse(FULL).unwrap();
        assert_eq!(c.detector.unwrap().prompt, DetectorPrompt::Source(PromptSource::Tags));
        let classes = FULL.replace("export = \"hf\"", "prompt = [\"person\", \"car\"]");
        let c = ModelsConfig::parse(&classes).unwrap();
        assert_eq!(c.detector.unwrap().prompt, DetectorPrompt::Classes(vec!["person".into(), "car".into()]));
        // Without a tagger: fine for a caption or classes, refused for tags.
        let untagged = |prompt: &str| {
            format!("[detector]\nfamily = \"grounding_dino\"\nmodel = \"d\"\ntokenizer = \"t\"\n{prompt}")
        };
        assert!(ModelsConfig::parse(&untagged("prompt = \"caption\"\n")).is_ok());
        assert!(ModelsConfig::parse(&untagged("prompt = [\"dog\"]\n")).is_ok());
        let err = ModelsConfig::parse(&untagged("")).unwrap_err().to_string();
        assert!(err.contains("tagger") && err.contains("detector.prompt"), "{err}");
        let err = ModelsConfig::parse(&untagged("prompt = []\n")).unwrap_err().to_string();
        assert!(err.contains("detector.prompt"), "{err}");
        assert!(ModelsConfig::parse(&untagged("prompt = \"words\"\n")).is_err());
    }

    #[test]
    fn sam3_takes_its_three_graphs_and_no_segmenter() {
        let sam3 = "[detector]\nfamily = \"sam3\"\nvision_encoder = \"v.onnx\"\ntext_encoder = \"t.onnx\"\n\
                    decoder = \"d.onnx\"\ntokenizer = \"tok.json\"\nprompt = [\"dog\"]\n";
        let c = ModelsConfig::parse(sam3).unwrap();
        let d = c.detector.as_ref().unwrap();
        assert_eq!((d.family, d.threshold, d.model.as_ref()), (DetectorFamily::Sam3, None, None));
        let files = c.files();
        let keys: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["detector.decoder", "detector.text_encoder", "detector.tokenizer", "detector.vision_encoder"]
        );
        let err = ModelsConfig::parse(&sam3.replace("decoder = \"d.onnx\"\n", "")).unwrap_err().to_string();
        assert!(err.contains("detector.decoder is required for family \"sam3\""), "{err}");
        let err = ModelsConfig::parse(&format!("{sam3}model = \"m.onnx\"\n")).unwrap_err().to_string();
        assert!(err.contains("detector.model is not a setting of family \"sam3\""), "{err}");
        let err = ModelsConfig::parse(&format!("{sam3}threshold = 1.5\n")).unwrap_err().to_string();
        assert!(err.contains("detector.threshold"), "{err}");
        let err = ModelsConfig::parse(&format!(
            "{sam3}[segmenter]\nfamily = \"sam\"\nencoder = \"e\"\ndecoder = \"d\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("remove the [segmenter]"), "{err}");
        // Grounding DINO still needs its model, and takes none of SAM 3's keys.
        let err = ModelsConfig::parse(&FULL.replace("model = \"d.onnx\"\n", "")).unwrap_err().to_string();
        assert!(err.contains("detector.model is required for family \"grounding_dino\""), "{err}");
        let err = ModelsConfig::parse(&FULL.replace("export = \"hf\"", "threshold = 0.5")).unwrap_err().to_string();
        assert!(err.contains("detector.threshold is not a setting of family \"grounding_dino\""), "{err}");
    }

    #[test]
    fn max_detections_defaults_to_100() {
        let c = ModelsConfig::parse(FULL).unwrap();
        assert_eq!(c.detector.unwrap().max_detections, 100);
        let c = ModelsConfig::parse(&FULL.replace("export = \"hf\"", "max_detections = 7")).unwrap();
        assert_eq!(c.detector.unwrap().max_detections, 7);
    }
}

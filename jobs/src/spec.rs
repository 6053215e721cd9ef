//! Job specs: the TOML file given with `--config`, merged with command-line flags, validated with errors that name
//! the key and the allowed values, and hashed so a rerun can tell whether it continues the same job.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lyrics_operators::image::{DecodeLimits, EncodeSpec, ResizeMode, ResizeSpec};
use lyrics_operators::text::{GroundedFormat, InstructOptions};
use lyrics_pipeline::{InputFormat, SinkOptions, SourceOptions, StorageOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A whole job spec. Every section and key is optional; unknown keys are refused by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSpec {
    pub input: InputSection,
    pub output: OutputSection,
    pub decode: DecodeLimits,
    pub resize: ResizeSpec,
    pub encode: EncodeSpec,
    pub storage: StorageOptions,
    pub pipeline: PipelineSection,
    pub refine: RefineSection,
    pub text: TextSection,
}

/// `[text]`: grounded text and instruction data from the refined objects (written when the refiner runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextSection {
    /// Write the `pretrain` and `instruct` tables when the refiner runs.
    pub enabled: bool,
    /// Grounded formats written as columns of `pretrain`.
    pub formats: Vec<GroundedFormat>,
    /// Format of the boxes inserted into `grounded_caption`.
    pub inline_format: GroundedFormat,
    /// `[text.instruct]`: tasks, languages, box format and object filters of the instruction data.
    pub instruct: InstructOptions,
}

impl Default for TextSection {
    fn default() -> Self {
        TextSection {
            enabled: true,
            formats: GroundedFormat::ALL.to_vec(),
            inline_format: GroundedFormat::Kosmos2,
            instruct: InstructOptions::default(),
        }
    }
}

/// `[refine]`: the visual refiner. Runs when `models` (or `--models`) names a models file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefineSection {
    /// The models file (path or URI); see `examples/models/fixtures.toml`.
    pub models: Option<String>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Intra-op threads of each session; 0 lets ONNX Runtime choose.
    pub threads: usize,
    /// Images per micro-batch through the refiner (also the pipeline batch when refining).
    pub batch_size: usize,
    /// Where downloaded model files are cached (default: LYRICS_CACHE, else ~/.cache/lyrics-prep/models).
    pub cache: Option<String>,
}

impl Default for RefineSection {
    fn default() -> Self {
        RefineSection { models: None, device: "cpu".into(), threads: 0, batch_size: 4, cache: None }
    }
}

/// `[input]`: where to read and how to find images, captions and keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputSection {
    pub uri: Option<String>,
    pub format: Option<InputFormat>,
    #[serde(flatten)]
    pub source: SourceOptions,
}

/// `[output]`: where to write and how to cut shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSection {
    pub uri: Option<String>,
    #[serde(flatten)]
    pub sink: SinkOptions,
}

/// `[pipeline]`: batching and parallelism; none of it changes the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSection {
    /// Items per batch between stages.
    pub batch_size: usize,
    /// Batches each channel between stages holds.
    pub channel_capacity: usize,
    /// Threads for decoding; 0 means one per core.
    pub threads: usize,
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection { batch_size: 64, channel_capacity: 4, threads: 0 }
    }
}

impl JobSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the job spec {}", path.display()))?;
        let spec: JobSpec =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid job spec {}: {e}", path.display()))?;
        spec.validate().with_context(|| format!("invalid job spec {}", path.display()))?;
        Ok(spec)
    }

    /// Checks every value against its allowed range; the error names the key.
    pub fn validate(&self) -> Result<()> {
        fn range<T: PartialOrd + std::fmt::Display>(key: &str, value: T, min: T, max: T) -> Result<()> {
            if value < min || value > max {
                bail!("{key} = {value} is out of range: allowed {min} to {max}");
            }
            Ok(())
        }
        range("encode.quality", self.encode.quality, 1, 100)?;
        if self.resize.mode != ResizeMode::No {
            range("resize.image_size", self.resize.image_size, 1, 65_535)?;
        }
        range("decode.max_pixels", self.decode.max_pixels, 1, u64::MAX)?;
        range("decode.max_bytes", self.decode.max_bytes, 1, u64::MAX)?;
        range("output.zstd_level", self.output.sink.zstd_level, 1, 22)?;
        range("output.shard_rows", self.output.sink.shard_rows, 1, u64::MAX)?;
        range("output.shard_bytes", self.output.sink.shard_bytes, 1, u64::MAX)?;
        range("output.row_group_rows", self.output.sink.row_group_rows, 1, usize::MAX)?;
        range("output.row_group_bytes", self.output.sink.row_group_bytes, 1, usize::MAX)?;
        range("input.rows_per_unit", self.input.source.rows_per_unit, 1, u64::MAX)?;
        range("input.files_per_unit", self.input.source.files_per_unit, 1, u64::MAX)?;
        range("pipeline.batch_size", self.pipeline.batch_size, 1, 1 << 20)?;
        range("pipeline.channel_capacity", self.pipeline.channel_capacity, 1, 1 << 16)?;
        range("storage.concurrency", self.storage.concurrency, 1, 4096)?;
        range("storage.upload_part_bytes", self.storage.upload_part_bytes, 5 << 20, 5 << 30)?;
        range("storage.request_timeout_s", self.storage.request_timeout_s, 0.001, 86_400.0)?;
        range("storage.retry_timeout_s", self.storage.retry_timeout_s, 0.0, 86_400.0)?;
        range("storage.backoff_s", self.storage.backoff_s, 0.0, 3_600.0)?;
        range("refine.batch_size", self.refine.batch_size, 1, 4096)?;
        range("text.instruct.min_score", self.text.instruct.min_score, 0.0, 1.0)?;
        range("text.instruct.min_box_area", self.text.instruct.min_box_area, 0.0, 1.0)?;
        range("text.instruct.duplicate_iou", self.text.instruct.duplicate_iou, 0.0, 1.0)?;
        range("text.instruct.max_objects", self.text.instruct.max_objects, 1, 100_000)?;
        for language in &self.text.instruct.languages {
            if language != "en" && language != "zh" {
                bail!("text.instruct.languages: `{language}` is not a language of the phrasings; allowed: en, zh");
            }
        }
        lyrics_operators::models::Device::parse(&self.refine.device)
            .map_err(|e| anyhow::anyhow!("refine.device: {e}"))?;
        Ok(())
    }

    /// Digest of everything that shapes the output: input, format, source options, decoding, resizing, encoding,
    /// shard layout. Storage and pipeline settings change speed only, so a rerun may change them freely.
    pub fn hash(&self) -> String {
        self.hash_with("")
    }

    /// [`JobSpec::hash`] with `refiner` (the description of the loaded models, checksums included) mixed in.
    pub fn hash_with(&self, refiner: &str) -> String {
        #[derive(Serialize)]
        struct Shaping<'a> {
            input: &'a InputSection,
            sink: &'a SinkOptions,
            decode: &'a DecodeLimits,
            resize: &'a ResizeSpec,
            encode: &'a EncodeSpec,
            refiner: &'a str,
            text: Option<&'a TextSection>,
        }
        let shaping = Shaping {
            input: &self.input,
            sink: &self.output.sink,
            decode: &self.decode,
            resize: &self.resize,
            encode: &self.encode,
            refiner,
            text: (!refiner.is_empty() && self.text.enabled).then_some(&self.text),
        };
        let json = serde_json::to_vec(&shaping).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobSpec> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        spec.validate()?;
        Ok(spec)
    }

    #[test]
    fn full_spec_parses() {
        let spec = parse(
            r#"
            [input]
            format = "jsonl"
            image_column = "url"
            rows_per_unit = 50
            [output]
            shard_rows = 100
            [resize]
            mode = "keep_ratio"
            image_size = 512
            [encode]
            format = "jpg"
            quality = 90
            [storage]
            max_retries = 3
            [pipeline]
            batch_size = 8
            "#,
        )
        .unwrap();
        assert_eq!(spec.input.format, Some(InputFormat::Jsonl));
        assert_eq!(spec.input.source.rows_per_unit, 50);
        assert_eq!(spec.resize.mode, ResizeMode::KeepRatio);
        assert_eq!(spec.output.sink.shard_rows, 100);
    }

    #[test]
    fn unknown_keys_and_values_are_named_with_the_allowed_ones() {
        let err = parse("[encode]\nqualty = 9\n").unwrap_err().to_string();
        assert!(err.contains("qualty") && err.contains("quality"), "{err}");
        let err = parse("[resize]\nmode = \"stretch\"\n").unwrap_err().to_string();
        assert!(err.contains("stretch") && err.contains("keep_ratio") && err.contains("center_crop"), "{err}");
        let err = parse("[encode]\nquality = 0\n").unwrap_err().to_string();
        assert!(err.contains("encode.quality") && err.contains("1 to 100"), "{err}");
        let err = parse("[input]\nformat = \"zip\"\n").unwrap_err().to_string();
        assert!(err.contains("zip") && err.contains("webdataset"), "{err}");
    }

    #[test]
    fn speed_settings_do_not_change_the_hash() {
        let a = JobSpec::default();
        let mut b = a.clone();
        b.pipeline.batch_size = 3;
        b.storage.concurrency = 2;
        assert_eq!(a.hash(), b.hash());
        b.encode.quality = 50;
        assert_ne!(a.hash(), b.hash());
    }
}

//! Job specs: the TOML file given with `--config`, merged with command-line flags, validated with errors that name
//! the key and the allowed values, and hashed so a rerun can tell whether it continues the same job.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lyrics_operators::image::{DecodeLimits, EncodeSpec, ResizeMode, ResizeSpec};
use lyrics_operators::text::{GroundedFormat, InstructOptions};
use lyrics_pipeline::{DownloadOptions, InputFormat, SinkOptions, SourceOptions, StorageOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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
    pub download: DownloadOptions,
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
    /// Grounded formats written as columns of `pretrain` (any registered format).
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
            // The formats of schema version 1; the others are opted into by name.
            formats: ["lyrics", "qwen", "kosmos2", "shikra"]
                .iter()
                .filter_map(|n| GroundedFormat::named(n))
                .collect(),
            inline_format: GroundedFormat::KOSMOS2,
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
        JobSpec::parse(&text).with_context(|| format!("invalid job spec {}", path.display()))
    }

    /// Parses and validates the text of a spec. Every error names the full key (`output.shard_rows`) and what is
    /// allowed there: the expected type, the range, or for an unknown key the keys its section has.
    pub fn parse(text: &str) -> Result<JobSpec> {
        // A TOML syntax error keeps toml's own message, which points at the line and column.
        let doc: toml::Table =
            text.parse().map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.to_string().trim()))?;
        let mut spec = JobSpec::default();
        let sections = fields_of::<JobSpec>();
        for (name, value) in doc {
            let toml::Value::Table(table) = value else {
                if sections.contains(&name.as_str()) {
                    bail!("`{name}` is a section: write it as [{name}], not as {}", value.type_str());
                }
                bail!("unknown key `{name}`; allowed sections: {}", sections.join(", "));
            };
            match name.as_str() {
                "input" => {
                    // Only the section's own keys are taken here; the rest are the source options flattened into
                    // it, which are deserialized on their own so that their errors keep their key's name.
                    let (head, rest) = split_off(table, &["uri", "format"]);
                    let allowed: Vec<&str> =
                        ["uri", "format"].into_iter().chain(fields_of::<SourceOptions>()).collect();
                    check_keys("input", &rest, &allowed)?;
                    let head: InputHead = section("input", head)?;
                    spec.input =
                        InputSection { uri: head.uri, format: head.format, source: section("input", rest)? };
                }
                "output" => {
                    let (head, rest) = split_off(table, &["uri"]);
                    let allowed: Vec<&str> = ["uri"].into_iter().chain(fields_of::<SinkOptions>()).collect();
                    check_keys("output", &rest, &allowed)?;
                    let head: OutputHead = section("output", head)?;
                    spec.output = OutputSection { uri: head.uri, sink: section("output", rest)? };
                }
                "decode" => spec.decode = checked_section("decode", table)?,
                "resize" => spec.resize = checked_section("resize", table)?,
                "encode" => spec.encode = checked_section("encode", table)?,
                "storage" => spec.storage = checked_section("storage", table)?,
                "download" => spec.download = checked_section("download", table)?,
                "pipeline" => spec.pipeline = checked_section("pipeline", table)?,
                "refine" => spec.refine = checked_section("refine", table)?,
                "text" => {
                    if let Some(toml::Value::Table(instruct)) = table.get("instruct") {
                        check_keys("text.instruct", instruct, &fields_of::<InstructOptions>())?;
                    }
                    spec.text = checked_section("text", table)?;
                }
                _ => bail!("unknown section [{name}]; allowed sections: {}", sections.join(", ")),
            }
        }
        spec.validate()?;
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
        range("download.timeout_s", self.download.timeout_s, 0.001, 86_400.0)?;
        range("download.retries", self.download.retries, 0, 100)?;
        range("download.concurrency", self.download.concurrency, 1, 65_536)?;
        range("download.per_host", self.download.per_host, 1, 65_536)?;
        range("download.max_bytes_in_flight", self.download.max_bytes_in_flight, 1 << 20, 1 << 40)?;
        range("download.units_ahead", self.download.units_ahead, 1, 1024)?;
        range("download.retry_after_max_s", self.download.retry_after_max_s, 0.0, 86_400.0)?;
        if let Some(rate) = self.download.per_host_rate {
            range("download.per_host_rate", rate, 0.001, 1e9)?;
        }
        if self.download.user_agent.trim().is_empty() || reqwest_header_value_is_invalid(&self.download.user_agent)
        {
            bail!("download.user_agent = {:?} is not a valid header value", self.download.user_agent);
        }
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
    /// shard layout, and `download.opt_out` when it is not the default (so outputs written before `[download]`
    /// existed keep their hash). Storage, pipeline and the other download settings change speed only, so a rerun
    /// may change them freely.
    pub fn hash(&self) -> String {
        self.hash_with("")
    }

    /// The hashes a run of this job checks an output against: [`JobSpec::hash_with`] with the input as
    /// `resolved`, the URI the store registry resolved it to (so `corpus`, `./corpus/` and `/data/corpus` from
    /// `/data` are one job), and, when it differs, the hash of the input as typed, which outputs written before
    /// inputs were resolved carry.
    pub fn hashes_with(&self, refiner: &str, resolved: &str) -> (String, Option<String>) {
        let typed = self.hash_with(refiner);
        let mut spec = self.clone();
        spec.input.uri = Some(resolved.to_string());
        let hash = spec.hash_with(refiner);
        let earlier = (typed != hash).then_some(typed);
        (hash, earlier)
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
            #[serde(skip_serializing_if = "Option::is_none")]
            opt_out: Option<&'a Vec<String>>,
        }
        let shaping = Shaping {
            input: &self.input,
            sink: &self.output.sink,
            decode: &self.decode,
            resize: &self.resize,
            encode: &self.encode,
            refiner,
            text: (!refiner.is_empty() && self.text.enabled).then_some(&self.text),
            opt_out: (self.download.opt_out != DownloadOptions::default().opt_out)
                .then_some(&self.download.opt_out),
        };
        let json = serde_json::to_vec(&shaping).unwrap_or_default();
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &json))
    }
}

/// Whether `value` holds a byte no HTTP header value may (a control character other than tab).
fn reqwest_header_value_is_invalid(value: &str) -> bool {
    value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// The keys of `[input]` that are its own rather than the source options'.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputHead {
    uri: Option<String>,
    format: Option<InputFormat>,
}

/// The keys of `[output]` that are its own rather than the sink options'.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputHead {
    uri: Option<String>,
}

fn split_off(mut table: toml::Table, keys: &[&str]) -> (toml::Table, toml::Table) {
    let mut head = toml::Table::new();
    for key in keys {
        if let Some(value) = table.remove(*key) {
            head.insert((*key).to_string(), value);
        }
    }
    (head, table)
}

fn check_keys(section: &str, table: &toml::Table, allowed: &[&str]) -> Result<()> {
    for key in table.keys() {
        if !allowed.contains(&key.as_str()) {
            bail!("unknown key `{section}.{key}`; the keys of [{section}] are: {}", allowed.join(", "));
        }
    }
    Ok(())
}

fn checked_section<T: DeserializeOwned>(name: &str, table: toml::Table) -> Result<T> {
    check_keys(name, &table, &fields_of::<T>())?;
    section(name, table)
}

/// Deserializes one section; a failure names the full key (`output.shard_rows`, `text.formats[1]`) with serde's
/// reason (the expected type, or the allowed values of an enum).
fn section<T: DeserializeOwned>(name: &str, table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { name.to_string() } else { format!("{name}.{path}") };
        anyhow::anyhow!("{key}: {}", e.inner().message().trim())
    })
}

/// The field names of a struct that derives `Deserialize`, as serde's derive passes them to the deserializer.
fn fields_of<T: DeserializeOwned>() -> Vec<&'static str> {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Found(Vec<&'static str>);
    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("fields recorded")
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Found(Vec::new())
        }
    }
    struct Recorder;
    impl<'de> de::Deserializer<'de> for Recorder {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(Vec::new()))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields.to_vec()))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(Recorder) {
        Err(Found(fields)) => fields,
        Ok(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobSpec> {
        JobSpec::parse(text)
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
            [download]
            timeout_s = 5
            retries = 1
            per_host_rate = 2.5
            opt_out = []
            [pipeline]
            batch_size = 8
            "#,
        )
        .unwrap();
        assert_eq!(spec.input.format, Some(InputFormat::Jsonl));
        assert_eq!(spec.input.source.rows_per_unit, 50);
        assert_eq!(spec.resize.mode, ResizeMode::KeepRatio);
        assert_eq!(spec.output.sink.shard_rows, 100);
        assert_eq!((spec.download.timeout_s, spec.download.retries), (5.0, 1));
        assert_eq!((spec.download.per_host_rate, spec.download.opt_out.len()), (Some(2.5), 0));
        let err = parse("[download]\ntimeout = 3\n").unwrap_err().to_string();
        assert!(err.contains("download.timeout") && err.contains("timeout_s") && err.contains("opt_out"), "{err}");
        let err = parse("[download]\nconcurrency = 0\n").unwrap_err().to_string();
        assert!(err.contains("download.concurrency"), "{err}");
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
    fn type_errors_name_the_full_key_and_the_expected_type() {
        let err = parse("[output]\nshard_rows = \"ten\"\n").unwrap_err().to_string();
        assert!(err.contains("output.shard_rows") && err.contains("u64") && err.contains("ten"), "{err}");
        assert!(!err.contains("line 1") && !err.contains('\n'), "{err}");
        let err = parse("[input]\nrows_per_unit = -1\n").unwrap_err().to_string();
        assert!(err.contains("input.rows_per_unit") && err.contains("-1"), "{err}");
        let err = parse("[input]\nformat = 3\n").unwrap_err().to_string();
        assert!(err.contains("input.format"), "{err}");
        let err = parse("[storage]\nbackoff_s = \"fast\"\n").unwrap_err().to_string();
        assert!(err.contains("storage.backoff_s") && err.contains("f64"), "{err}");
        let err = parse("[text]\nformats = [\"lyrics\", \"yaml\"]\n").unwrap_err().to_string();
        assert!(err.contains("text.formats[1]") && err.contains("yaml") && err.contains("kosmos2"), "{err}");
        let err = parse("[text.instruct]\nmin_score = \"high\"\n").unwrap_err().to_string();
        assert!(err.contains("text.instruct.min_score"), "{err}");
        let err = parse("[resize]\nmode = \"stretch\"\n").unwrap_err().to_string();
        assert!(err.contains("resize.mode"), "{err}");
    }

    #[test]
    fn unknown_keys_name_their_section_and_the_allowed_keys() {
        let err = parse("[output]\nshard_rowz = 10\n").unwrap_err().to_string();
        assert!(err.contains("output.shard_rowz"), "{err}");
        assert!(err.contains("shard_rows") && err.contains("uri") && err.contains("zstd_level"), "{err}");
        let err = parse("[input]\nimage_col = \"url\"\n").unwrap_err().to_string();
        assert!(err.contains("input.image_col") && err.contains("image_column") && err.contains("format"), "{err}");
        let err = parse("[text.instruct]\nmax_object = 3\n").unwrap_err().to_string();
        assert!(err.contains("text.instruct.max_object") && err.contains("max_objects"), "{err}");
        let err = parse("[outptu]\nuri = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("outptu") && err.contains("output") && err.contains("storage"), "{err}");
        let err = parse("output = 3\n").unwrap_err().to_string();
        assert!(err.contains("[output]"), "{err}");
    }

    #[test]
    fn flattened_sections_still_parse_their_own_keys() {
        let spec = parse("[input]\nuri = \"s3://b/x/\"\nformat = \"csv\"\nkey_column = \"id\"\n[output]\nuri = \"out\"\nzstd_level = 5\n")
            .unwrap();
        assert_eq!(spec.input.uri.as_deref(), Some("s3://b/x/"));
        assert_eq!(spec.input.format, Some(InputFormat::Csv));
        assert_eq!(spec.input.source.key_column.as_deref(), Some("id"));
        assert_eq!((spec.output.uri.as_deref(), spec.output.sink.zstd_level), (Some("out"), 5));
        // The same spec through serde's own derive: the two readers agree.
        let derived: JobSpec = toml::from_str("[input]\nuri = \"s3://b/x/\"\nformat = \"csv\"\nkey_column = \"id\"\n[output]\nuri = \"out\"\nzstd_level = 5\n").unwrap();
        assert_eq!(spec, derived);
    }

    #[test]
    fn the_hash_of_a_known_spec_is_unchanged() {
        // Digests of the shaping JSON computed by an independent SHA-256 (Python's hashlib), the values every
        // existing output's plan holds: a change here would make every resume refuse its output.
        assert_eq!(JobSpec::default().hash(), DEFAULT_HASH);
        assert_eq!(JobSpec::default().hash_with("{\"tagger\":{}}"), REFINED_HASH);
    }

    const DEFAULT_HASH: &str = "9ef423597fd8939dd6467ceed666ce8334edf7ce4b06998b13970c143d691d46";
    const REFINED_HASH: &str = "29b2d0571daa1b2b9b9de5f76b8e8ab2ea1e6f18aca895f3d483f0385c3ad966";

    #[test]
    fn speed_settings_do_not_change_the_hash() {
        let a = JobSpec::default();
        let mut b = a.clone();
        b.pipeline.batch_size = 3;
        b.storage.concurrency = 2;
        b.download.timeout_s = 1.0;
        b.download.concurrency = 7;
        b.download.user_agent = "other/1".into();
        assert_eq!(a.hash(), b.hash());
        // Which images are fetched at all shapes the output; the default list keeps the hash it always had.
        let mut c = a.clone();
        c.download.opt_out = vec!["noai".into()];
        assert_ne!(a.hash(), c.hash());
        let parsed =
            parse("[download]\nopt_out = [\"noai\", \"noimageai\", \"noindex\", \"noimageindex\"]\n").unwrap();
        assert_eq!(parsed.hash(), a.hash());
        b.encode.quality = 50;
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn turning_a_fast_path_off_changes_the_hash() {
        let a = JobSpec::default();
        for off in [|s: &mut JobSpec| s.decode.dct_scaling = false, |s: &mut JobSpec| s.decode.ycbcr = false] {
            let mut b = a.clone();
            off(&mut b);
            assert_ne!(a.hash(), b.hash());
        }
    }
}

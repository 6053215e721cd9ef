//! Planning: list the input, infer its format, sort, and number the work units.
//!
//! A work unit is one input shard (a WebDataset tar), a run of a Parquet file's row groups (or the whole file), a
//! slice of a manifest (a byte range of a JSONL/CSV file, a range of a COCO file's images), or a fixed count of
//! loose files. Units are numbered in sorted
//! order, so every worker (and every rerun) agrees on what unit `u` is; their hash detects an input that changed
//! under an existing output.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::source::{self, Source, SourceContext, SourceOptions};
use crate::store::{Location, StoreRegistry};

/// The input formats, inferred from file extensions unless forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// WebDataset tar shards: members grouped by key (`.jpg/.jpeg/.png/.webp`, `.txt`, `.json`).
    Webdataset,
    /// Parquet with an image-bytes column, or a path/URL column resolved against the store.
    Parquet,
    /// JSON Lines manifest: one object per line with an image path or URL and a caption.
    Jsonl,
    /// CSV (or TSV) manifest with a header row.
    Csv,
    /// COCO captions JSON (`images` + `annotations[].caption`).
    Coco,
    /// Loose image files, each with optional `.txt` caption and `.json` metadata beside it.
    Images,
}

impl InputFormat {
    pub const ALL: [InputFormat; 6] = [
        InputFormat::Webdataset,
        InputFormat::Parquet,
        InputFormat::Jsonl,
        InputFormat::Csv,
        InputFormat::Coco,
        InputFormat::Images,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Webdataset => "webdataset",
            InputFormat::Parquet => "parquet",
            InputFormat::Jsonl => "jsonl",
            InputFormat::Csv => "csv",
            InputFormat::Coco => "coco",
            InputFormat::Images => "images",
        }
    }

    pub fn from_name(name: &str) -> Option<InputFormat> {
        InputFormat::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The format a file with this name belongs to, by extension.
    pub fn of_file(name: &str) -> Option<InputFormat> {
        let ext = extension(name)?;
        Some(match ext.as_str() {
            "tar" => InputFormat::Webdataset,
            "parquet" => InputFormat::Parquet,
            "jsonl" | "ndjson" => InputFormat::Jsonl,
            "csv" | "tsv" => InputFormat::Csv,
            "json" => InputFormat::Coco,
            e if IMAGE_EXTENSIONS.contains(&e) => InputFormat::Images,
            _ => return None,
        })
    }
}

/// Extensions read as images (WebDataset members and loose files).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif"];

pub(crate) fn extension(name: &str) -> Option<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase())
}

/// One numbered piece of work: what a worker reads, processes and commits as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkUnit {
    pub id: u64,
    /// Path of the shard or manifest within the input store; empty for loose files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// Byte range of a JSONL/CSV manifest, image index range of a COCO file, or row-group index range of a Parquet
    /// file; `[0, 0]` for the whole object.
    #[serde(default, skip_serializing_if = "is_whole")]
    pub range: [u64; 2],
    /// Index of the unit's first row within its manifest or Parquet file (keys of rows without one count from it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_row: u64,
    /// Loose files: every object of the unit (images and their sidecars), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_whole(range: &[u64; 2]) -> bool {
    range == &[0, 0]
}

/// The numbered units of an input, in the order every worker agrees on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub format: InputFormat,
    pub units: Vec<WorkUnit>,
}

impl Plan {
    /// A digest of the units: equal for equal inputs, different when the input changed.
    pub fn fingerprint(&self) -> String {
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        hasher.update(self.format.name().as_bytes());
        for unit in &self.units {
            hasher.update(&serde_json::to_vec(unit).unwrap_or_default());
        }
        hex::encode(hasher.finish())
    }
}

/// A planned input: its units, and the source that reads them.
pub struct Planned {
    pub plan: Plan,
    pub source: Box<dyn Source>,
}

/// Lists `input` (an object or a prefix), infers or takes its format, and lets that format's source plan the
/// units.
pub async fn plan(
    registry: &Arc<StoreRegistry>,
    input: &str,
    forced: Option<InputFormat>,
    options: &SourceOptions,
) -> Result<Planned, PipelineError> {
    let location = registry.locate(input)?;
    let objects = list(&location).await?;
    if objects.is_empty() {
        return Err(PipelineError::input(input, "no input objects found (is the path or prefix right?)"));
    }
    let format = match forced {
        Some(format) => format,
        None => infer_format(input, &objects)?,
    };
    let total = objects.len();
    let mut chosen: Vec<ObjectMeta> = objects
        .iter()
        .filter(|o| format == InputFormat::Images || InputFormat::of_file(o.location.as_ref()) == Some(format))
        .cloned()
        .collect();
    if forced.is_some() && format != InputFormat::Images && chosen.is_empty() {
        // A forced format reads every listed object, whatever its extension.
        chosen = objects;
    }
    let ignored = total - chosen.len();
    if ignored > 0 {
        tracing::warn!(
            ignored,
            format = format.name(),
            "objects under the input that are not {} files are ignored",
            format.name()
        );
    }
    let ctx = SourceContext { registry: registry.clone(), input: location, options: options.clone() };
    let source = source::open(format, ctx);
    let mut units = source.plan(&chosen).await?;
    for (id, unit) in units.iter_mut().enumerate() {
        unit.id = id as u64;
    }
    Ok(Planned { plan: Plan { format, units }, source })
}

/// Every object at `location`: the object itself, or everything under it as a prefix, sorted by path. Names
/// starting with `_` or `.` (markers such as `_SUCCESS`, hidden files) are skipped.
pub async fn list(location: &Location) -> Result<Vec<ObjectMeta>, PipelineError> {
    if !location.path.as_ref().is_empty()
        && let Ok(meta) = location.store.head(&location.path).await
    {
        return Ok(vec![meta]);
    }
    let prefix: Option<&Path> = if location.path.as_ref().is_empty() { None } else { Some(&location.path) };
    let mut objects: Vec<ObjectMeta> =
        location.store.list(prefix).try_collect().await.map_err(|e| PipelineError::store(location.uri(), e))?;
    objects.retain(|o| {
        let rel = o
            .location
            .prefix_match(&location.path)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>());
        let parts = rel.unwrap_or_default();
        !parts.iter().any(|p| p.starts_with('_') || p.starts_with('.'))
    });
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(objects)
}

fn infer_format(input: &str, objects: &[ObjectMeta]) -> Result<InputFormat, PipelineError> {
    let found: Vec<InputFormat> =
        objects.iter().filter_map(|o| InputFormat::of_file(o.location.as_ref())).collect();
    // Shard formats win over loose files: a folder of tars with a stray preview image is a WebDataset.
    for format in InputFormat::ALL {
        if found.contains(&format) {
            return Ok(format);
        }
    }
    let names: Vec<String> = objects.iter().take(3).map(|o| o.location.to_string()).collect();
    Err(PipelineError::input(
        input,
        format!(
            "cannot infer the input format from names such as {} (known extensions: .tar, .parquet, .jsonl, .csv, \
             .tsv, .json, image files); pass --format {}",
            names.join(", "),
            InputFormat::ALL.map(InputFormat::name).join("|")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension() {
        assert_eq!(InputFormat::of_file("a/b/shard-0001.tar"), Some(InputFormat::Webdataset));
        assert_eq!(InputFormat::of_file("x.PARQUET"), Some(InputFormat::Parquet));
        assert_eq!(InputFormat::of_file("m.tsv"), Some(InputFormat::Csv));
        assert_eq!(InputFormat::of_file("captions_val2017.json"), Some(InputFormat::Coco));
        assert_eq!(InputFormat::of_file("img.JPG"), Some(InputFormat::Images));
        assert_eq!(InputFormat::of_file("README"), None);
        for f in InputFormat::ALL {
            assert_eq!(InputFormat::from_name(f.name()), Some(f));
        }
    }
}

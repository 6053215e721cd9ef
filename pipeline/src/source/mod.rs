//! Sources: reading the items of one work unit, streaming, straight from object storage.
//!
//! Execution model: the engine's read task calls [`read_unit`] for each unit in turn; the source pushes records
//! into an [`Emitter`], which batches them and sends them down a bounded channel, so a slow consumer slows the
//! source (backpressure) and memory never depends on corpus size. A source reports item-level problems (a
//! missing image, an unsafe tar member, a duplicated key) as error records and carries on; it returns an error
//! only when the unit as a whole cannot be read (the store failed past its retries), so the unit is retried
//! by a rerun.

pub(crate) mod coco;
mod fetch;
mod files;
pub(crate) mod manifest;
mod parquet;
mod webdataset;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::PipelineError;
use crate::item::Record;
use crate::metrics::Metrics;
use crate::plan::{InputFormat, WorkUnit};
use crate::runner::Msg;
use crate::store::{Location, StoreRegistry};

/// How sources find images, captions and keys, and how finely they cut units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceOptions {
    /// Column (Parquet, CSV) or field (JSONL) holding the image: bytes, a `{bytes, path}` struct, a path or a URL.
    /// Default: the first of `image`, `jpg`, `png`, `url`, `image_url`, `path`, `image_path`, `file_name`, `filepath`.
    pub image_column: Option<String>,
    /// Column holding the caption (a string, or a list of strings). Default: the first of `caption`, `text`,
    /// `captions`, `TEXT`, `alt`.
    pub caption_column: Option<String>,
    /// Column holding the key. Default: `key`, `__key__` or `id` when present, else `<file stem>-<row number>`.
    pub key_column: Option<String>,
    /// Base URI that relative image paths of manifests and COCO files are resolved against. Default: the folder
    /// of the manifest.
    pub image_prefix: Option<String>,
    /// Rows of a JSONL/CSV manifest, or images of a COCO file, per work unit.
    pub rows_per_unit: u64,
    /// Loose image files per work unit.
    pub files_per_unit: u64,
    /// Images larger than this many bytes are refused before they are read (set from `decode.max_bytes`).
    #[serde(skip)]
    pub max_image_bytes: u64,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            image_column: None,
            caption_column: None,
            key_column: None,
            image_prefix: None,
            rows_per_unit: 1000,
            files_per_unit: 1000,
            max_image_bytes: 64 << 20,
        }
    }
}

pub(crate) const IMAGE_COLUMNS: [&str; 9] =
    ["image", "jpg", "png", "url", "image_url", "path", "image_path", "file_name", "filepath"];
pub(crate) const CAPTION_COLUMNS: [&str; 5] = ["caption", "text", "captions", "TEXT", "alt"];
pub(crate) const KEY_COLUMNS: [&str; 3] = ["key", "__key__", "id"];

/// What every source of a run shares.
pub(crate) struct ReadContext {
    pub registry: Arc<StoreRegistry>,
    pub input: Location,
    pub format: InputFormat,
    pub options: SourceOptions,
    pub coco: coco::CocoCache,
}

/// Reads one unit, pushing its records into `emitter`.
pub(crate) async fn read_unit(
    ctx: &ReadContext,
    unit: &WorkUnit,
    emitter: &mut Emitter,
) -> Result<(), PipelineError> {
    match ctx.format {
        InputFormat::Webdataset => webdataset::read(ctx, unit, emitter).await,
        InputFormat::Parquet => parquet::read(ctx, unit, emitter).await,
        InputFormat::Jsonl | InputFormat::Csv => manifest::read(ctx, unit, emitter).await,
        InputFormat::Coco => coco::read(ctx, unit, emitter).await,
        InputFormat::Images => files::read(ctx, unit, emitter).await,
    }
}

/// The downstream end has gone away (the job is shutting down).
#[derive(Debug)]
pub(crate) struct Closed;

impl From<Closed> for PipelineError {
    fn from(_: Closed) -> Self {
        PipelineError::Internal("pipeline closed while reading".into())
    }
}

/// Batches the records of one unit and sends them downstream.
pub(crate) struct Emitter {
    unit: u64,
    tx: mpsc::Sender<Msg>,
    batch: Vec<Record>,
    batch_size: usize,
    metrics: Arc<Metrics>,
    /// Items pushed in this unit.
    pub items: u64,
}

impl Emitter {
    pub fn new(unit: u64, tx: mpsc::Sender<Msg>, batch_size: usize, metrics: Arc<Metrics>) -> Self {
        Emitter {
            unit,
            tx,
            batch: Vec::with_capacity(batch_size),
            batch_size: batch_size.max(1),
            metrics,
            items: 0,
        }
    }

    /// A stand-in left behind while the emitter is lent to a blocking thread.
    pub fn detached(&self) -> Emitter {
        Emitter::new(self.unit, self.tx.clone(), self.batch_size, self.metrics.clone())
    }

    fn account(&mut self, record: &Record) {
        self.items += 1;
        self.metrics.items_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Record::Raw(raw) = record {
            self.metrics.bytes_read.fetch_add(raw.bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub async fn push(&mut self, record: Record) -> Result<(), Closed> {
        self.account(&record);
        self.batch.push(record);
        if self.batch.len() >= self.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// [`Emitter::push`] from a blocking thread.
    pub fn push_blocking(&mut self, record: Record) -> Result<(), Closed> {
        self.account(&record);
        self.batch.push(record);
        if self.batch.len() >= self.batch_size {
            self.flush_blocking()?;
        }
        Ok(())
    }

    fn take(&mut self) -> Option<Msg> {
        if self.batch.is_empty() {
            return None;
        }
        let records = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size));
        Some(Msg::Batch { unit: self.unit, records })
    }

    pub async fn flush(&mut self) -> Result<(), Closed> {
        if let Some(msg) = self.take() {
            let started = std::time::Instant::now();
            self.tx.send(msg).await.map_err(|_| Closed)?;
            self.metrics.read_blocked(started.elapsed());
        }
        Ok(())
    }

    pub fn flush_blocking(&mut self) -> Result<(), Closed> {
        if let Some(msg) = self.take() {
            let started = std::time::Instant::now();
            self.tx.blocking_send(msg).map_err(|_| Closed)?;
            self.metrics.read_blocked(started.elapsed());
        }
        Ok(())
    }
}

/// The last path segment of `path` without its extension: the default key stem of manifest rows.
pub(crate) fn file_stem(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split_once('.').map_or(base, |(stem, _)| stem).to_string()
}

//! Sources: how an input format becomes work units, and how a unit becomes items.
//!
//! # Execution model
//!
//! The engine drives; a source never spawns work of its own accord. At planning, the engine lists the input
//! (one object, or everything under a prefix), keeps the objects of the chosen format, and hands them to
//! [`Source::plan`], which cuts them into work units; the engine numbers the units and records them in
//! `_lyrics/plan.json`, so every worker and every rerun agrees on what unit `u` is. While running, the engine's
//! read task calls [`Source::read`] for each unit it owns, in order, one at a time; the source pushes one record
//! per item into the [`Emitter`] it is given. The emitter batches records and sends them down a bounded channel:
//! when the stages behind it are slower, `push` waits, so a source is paced by the slowest stage (backpressure)
//! and memory never depends on the corpus size. The emitter also checks every key ([`crate::keys`]) and refuses
//! a key seen earlier in the unit, and removes credentials (a URL's user info, signature and token parameters)
//! from the source, image path, metadata and error of every record, so sources need not.
//!
//! # The contract
//!
//! - [`Source::plan`] returns the units of the objects in a deterministic order. It reads only what it needs to
//!   cut (a manifest's line starts, a COCO file's image count, a Parquet file's footer), and refuses, by name,
//!   what would make every item fail (a configured column the input does not have).
//! - [`Source::read`] pushes exactly one record per item of the unit, in a deterministic order: a
//!   [`SourceRecord::Raw`] item, or a [`SourceRecord::Error`] row for an item it could not read (a missing image,
//!   an unsafe member, a refused sidecar). It returns an error only when the unit as a whole cannot be read (the
//!   store failed past its retries), so the unit is not committed and a rerun retries it. What it pushed before
//!   such an error is discarded with the unit.
//! - Neither may block the async runtime: parsing that runs long (a tar, a CSV) goes to a blocking thread, with
//!   [`Emitter::push_blocking`].
//!
//! One module per format; [`open`] is the one place that maps a format to its source.

mod body;
pub(crate) mod coco;
mod fetch;
mod files;
pub(crate) mod manifest;
mod parquet;
mod webdataset;

use std::sync::Arc;

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::future::BoxFuture;
use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::PipelineError;
use crate::item::{ItemError, Msg, SourceRecord};
use crate::keys::{MAX_KEY_BYTES, check_key};
use crate::metrics::Metrics;
use crate::plan::{InputFormat, WorkUnit};
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
    /// Rows of a JSONL/CSV manifest, or images of a COCO file, per work unit; for Parquet, about this many rows:
    /// a unit is a run of consecutive whole row groups of at most this many rows (a larger row group is a unit of
    /// its own).
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

/// What the sources of a run share: where the input is, and how to find images, captions and keys in it.
#[derive(Clone)]
pub struct SourceContext {
    pub registry: Arc<StoreRegistry>,
    /// The input as the user named it (an object or a prefix).
    pub input: Location,
    pub options: SourceOptions,
}

/// One input format: its planning and its reading, together. See the module documentation for the contract.
pub trait Source: Send + Sync {
    /// The format this source reads.
    fn format(&self) -> InputFormat;

    /// Cuts `objects` (the input's objects of this format, sorted by path) into work units, in order. The
    /// engine numbers them; the `id` a source sets is ignored.
    fn plan<'a>(&'a self, objects: &'a [ObjectMeta]) -> BoxFuture<'a, Result<Vec<WorkUnit>, PipelineError>>;

    /// Pushes one record per item of `unit` into `emitter`, in a deterministic order.
    fn read<'a>(&'a self, unit: &'a WorkUnit, emitter: &'a mut Emitter)
    -> BoxFuture<'a, Result<(), PipelineError>>;

    /// Whether the engine may read several units at once (see [`ReadAhead`]): sources that fetch each item's
    /// image, whose unit is only as quick as its slowest fetch. They push with [`Emitter::push`] only.
    fn reads_ahead(&self) -> bool {
        false
    }
}

/// The bytes of items read ahead of the unit the engine is handing on (the *head*), shared by the units being
/// read at once. An emitter of a unit that is not the head waits while the bytes read ahead are over the limit;
/// the head's never waits (its items are what frees the bytes), so reading ahead cannot hold the head up, and the
/// memory held is the limit plus the head's own items.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    limit: u64,
    held: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
    /// Set when nothing is handed on any more (the run stops): no emitter waits then.
    closed: std::sync::atomic::AtomicBool,
}

impl ReadAhead {
    pub(crate) fn new(limit: u64) -> Self {
        ReadAhead {
            limit,
            held: Default::default(),
            changed: tokio::sync::Notify::new(),
            closed: Default::default(),
        }
    }

    /// Counts `bytes` read for a unit, first waiting, unless it is the `head`, for room under the limit.
    async fn charge(&self, bytes: u64, head: &std::sync::atomic::AtomicBool) {
        use std::sync::atomic::Ordering;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let held = self.held.load(Ordering::Acquire);
            let free = head.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire);
            if free || held == 0 || held + bytes <= self.limit {
                break;
            }
            changed.await;
        }
        self.held.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Counts `bytes` that a unit holds without handing them on yet (images fetched past one still being fetched),
    /// without waiting: they are in memory already, and they stop the units read ahead from fetching more.
    fn hold(&self, bytes: u64) {
        self.held.fetch_add(bytes, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether a unit may start more reads: the head always may; the others while the bytes held are under the
    /// limit.
    fn has_room(&self, head: &std::sync::atomic::AtomicBool) -> bool {
        use std::sync::atomic::Ordering;
        head.load(Ordering::Acquire)
            || self.closed.load(Ordering::Acquire)
            || self.held.load(Ordering::Acquire) < self.limit
    }

    /// Waits until the unit may start more reads (see [`ReadAhead::has_room`]).
    async fn wait_room(&self, head: &std::sync::atomic::AtomicBool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.has_room(head) {
                return;
            }
            changed.await;
        }
    }

    /// The bytes of records handed on.
    pub(crate) fn release(&self, bytes: u64) {
        self.held.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Nothing is handed on any more: emitters stop waiting (their sends then fail).
    pub(crate) fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Makes a unit the head: its emitter stops waiting.
    pub(crate) fn promote(&self, head: &std::sync::atomic::AtomicBool) {
        head.store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify_waiters();
    }
}

/// The bytes a record weighs in [`ReadAhead`].
pub(crate) fn record_bytes(record: &SourceRecord) -> u64 {
    match record {
        SourceRecord::Raw(raw) => raw.bytes.len() as u64,
        SourceRecord::Error(_) => 0,
    }
}

/// The source of `format`.
pub fn open(format: InputFormat, ctx: SourceContext) -> Box<dyn Source> {
    match format {
        InputFormat::Webdataset => Box::new(webdataset::WebDataset { ctx }),
        InputFormat::Parquet => Box::new(parquet::ParquetSource { ctx }),
        InputFormat::Jsonl | InputFormat::Csv => Box::new(manifest::Manifest { ctx, format }),
        InputFormat::Coco => Box::new(coco::CocoSource { ctx, cache: Default::default() }),
        InputFormat::Images => Box::new(files::LooseFiles { ctx }),
    }
}

/// Whether `text` may hold a credential: user info (`user:pass@host`) or a `name=value` parameter.
fn may_hold_credentials(text: &str) -> bool {
    text.contains(['@', '='])
}

/// Removes credentials from a URL or message kept in the output (see [`crate::store::without_credentials`]):
/// what is written is read by anyone the dataset is shared with, unlike the environment the job ran in.
fn scrub(text: &mut String) {
    if may_hold_credentials(text) {
        *text = crate::store::without_credentials(text);
    }
}

/// [`scrub`] for every string of a JSON text, so that escapes in it are never cut; text that is not JSON is
/// scrubbed as text.
fn scrub_json(text: &mut String) {
    fn walk(value: &mut serde_json::Value, changed: &mut bool) {
        match value {
            serde_json::Value::String(s) if may_hold_credentials(s) => {
                let clean = crate::store::without_credentials(s);
                if clean != *s {
                    *s = clean;
                    *changed = true;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, changed)),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(|v| walk(v, changed)),
            _ => {}
        }
    }
    if !may_hold_credentials(text) {
        return;
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(mut value) => {
            let mut changed = false;
            walk(&mut value, &mut changed);
            if changed {
                *text = value.to_string();
            }
        }
        Err(_) => scrub(text),
    }
}

/// A unit of one whole object (a tar shard, a Parquet file).
pub(crate) fn whole_object(object: &ObjectMeta) -> WorkUnit {
    WorkUnit { id: 0, object: object.location.to_string(), range: [0, 0], first_row: 0, files: vec![] }
}

/// The downstream end has gone away (the job is shutting down).
#[derive(Debug)]
pub struct Closed;

impl From<Closed> for PipelineError {
    fn from(_: Closed) -> Self {
        PipelineError::Internal("pipeline closed while reading".into())
    }
}

/// Takes the records of one unit from its source: checks each key, batches them and sends them downstream.
pub struct Emitter {
    unit: u64,
    tx: mpsc::Sender<Msg<SourceRecord>>,
    batch: Vec<SourceRecord>,
    batch_size: usize,
    metrics: Arc<Metrics>,
    /// The source of the first item of each key in this unit.
    seen: HashMap<String, String>,
    /// Items pushed in this unit.
    pub(crate) items: u64,
    /// Problems that cost an item nothing but are worth counting (a second image member under one key).
    pub(crate) warnings: BTreeMap<String, u64>,
    /// When the unit is read again for some keys only (`run --retry-errors`): those keys; other items are
    /// passed over without a word (their rows are already written).
    only: Option<Arc<HashSet<String>>>,
    /// When the unit is read ahead of the one being handed on: the shared byte count, and whether this unit is
    /// the head now.
    ahead: Option<(Arc<ReadAhead>, Arc<std::sync::atomic::AtomicBool>)>,
}

impl Emitter {
    pub(crate) fn new(
        unit: u64,
        tx: mpsc::Sender<Msg<SourceRecord>>,
        batch_size: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Emitter {
            unit,
            tx,
            batch: Vec::with_capacity(batch_size),
            batch_size: batch_size.max(1),
            metrics,
            seen: HashMap::new(),
            items: 0,
            warnings: BTreeMap::new(),
            only: None,
            ahead: None,
        }
    }

    /// An emitter of a unit read ahead (see [`ReadAhead`]).
    pub(crate) fn ahead(mut self, budget: Arc<ReadAhead>, head: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.ahead = Some((budget, head));
        self
    }

    /// Whether the unit may start more reads now: always, unless it is read ahead of the head and the units read
    /// at once hold as many bytes as they may (see [`ReadAhead`]).
    pub(crate) fn has_room(&self) -> bool {
        self.ahead.as_ref().is_none_or(|(budget, head)| budget.has_room(head))
    }

    /// Waits until [`Emitter::has_room`].
    pub(crate) async fn wait_room(&self) {
        if let Some((budget, head)) = &self.ahead {
            budget.wait_room(head).await;
        }
    }

    /// Counts `bytes` of records the source holds before it can push them (they arrived out of order), so that
    /// the bytes the units read at once hold stay bounded; [`Emitter::unhold`] before they are pushed.
    pub(crate) fn hold(&self, bytes: u64) {
        if let Some((budget, _)) = &self.ahead {
            budget.hold(bytes);
        }
    }

    /// Undoes [`Emitter::hold`].
    pub(crate) fn unhold(&self, bytes: u64) {
        if let Some((budget, _)) = &self.ahead {
            budget.release(bytes);
        }
    }

    /// An emitter that lets through the items of `keys` only (see [`crate::retry`]).
    pub(crate) fn only(mut self, keys: Option<Arc<HashSet<String>>>) -> Self {
        self.only = keys;
        self
    }

    /// A stand-in left behind while the emitter is lent to a blocking thread.
    pub(crate) fn detached(&self) -> Emitter {
        let mut detached =
            Emitter::new(self.unit, self.tx.clone(), self.batch_size, self.metrics.clone()).only(self.only.clone());
        detached.ahead = self.ahead.clone();
        detached
    }

    /// Whether an item of `key` is wanted in this reading of the unit: a source may then skip fetching the
    /// others' images. Keys are compared as they would be stored (cut to the longest accepted).
    pub fn wants(&self, key: &str) -> bool {
        let Some(only) = &self.only else { return true };
        if only.contains(key) {
            return true;
        }
        let mut stored = key.to_string();
        truncate_key(&mut stored);
        only.contains(&stored)
    }

    /// Counts a warning of `kind` for this unit (it goes into the unit's marker and the run's summary).
    pub fn warn(&mut self, kind: &str, message: &str) {
        self.warn_many(kind, 1, message);
    }

    /// Counts `count` warnings of `kind` that one message describes (the captions of a COCO file that name no
    /// image).
    pub fn warn_many(&mut self, kind: &str, count: u64, message: &str) {
        tracing::warn!(unit = self.unit, kind, count, "{}", crate::store::redact_secrets(message));
        *self.warnings.entry(kind.to_string()).or_default() += count;
    }

    /// Refuses an item whose key is unusable or was seen earlier in the unit. An error row keeps its own cause,
    /// with its key cut to the longest accepted.
    fn admit(&mut self, record: SourceRecord) -> SourceRecord {
        self.items += 1;
        self.metrics.items_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let record = match record {
            SourceRecord::Error(mut row) => {
                truncate_key(&mut row.key);
                scrub(&mut row.source);
                scrub(&mut row.error);
                return SourceRecord::Error(row);
            }
            SourceRecord::Raw(mut raw) => {
                scrub(&mut raw.source);
                if let Some(path) = &mut raw.image_path {
                    scrub(path);
                }
                if let Some(meta) = &mut raw.meta {
                    scrub_json(meta);
                }
                raw
            }
        };
        if let Err(why) = check_key(&record.key) {
            let mut key = record.key;
            truncate_key(&mut key);
            return SourceRecord::error(&key, &record.source, ItemError::new("read", "bad_key", why));
        }
        if let Some(first) = self.seen.get(&record.key) {
            let error = ItemError::new(
                "read",
                "duplicate_key",
                format!("the key {} was already used by {first} (the first occurrence is kept)", record.key),
            );
            return SourceRecord::error(&record.key, &record.source, error);
        }
        self.seen.insert(record.key.clone(), record.source.clone());
        self.metrics.bytes_read.fetch_add(record.bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        SourceRecord::Raw(record)
    }

    pub async fn push(&mut self, record: SourceRecord) -> Result<(), Closed> {
        if !self.wants(record.identity().0) {
            return Ok(());
        }
        let record = self.admit(record);
        // Charged as handed on: an item refused here weighs nothing.
        if let Some((budget, head)) = &self.ahead {
            budget.charge(record_bytes(&record), head).await;
        }
        self.batch.push(record);
        if self.batch.len() >= self.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// [`Emitter::push`] from a blocking thread.
    pub fn push_blocking(&mut self, record: SourceRecord) -> Result<(), Closed> {
        if !self.wants(record.identity().0) {
            return Ok(());
        }
        let record = self.admit(record);
        self.batch.push(record);
        if self.batch.len() >= self.batch_size {
            self.flush_blocking()?;
        }
        Ok(())
    }

    fn take(&mut self) -> Option<Msg<SourceRecord>> {
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

fn truncate_key(key: &mut String) {
    if key.len() > MAX_KEY_BYTES {
        let mut end = MAX_KEY_BYTES;
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        key.truncate(end);
    }
}

/// The last path segment of `path` without its extension: the default key stem of manifest rows.
pub(crate) fn file_stem(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split_once('.').map_or(base, |(stem, _)| stem).to_string()
}

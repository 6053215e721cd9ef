//! What flows through the engine: the items sources read ([`RawItem`], [`SourceRecord`]), the records stages turn
//! them into ([`Record`], [`Sample`]), the rows of product tables a sample carries ([`Products`]), and the messages
//! that carry all of these down the channels ([`Msg`]).
//!
//! A sample's `state` is a type of the job's choosing (decoded pixels, a model's intermediate results): the engine
//! moves it from stage to stage without looking inside, and the compiler checks what each stage finds there.

use std::any::Any;

use lyrics_schemas::{ErrorRow, SampleRow};

use crate::table::TableId;

/// One input item as a source read it: the encoded image and its text, not yet validated.
#[derive(Debug, Clone, Default)]
pub struct RawItem {
    /// The item's key: unique within the job, and safe to use as a relative file name (see
    /// [`crate::keys::check_key`]).
    pub key: String,
    /// Input URI and member (`s3://b/shard-0.tar#000001.jpg`).
    pub source: String,
    /// Name of the image within its source (the tar member, the manifest's path), stored as `image.path`.
    pub image_path: Option<String>,
    /// The encoded image, as read.
    pub bytes: Vec<u8>,
    /// Every caption of the item, in source order.
    pub captions: Vec<String>,
    /// Metadata as JSON text.
    pub meta: Option<String>,
}

/// Why an item could not become a sample. Every item ends as exactly one sample row or one error row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// The stage that refused the item (`read`, `decode`, `refine`, ...).
    pub stage: &'static str,
    /// A short, stable name of the cause (`corrupt_image`, `duplicate_key`, `panic`, ...), counted in summaries.
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ItemError {
    pub fn new(stage: &'static str, kind: &'static str, message: impl Into<String>) -> Self {
        ItemError { stage, kind, message: message.into() }
    }

    /// The error row for the item `key` read from `source`; the message names the item.
    pub fn into_row(self, key: &str, source: &str) -> ErrorRow {
        ErrorRow {
            key: key.to_string(),
            source: source.to_string(),
            stage: self.stage.to_string(),
            kind: self.kind.to_string(),
            error: format!("{source}: {}", self.message),
        }
    }
}

/// What a source hands the engine for each item: the item, or the error row of an item it could not read.
#[derive(Debug)]
pub enum SourceRecord {
    Raw(RawItem),
    Error(ErrorRow),
}

impl SourceRecord {
    pub fn error(key: &str, source: &str, error: ItemError) -> SourceRecord {
        SourceRecord::Error(error.into_row(key, source))
    }

    /// The item's key and source.
    pub fn identity(&self) -> (&str, &str) {
        match self {
            SourceRecord::Raw(raw) => (&raw.key, &raw.source),
            SourceRecord::Error(row) => (&row.key, &row.source),
        }
    }
}

/// The rows a sample adds to the product tables the stages declared (see [`crate::table`]), in the order they
/// were added. Built only through a [`crate::table::TableHandle`], so each entry holds the row type of its table.
#[derive(Default)]
pub struct Products {
    pub(crate) entries: Vec<(TableId, Box<dyn Any + Send>, usize)>,
}

impl Products {
    /// Rows in all tables.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|(_, _, n)| *n).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl std::fmt::Debug for Products {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|(table, _, n)| (table.0, *n))).finish()
    }
}

/// A sample on its way to the sink, with the state later stages share (decoded pixels, so nothing is decoded
/// twice) and the rows it adds to product tables.
pub struct Sample<S> {
    pub row: SampleRow,
    pub state: S,
    pub products: Products,
}

impl<S> Sample<S> {
    pub fn new(row: SampleRow, state: S) -> Sample<S> {
        Sample { row, state, products: Products::default() }
    }

    /// The error record of this sample: `error` names the image by its path within the source, else its key.
    pub fn fail(&self, error: ItemError) -> Record<S> {
        Record::error(&self.row.key, &self.row.source, error)
    }
}

impl<S> std::fmt::Debug for Sample<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample").field("key", &self.row.key).field("products", &self.products).finish()
    }
}

/// One item in the pipeline: raw as read, a sample, or an error row. Stages map records one to one.
#[derive(Debug)]
pub enum Record<S> {
    Raw(RawItem),
    Sample(Box<Sample<S>>),
    Error(ErrorRow),
}

impl<S> Record<S> {
    pub fn error(key: &str, source: &str, error: ItemError) -> Record<S> {
        Record::Error(error.into_row(key, source))
    }

    /// The item's key and source, whatever became of it.
    pub fn identity(&self) -> (&str, &str) {
        match self {
            Record::Raw(raw) => (&raw.key, &raw.source),
            Record::Sample(sample) => (&sample.row.key, &sample.row.source),
            Record::Error(row) => (&row.key, &row.source),
        }
    }
}

impl<S> From<SourceRecord> for Record<S> {
    fn from(record: SourceRecord) -> Self {
        match record {
            SourceRecord::Raw(raw) => Record::Raw(raw),
            SourceRecord::Error(row) => Record::Error(row),
        }
    }
}

/// What flows down every channel: batches of one unit's records, then the unit's end.
pub enum Msg<T> {
    Batch {
        unit: u64,
        records: Vec<T>,
    },
    /// The unit's last record has been sent; `result` says whether the source read it whole.
    UnitEnd {
        unit: u64,
        items: u64,
        /// Warnings by kind the source counted in the unit.
        warnings: std::collections::BTreeMap<String, u64>,
        result: Result<(), String>,
    },
    /// A stage lost the unit (it failed for the whole job): the unit must not be committed.
    UnitFailed {
        unit: u64,
        message: String,
    },
}

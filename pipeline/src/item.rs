//! What flows between stages: items read from a source, and the records stages turn them into.

use std::any::Any;

use lyrics_schemas::{ErrorRow, InstructRow, PretrainRow, SampleRow};

/// One input item as a source read it: the encoded image and its text, not yet validated.
#[derive(Debug, Clone, Default)]
pub struct RawItem {
    pub key: String,
    /// Input URI and member (`s3://b/shard-0.tar#000001.jpg`).
    pub source: String,
    /// Name of the image within its source (the tar member, the manifest's path), stored as `image.path`.
    pub image_path: Option<String>,
    pub bytes: Vec<u8>,
    pub captions: Vec<String>,
    /// Metadata as JSON text.
    pub meta: Option<String>,
}

/// Why an item could not become a sample. Every item ends as exactly one sample row or one error row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    pub stage: &'static str,
    pub kind: &'static str,
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

/// A sample on its way to the sink, with whatever decoded state later stages share (decoded pixels, so nothing
/// is decoded twice). The engine never looks inside `state`.
pub struct Sample {
    pub row: SampleRow,
    pub state: Option<Box<dyn Any + Send>>,
    /// The sample's row of the `pretrain` table, when a text stage made one.
    pub pretrain: Option<PretrainRow>,
    /// The sample's rows of the `instruct` table.
    pub instruct: Vec<InstructRow>,
}

impl Sample {
    pub fn new(row: SampleRow, state: Option<Box<dyn Any + Send>>) -> Sample {
        Sample { row, state, pretrain: None, instruct: Vec::new() }
    }
}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample").field("key", &self.row.key).field("has_state", &self.state.is_some()).finish()
    }
}

/// One item in the pipeline: raw as read, a sample, or an error row. Stages map records one to one.
#[derive(Debug)]
pub enum Record {
    Raw(RawItem),
    Sample(Box<Sample>),
    Error(ErrorRow),
}

impl Record {
    pub fn error(key: &str, source: &str, error: ItemError) -> Record {
        Record::Error(error.into_row(key, source))
    }
}

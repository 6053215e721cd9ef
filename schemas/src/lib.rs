//! The Arrow schemas of every table lyrics-prep writes: the contract between stages and with the readers outside
//! (pyarrow, DuckDB, polars, Hugging Face `datasets`, trainers).
//!
//! Each table is a row type ([`SampleRow`], [`ErrorRow`], [`PretrainRow`], [`InstructRow`]) with one place that
//! turns rows into a `RecordBatch` and back. Column names are spelled once, in [`col`]; nothing else in the
//! workspace spells them. Every schema carries key-value metadata: the schema version ([`SCHEMA_VERSION`]), the
//! table name, and the Hugging Face `datasets` features, so `datasets.load_dataset("parquet", ...)` yields decoded
//! images with no extra code.
//!
//! A new table (the gallery's, embeddings) is a variant of [`Table`] with its schema function, a row type beside the
//! others with its `to_batch`/`from_batch`, and a [`TableRow`] impl; the stage that fills it declares it with
//! `lyrics_pipeline::Tables::declare`, and the engine, the manifest, `status` and `sql` need no change. Bump
//! [`SCHEMA_VERSION`] when an existing table's columns change.

mod arrays;
mod error;
mod features;
mod refined;
mod rows;
mod text;

pub use error::SchemaError;
pub use features::huggingface_features;
pub use refined::{MaskRow, ObjectRow, TagRow, object_fields, tag_fields};
pub use rows::{ErrorRow, ImageRef, SampleRow};
pub use text::{
    FORMAT_COLUMNS, FrameRow, InstructRow, PretrainRow, SpanRow, frame_fields, span_fields, turn_fields,
};

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

/// Version of the table layout, written to every file's key-value metadata under [`META_SCHEMA_VERSION`].
/// Bump it whenever a column is added, removed, renamed or retyped.
pub const SCHEMA_VERSION: &str = "3";

/// Parquet/Arrow key-value metadata key holding [`SCHEMA_VERSION`].
pub const META_SCHEMA_VERSION: &str = "lyrics.schema_version";
/// Parquet/Arrow key-value metadata key holding the table name.
pub const META_TABLE: &str = "lyrics.table";
/// Key-value metadata key the Hugging Face `datasets` library reads its features from.
pub const META_HUGGINGFACE: &str = "huggingface";

/// Column names, spelled once.
pub mod col {
    pub const KEY: &str = "key";
    pub const SOURCE: &str = "source";
    pub const IMAGE: &str = "image";
    pub const IMAGE_BYTES: &str = "bytes";
    pub const IMAGE_PATH: &str = "path";
    pub const CAPTION: &str = "caption";
    pub const CAPTIONS: &str = "captions";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const FORMAT: &str = "format";
    pub const SHA256: &str = "sha256";
    pub const META: &str = "meta";
    pub const STAGE: &str = "stage";
    pub const KIND: &str = "kind";
    pub const ERROR: &str = "error";
    /// Name of the child field of list columns, as pyarrow writes it.
    pub const LIST_ITEM: &str = "item";
    pub const TAGS: &str = "tags";
    pub const TAG: &str = "tag";
    pub const SCORE: &str = "score";
    pub const OBJECTS: &str = "objects";
    pub const LABEL: &str = "label";
    pub const PHRASE: &str = "phrase";
    pub const BOX: &str = "box";
    pub const MASK: &str = "mask";
    pub const MASK_SIZE: &str = "size";
    pub const MASK_COUNTS: &str = "counts";
    pub const MASK_AREA: &str = "mask_area";
    pub const MASK_SCORE: &str = "mask_score";
    pub const REFINER: &str = "refiner";
    pub const FRAMES: &str = "frames";
    pub const GROUNDED_CAPTION: &str = "grounded_caption";
    pub const CAPTION_SPANS: &str = "caption_spans";
    pub const START: &str = "start";
    pub const END: &str = "end";
    pub const ID: &str = "id";
    pub const TASK: &str = "task";
    pub const LANGUAGE: &str = "language";
    pub const CONVERSATIONS: &str = "conversations";
    pub const TEMPLATE: &str = "template";
    pub const REFS: &str = "refs";
    pub const BOXES: &str = "boxes";
    pub const FROM: &str = "from";
    pub const VALUE: &str = "value";
}

/// The tables a job writes, each under `<output>/<name>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// One row per accepted input item.
    Samples,
    /// One row per rejected input item, naming the item, the stage and the cause.
    Errors,
    /// One row per refined sample: the grounded text formats for pre-training.
    Pretrain,
    /// One row per instruction conversation (LLaVA/ShareGPT) for fine-tuning.
    Instruct,
}

impl Table {
    /// Every table, in the order they are listed and registered.
    pub const ALL: [Table; 4] = [Table::Samples, Table::Errors, Table::Pretrain, Table::Instruct];

    /// The table's name: its folder under the output and its `lyrics.table` metadata.
    pub fn name(self) -> &'static str {
        match self {
            Table::Samples => "samples",
            Table::Errors => "errors",
            Table::Pretrain => "pretrain",
            Table::Instruct => "instruct",
        }
    }

    /// The table named `name` (as [`Table::name`] spells it).
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The table's Arrow schema, metadata included.
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Samples => sample_schema(),
            Table::Errors => error_schema(),
            Table::Pretrain => pretrain_schema(),
            Table::Instruct => instruct_schema(),
        }
    }
}

/// A row type with a table of its own: how the sink turns rows into Arrow batches, and how it sizes shards.
/// Implemented once per table, beside the table's schema; the engine writes any table whose row type has it.
pub trait TableRow: Sized + Send + 'static {
    /// The table the rows belong to.
    const TABLE: Table;
    /// The rows as one batch of [`Table::schema`].
    fn to_batch(rows: &[Self]) -> Result<arrow::array::RecordBatch, SchemaError>;
    /// An estimate of the row's size in memory, for shard and row-group sizing.
    fn approx_bytes(&self) -> usize;
}

macro_rules! table_row {
    ($row:ty, $table:expr) => {
        impl TableRow for $row {
            const TABLE: Table = $table;
            fn to_batch(rows: &[Self]) -> Result<arrow::array::RecordBatch, SchemaError> {
                <$row>::to_batch(rows)
            }
            fn approx_bytes(&self) -> usize {
                <$row>::approx_bytes(self)
            }
        }
    };
}

table_row!(SampleRow, Table::Samples);
table_row!(ErrorRow, Table::Errors);
table_row!(PretrainRow, Table::Pretrain);
table_row!(InstructRow, Table::Instruct);

/// The `image` struct: the Hugging Face `datasets` Image convention (`bytes`, `path`).
pub fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new(col::IMAGE_BYTES, DataType::Binary, true),
        Field::new(col::IMAGE_PATH, DataType::Utf8, true),
    ])
}

fn float_list() -> DataType {
    DataType::List(Arc::new(Field::new(col::LIST_ITEM, DataType::Float32, true)))
}

fn utf8_list() -> DataType {
    DataType::List(Arc::new(Field::new(col::LIST_ITEM, DataType::Utf8, true)))
}

fn with_metadata(table: Table, fields: Vec<Field>) -> SchemaRef {
    let features = huggingface_features(&fields);
    let metadata = HashMap::from([
        (META_SCHEMA_VERSION.to_string(), SCHEMA_VERSION.to_string()),
        (META_TABLE.to_string(), table.name().to_string()),
        (META_HUGGINGFACE.to_string(), features),
    ]);
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// Schema of the `samples` table.
pub fn sample_schema() -> SchemaRef {
    with_metadata(
        Table::Samples,
        vec![
            required_text(col::KEY),
            required_text(col::SOURCE),
            Field::new(col::IMAGE, DataType::Struct(image_fields()), true),
            Field::new(col::CAPTION, DataType::Utf8, true),
            Field::new(col::CAPTIONS, utf8_list(), true),
            Field::new(col::WIDTH, DataType::Int32, false),
            Field::new(col::HEIGHT, DataType::Int32, false),
            required_text(col::FORMAT),
            required_text(col::SHA256),
            Field::new(col::META, DataType::Utf8, true),
            struct_list(col::TAGS, tag_fields()),
            struct_list(col::OBJECTS, object_fields()),
            Field::new(col::REFINER, DataType::Utf8, true),
        ],
    )
}

/// A nullable list of structs of `fields`, as pyarrow names list items.
fn struct_list(name: &str, fields: Fields) -> Field {
    Field::new(name, DataType::List(Arc::new(Field::new(col::LIST_ITEM, DataType::Struct(fields), true))), true)
}

fn required_text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

/// Schema of the `pretrain` table.
pub fn pretrain_schema() -> SchemaRef {
    with_metadata(
        Table::Pretrain,
        vec![
            required_text(col::KEY),
            Field::new(col::IMAGE, DataType::Struct(image_fields()), true),
            utf8(col::CAPTION),
        ]
        .into_iter()
        .chain(FORMAT_COLUMNS.iter().map(|name| utf8(name)))
        .chain([
            struct_list(col::FRAMES, frame_fields()),
            utf8(col::GROUNDED_CAPTION),
            struct_list(col::CAPTION_SPANS, span_fields()),
            struct_list(col::OBJECTS, object_fields()),
        ])
        .collect(),
    )
}

/// Schema of the `instruct` table.
pub fn instruct_schema() -> SchemaRef {
    with_metadata(
        Table::Instruct,
        vec![
            required_text(col::ID),
            required_text(col::KEY),
            required_text(col::IMAGE),
            required_text(col::TASK),
            required_text(col::LANGUAGE),
            struct_list(col::CONVERSATIONS, turn_fields()),
            Field::new(col::TEMPLATE, utf8_list(), true),
            Field::new(col::REFS, utf8_list(), true),
            Field::new(col::BOXES, DataType::List(Arc::new(Field::new(col::LIST_ITEM, float_list(), true))), true),
        ],
    )
}

/// Schema of the `errors` table.
pub fn error_schema() -> SchemaRef {
    with_metadata(
        Table::Errors,
        vec![
            required_text(col::KEY),
            required_text(col::SOURCE),
            required_text(col::STAGE),
            required_text(col::KIND),
            required_text(col::ERROR),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_carries_version_name_and_features() {
        for table in Table::ALL {
            let schema = table.schema();
            assert_eq!(schema.metadata()[META_SCHEMA_VERSION], SCHEMA_VERSION);
            assert_eq!(schema.metadata()[META_TABLE], table.name());
            let features: serde_json::Value = serde_json::from_str(&schema.metadata()[META_HUGGINGFACE]).unwrap();
            let described = features["info"]["features"].as_object().unwrap();
            assert_eq!(described.len(), schema.fields().len());
            assert_eq!(Table::from_name(table.name()), Some(table));
        }
    }

    #[test]
    fn image_column_is_a_datasets_image() {
        let schema = sample_schema();
        let features: serde_json::Value = serde_json::from_str(&schema.metadata()[META_HUGGINGFACE]).unwrap();
        assert_eq!(features["info"]["features"]["image"]["_type"], "Image");
        assert_eq!(features["info"]["features"]["captions"]["_type"], "Sequence");
    }
}

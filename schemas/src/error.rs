//! Errors of converting between rows and Arrow batches.

use arrow::datatypes::DataType;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("column `{0}` is missing")]
    MissingColumn(String),
    #[error("column `{name}` has type {found}, which this table does not use there")]
    ColumnType { name: String, found: String },
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

impl SchemaError {
    pub(crate) fn column_type(name: &str, found: &DataType) -> Self {
        SchemaError::ColumnType { name: name.to_string(), found: found.to_string() }
    }
}

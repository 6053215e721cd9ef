//! Errors of converting between rows and Arrow batches.

use arrow::datatypes::DataType;

/// Why rows could not be built from a batch, or a batch from rows.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A column the table needs is not in the batch.
    #[error("column `{0}` is missing")]
    MissingColumn(String),
    /// A column has a type other than the table's.
    #[error("column `{name}` has type {found}, which this table does not use there")]
    ColumnType { name: String, found: String },
    /// Arrow refused to build or cast an array.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

impl SchemaError {
    pub(crate) fn column_type(name: &str, found: &DataType) -> Self {
        SchemaError::ColumnType { name: name.to_string(), found: found.to_string() }
    }
}

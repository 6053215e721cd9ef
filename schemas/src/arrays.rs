//! Column readers shared by the row types of every table: a named column of a batch, and a string column as
//! owned values, whatever Arrow string layout a reader chose.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;

use crate::SchemaError;

pub(crate) fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, SchemaError> {
    batch.column_by_name(name).ok_or_else(|| SchemaError::MissingColumn(name.to_string()))
}

pub(crate) fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, SchemaError> {
    strings_of(Some(column(batch, name)?), name)
}

pub(crate) fn strings_of(array: Option<&ArrayRef>, name: &str) -> Result<Vec<Option<String>>, SchemaError> {
    let array = array.ok_or_else(|| SchemaError::MissingColumn(name.to_string()))?;
    let out = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(|v| v.map(str::to_string)).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(|v| v.map(str::to_string)).collect(),
        other => return Err(SchemaError::column_type(name, other)),
    };
    Ok(out)
}

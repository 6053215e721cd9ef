//! Hugging Face `datasets` features metadata, derived from an Arrow schema.
//!
//! `datasets` reads the `huggingface` key of a Parquet file's metadata to know that a struct of `bytes` and `path`
//! is an Image to decode. The JSON spellings chosen here (`Sequence` for lists of scalars, a one-element JSON list
//! for lists of structs) are understood by `datasets` 2.x through 5.x.

use arrow::datatypes::{DataType, Field};
use serde_json::{Map, Value, json};

use crate::col;

/// The `huggingface` metadata value for a table made of `fields`.
pub fn huggingface_features(fields: &[Field]) -> String {
    let mut features = Map::new();
    for field in fields {
        features.insert(field.name().clone(), feature_of(field));
    }
    json!({ "info": { "features": features } }).to_string()
}

fn feature_of(field: &Field) -> Value {
    if is_image_struct(field.data_type()) {
        return json!({ "_type": "Image" });
    }
    feature_of_type(field.data_type())
}

fn is_image_struct(data_type: &DataType) -> bool {
    match data_type {
        DataType::Struct(children) => {
            children.len() == 2 && children[0].name() == col::IMAGE_BYTES && children[1].name() == col::IMAGE_PATH
        }
        _ => false,
    }
}

fn feature_of_type(data_type: &DataType) -> Value {
    match data_type {
        DataType::List(item) | DataType::LargeList(item) => match item.data_type() {
            DataType::Struct(_) => Value::Array(vec![feature_of_type(item.data_type())]),
            other => json!({ "feature": feature_of_type(other), "_type": "Sequence" }),
        },
        DataType::FixedSizeList(item, len) => {
            json!({ "feature": feature_of_type(item.data_type()), "length": len, "_type": "Sequence" })
        }
        DataType::Struct(children) => {
            let mut map = Map::new();
            for child in children {
                map.insert(child.name().clone(), feature_of(child));
            }
            Value::Object(map)
        }
        scalar => json!({ "dtype": dtype_name(scalar), "_type": "Value" }),
    }
}

fn dtype_name(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Boolean => "bool",
        DataType::Int8 => "int8",
        DataType::Int16 => "int16",
        DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::UInt8 => "uint8",
        DataType::UInt16 => "uint16",
        DataType::UInt32 => "uint32",
        DataType::UInt64 => "uint64",
        DataType::Float16 => "float16",
        DataType::Float32 => "float32",
        DataType::Float64 => "float64",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary",
        DataType::LargeUtf8 => "large_string",
        _ => "string",
    }
}

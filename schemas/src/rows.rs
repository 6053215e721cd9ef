//! Row types and their one conversion to and from Arrow `RecordBatch`es.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Int32Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    StructArray,
};
use arrow::datatypes::{DataType, Int32Type};

use crate::arrays::{column, strings, strings_of};
use crate::refined::{objects_array, objects_from, tags_array, tags_from};
use crate::{ObjectRow, SchemaError, TagRow, col, error_schema, image_fields, sample_schema};

/// An image as stored: its encoded bytes, and the path it came from (the Hugging Face `datasets` Image struct).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRef {
    pub bytes: Option<Vec<u8>>,
    pub path: Option<String>,
}

/// One accepted input item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SampleRow {
    /// Stable key, unique within the corpus (the WebDataset `__key__`, a manifest key, a file stem...).
    pub key: String,
    /// Where the item came from: the input URI, and the member within it after a `#`.
    pub source: String,
    pub image: ImageRef,
    /// The first caption, if any.
    pub caption: Option<String>,
    /// Every caption of the item (COCO has several per image), in input order.
    pub captions: Vec<String>,
    /// Width and height of the stored image as displayed (EXIF orientation applied).
    pub width: i32,
    pub height: i32,
    /// Format of the stored image bytes: `jpeg`, `png`, `webp`, `gif`, `bmp`.
    pub format: String,
    /// Hex SHA-256 of the input image bytes as read, before any re-encoding.
    pub sha256: String,
    /// Item metadata as JSON text (the WebDataset `.json` member, extra manifest columns).
    pub meta: Option<String>,
    /// The refiner's tags, objects and description; `None` when the job ran no models.
    pub tags: Option<Vec<TagRow>>,
    /// The detected objects, best score first.
    pub objects: Option<Vec<ObjectRow>>,
    /// JSON naming every model, its file's checksum and its thresholds.
    pub refiner: Option<String>,
}

/// One rejected input item: which item, which stage rejected it, and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorRow {
    pub key: String,
    pub source: String,
    /// The stage that rejected the item: `read`, `decode`, ...
    pub stage: String,
    /// A short machine-readable cause (`truncated`, `bomb`, `not_an_image`, ...), for counting errors by kind.
    pub kind: String,
    /// A human-readable message naming the item and the cause.
    pub error: String,
}

impl SampleRow {
    /// Bytes the row adds to a shard before compression: what shard size limits count.
    pub fn approx_bytes(&self) -> usize {
        self.key.len()
            + self.source.len()
            + self.image.bytes.as_ref().map_or(0, Vec::len)
            + self.image.path.as_ref().map_or(0, String::len)
            + self.caption.as_ref().map_or(0, String::len)
            + self.captions.iter().map(String::len).sum::<usize>()
            + self.meta.as_ref().map_or(0, String::len)
            + self.format.len()
            + self.sha256.len()
            + self.refiner.as_ref().map_or(0, String::len)
            + self.tags.as_ref().map_or(0, |t| t.iter().map(|t| t.tag.len() + 4).sum())
            + self.objects.as_ref().map_or(0, |o| {
                o.iter()
                    .map(|o| o.label.len() + o.phrase.len() + o.mask.as_ref().map_or(0, |m| m.counts.len()) + 40)
                    .sum()
            })
            + 8
    }

    /// The `samples` table for `rows`.
    pub fn to_batch(rows: &[SampleRow]) -> Result<RecordBatch, SchemaError> {
        let key = StringArray::from_iter_values(rows.iter().map(|r| &r.key));
        let source = StringArray::from_iter_values(rows.iter().map(|r| &r.source));
        let image = image_array(rows.iter().map(|r| &r.image));
        let caption: StringArray = rows.iter().map(|r| r.caption.as_deref()).collect();
        let mut captions = ListBuilder::new(StringBuilder::new())
            .with_field(Arc::new(arrow::datatypes::Field::new(col::LIST_ITEM, DataType::Utf8, true)));
        for row in rows {
            for c in &row.captions {
                captions.values().append_value(c);
            }
            captions.append(true);
        }
        let width = Int32Array::from_iter_values(rows.iter().map(|r| r.width));
        let height = Int32Array::from_iter_values(rows.iter().map(|r| r.height));
        let format = StringArray::from_iter_values(rows.iter().map(|r| &r.format));
        let sha = StringArray::from_iter_values(rows.iter().map(|r| &r.sha256));
        let meta: StringArray = rows.iter().map(|r| r.meta.as_deref()).collect();
        let tags: Vec<Option<&Vec<TagRow>>> = rows.iter().map(|r| r.tags.as_ref()).collect();
        let objects: Vec<Option<&Vec<ObjectRow>>> = rows.iter().map(|r| r.objects.as_ref()).collect();
        let refiner: StringArray = rows.iter().map(|r| r.refiner.as_deref()).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(key),
            Arc::new(source),
            Arc::new(image),
            Arc::new(caption),
            Arc::new(captions.finish()),
            Arc::new(width),
            Arc::new(height),
            Arc::new(format),
            Arc::new(sha),
            Arc::new(meta),
            tags_array(&tags),
            objects_array(&objects),
            Arc::new(refiner),
        ];
        Ok(RecordBatch::try_new(sample_schema(), columns)?)
    }

    /// Rows of a `samples` batch, as read back by any reader (view types and large types accepted).
    pub fn from_batch(batch: &RecordBatch) -> Result<Vec<SampleRow>, SchemaError> {
        let key = strings(batch, col::KEY)?;
        let source = strings(batch, col::SOURCE)?;
        let image = column(batch, col::IMAGE)?;
        let image = image.as_struct_opt().ok_or_else(|| SchemaError::column_type(col::IMAGE, image.data_type()))?;
        let image_bytes = binaries(image.column_by_name(col::IMAGE_BYTES), col::IMAGE_BYTES)?;
        let image_path = strings_of(image.column_by_name(col::IMAGE_PATH), col::IMAGE_PATH)?;
        let caption = strings(batch, col::CAPTION)?;
        let captions = column(batch, col::CAPTIONS)?;
        let captions = captions
            .as_list_opt::<i32>()
            .ok_or_else(|| SchemaError::column_type(col::CAPTIONS, captions.data_type()))?;
        let width = ints(batch, col::WIDTH)?;
        let height = ints(batch, col::HEIGHT)?;
        let format = strings(batch, col::FORMAT)?;
        let sha = strings(batch, col::SHA256)?;
        let meta = strings(batch, col::META)?;
        let n = batch.num_rows();
        // Files written without the refiner's columns read as unrefined.
        let tags = batch.column_by_name(col::TAGS).map(tags_from).transpose()?.unwrap_or_else(|| vec![None; n]);
        let objects =
            batch.column_by_name(col::OBJECTS).map(objects_from).transpose()?.unwrap_or_else(|| vec![None; n]);
        let refiner = match batch.column_by_name(col::REFINER) {
            Some(_) => strings(batch, col::REFINER)?,
            None => vec![None; n],
        };
        let mut rows = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let caps = if captions.is_null(i) {
                Vec::new()
            } else {
                strings_of(Some(&captions.value(i)), col::CAPTIONS)?.into_iter().flatten().collect()
            };
            rows.push(SampleRow {
                key: key[i].clone().unwrap_or_default(),
                source: source[i].clone().unwrap_or_default(),
                image: if image.is_null(i) {
                    ImageRef::default()
                } else {
                    ImageRef { bytes: image_bytes[i].clone(), path: image_path[i].clone() }
                },
                caption: caption[i].clone(),
                captions: caps,
                width: width[i],
                height: height[i],
                format: format[i].clone().unwrap_or_default(),
                sha256: sha[i].clone().unwrap_or_default(),
                meta: meta[i].clone(),
                tags: tags[i].clone(),
                objects: objects[i].clone(),
                refiner: refiner[i].clone(),
            });
        }
        Ok(rows)
    }
}

/// The `image` column of a batch as image references.
pub(crate) fn image_refs(batch: &RecordBatch) -> Result<Vec<ImageRef>, SchemaError> {
    let image = column(batch, col::IMAGE)?;
    let image = image.as_struct_opt().ok_or_else(|| SchemaError::column_type(col::IMAGE, image.data_type()))?;
    let bytes = binaries(image.column_by_name(col::IMAGE_BYTES), col::IMAGE_BYTES)?;
    let paths = strings_of(image.column_by_name(col::IMAGE_PATH), col::IMAGE_PATH)?;
    Ok((0..image.len())
        .map(|i| {
            if image.is_null(i) {
                ImageRef::default()
            } else {
                ImageRef { bytes: bytes[i].clone(), path: paths[i].clone() }
            }
        })
        .collect())
}

impl ErrorRow {
    /// Bytes the row adds to a shard before compression.
    pub fn approx_bytes(&self) -> usize {
        self.key.len() + self.source.len() + self.stage.len() + self.kind.len() + self.error.len()
    }

    /// The `errors` table for `rows`.
    pub fn to_batch(rows: &[ErrorRow]) -> Result<RecordBatch, SchemaError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.key))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.source))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.stage))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.kind))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.error))),
        ];
        Ok(RecordBatch::try_new(error_schema(), columns)?)
    }

    /// The rows of an `errors` batch.
    pub fn from_batch(batch: &RecordBatch) -> Result<Vec<ErrorRow>, SchemaError> {
        let key = strings(batch, col::KEY)?;
        let source = strings(batch, col::SOURCE)?;
        let stage = strings(batch, col::STAGE)?;
        let kind = strings(batch, col::KIND)?;
        let error = strings(batch, col::ERROR)?;
        Ok((0..batch.num_rows())
            .map(|i| ErrorRow {
                key: key[i].clone().unwrap_or_default(),
                source: source[i].clone().unwrap_or_default(),
                stage: stage[i].clone().unwrap_or_default(),
                kind: kind[i].clone().unwrap_or_default(),
                error: error[i].clone().unwrap_or_default(),
            })
            .collect())
    }
}

pub(crate) fn image_array<'a>(images: impl Iterator<Item = &'a ImageRef>) -> StructArray {
    let mut bytes = BinaryBuilder::new();
    let mut path = StringBuilder::new();
    for image in images {
        bytes.append_option(image.bytes.as_deref());
        path.append_option(image.path.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(bytes.finish()), Arc::new(path.finish())];
    StructArray::new(image_fields(), columns, None)
}

fn binaries(array: Option<&ArrayRef>, name: &str) -> Result<Vec<Option<Vec<u8>>>, SchemaError> {
    let array = array.ok_or_else(|| SchemaError::MissingColumn(name.to_string()))?;
    let out = match array.data_type() {
        DataType::Binary => array.as_binary::<i32>().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
        DataType::LargeBinary => array.as_binary::<i64>().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
        DataType::BinaryView => array.as_binary_view().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
        other => return Err(SchemaError::column_type(name, other)),
    };
    Ok(out)
}

fn ints(batch: &RecordBatch, name: &str) -> Result<Vec<i32>, SchemaError> {
    let array = column(batch, name)?;
    let ints =
        array.as_primitive_opt::<Int32Type>().ok_or_else(|| SchemaError::column_type(name, array.data_type()))?;
    Ok(ints.iter().map(|v| v.unwrap_or_default()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MaskRow;

    fn sample(i: usize) -> SampleRow {
        SampleRow {
            key: format!("k{i}"),
            source: "file:///c/shard.tar#k.jpg".into(),
            image: ImageRef { bytes: Some(vec![i as u8; 3]), path: Some(format!("k{i}.jpg")) },
            caption: i.is_multiple_of(2).then(|| "a dog".to_string()),
            captions: if i.is_multiple_of(2) { vec!["a dog".into(), "un chien".into()] } else { vec![] },
            width: 640,
            height: 480,
            format: "jpeg".into(),
            sha256: "ab".repeat(32),
            meta: Some("{\"a\":1}".into()),
            tags: (!i.is_multiple_of(3))
                .then(|| vec![TagRow { tag: "dog".into(), score: 0.9 }, TagRow { tag: "red".into(), score: 0.7 }]),
            objects: (!i.is_multiple_of(3)).then(|| {
                (0..i)
                    .map(|j| ObjectRow {
                        label: "dog".into(),
                        phrase: "dog".into(),
                        score: 0.5 + j as f32 / 100.0,
                        bbox: [0.1, 0.2, 0.3 + j as f32 / 100.0, 0.9],
                        mask: j.is_multiple_of(2).then(|| MaskRow { size: [48, 64], counts: "PT3".into() }),
                        mask_area: j.is_multiple_of(2).then_some(12),
                        mask_score: j.is_multiple_of(2).then_some(0.8),
                    })
                    .collect()
            }),
            refiner: (!i.is_multiple_of(3)).then(|| "{}".to_string()),
        }
    }

    #[test]
    fn samples_round_trip() {
        let rows: Vec<_> = (0..5).map(sample).collect();
        let batch = SampleRow::to_batch(&rows).unwrap();
        assert_eq!(batch.num_rows(), 5);
        assert_eq!(SampleRow::from_batch(&batch).unwrap(), rows);
    }

    #[test]
    fn errors_round_trip() {
        let rows = vec![ErrorRow {
            key: "x".into(),
            source: "s".into(),
            stage: "decode".into(),
            kind: "truncated".into(),
            error: "x: truncated".into(),
        }];
        let batch = ErrorRow::to_batch(&rows).unwrap();
        assert_eq!(ErrorRow::from_batch(&batch).unwrap(), rows);
    }

    #[test]
    fn missing_column_is_named() {
        let batch = ErrorRow::to_batch(&[]).unwrap();
        let err = SampleRow::from_batch(&batch).unwrap_err();
        assert!(err.to_string().contains("image"), "{err}");
    }
}

//! The refiner's columns of the `samples` table: `tags`, `objects` (box normalized to `[0, 1]` of the displayed
//! image, mask as COCO compressed RLE) and `refiner` (JSON naming the models, their checksums and thresholds).
//! All are null on rows of a job run without models.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int32Array, Int64Array, ListArray, StringArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Float32Type, Int32Type, Int64Type};

use crate::arrays::strings_of;
use crate::{SchemaError, col};

/// One tag of the `tags` column: a RAM tag and its score in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TagRow {
    pub tag: String,
    pub score: f32,
}

/// A COCO compressed RLE mask: `size` is `[height, width]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskRow {
    pub size: [i32; 2],
    pub counts: String,
}

/// One detected object of the `objects` column: its phrase and the tag it maps to, its box, and its mask.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    /// The tag the detected phrase maps back to.
    pub label: String,
    /// The phrase the detector's tokens decode to.
    pub phrase: String,
    /// The detector's score in `[0, 1]` (the best token's sigmoid).
    pub score: f32,
    /// `[x1, y1, x2, y2]`, fractions of the displayed image's width and height.
    pub bbox: [f32; 4],
    /// The segmenter's mask at the displayed image's size; `None` without a segmenter.
    pub mask: Option<MaskRow>,
    /// Foreground pixels of `mask`.
    pub mask_area: Option<i64>,
    /// The segmenter's confidence in `mask` (SAM's predicted IoU, ISNet's mean probability).
    pub mask_score: Option<f32>,
}

fn item(data_type: DataType) -> Arc<Field> {
    Arc::new(Field::new(col::LIST_ITEM, data_type, true))
}

/// The struct fields of one `tags` item.
pub fn tag_fields() -> Fields {
    Fields::from(vec![
        Field::new(col::TAG, DataType::Utf8, false),
        Field::new(col::SCORE, DataType::Float32, false),
    ])
}

fn mask_fields() -> Fields {
    Fields::from(vec![
        Field::new(col::MASK_SIZE, DataType::List(item(DataType::Int32)), false),
        Field::new(col::MASK_COUNTS, DataType::Utf8, false),
    ])
}

/// The struct fields of one `objects` item (also the `objects` of `pretrain`).
pub fn object_fields() -> Fields {
    Fields::from(vec![
        Field::new(col::LABEL, DataType::Utf8, false),
        Field::new(col::PHRASE, DataType::Utf8, false),
        Field::new(col::SCORE, DataType::Float32, false),
        Field::new(col::BOX, DataType::List(item(DataType::Float32)), false),
        Field::new(col::MASK, DataType::Struct(mask_fields()), true),
        Field::new(col::MASK_AREA, DataType::Int64, true),
        Field::new(col::MASK_SCORE, DataType::Float32, true),
    ])
}

fn offsets<T>(lists: &[Option<&Vec<T>>]) -> OffsetBuffer<i32> {
    OffsetBuffer::from_lengths(lists.iter().map(|l| l.map_or(0, |v| v.len())))
}

fn validity<T>(lists: &[Option<&T>]) -> Option<NullBuffer> {
    let valid: Vec<bool> = lists.iter().map(Option::is_some).collect();
    valid.iter().any(|v| !v).then(|| NullBuffer::from(valid))
}

/// A list of fixed-length numeric lists (boxes, mask sizes).
fn fixed_lists<const N: usize, A: Array + 'static>(values: A, count: usize, item_type: DataType) -> ArrayRef {
    Arc::new(ListArray::new(
        item(item_type),
        OffsetBuffer::from_lengths(std::iter::repeat_n(N, count)),
        Arc::new(values),
        None,
    ))
}

/// The `tags` column of `rows` (one entry per sample; `None` when not refined).
pub fn tags_array(rows: &[Option<&Vec<TagRow>>]) -> ArrayRef {
    let flat: Vec<&TagRow> = rows.iter().flatten().flat_map(|v| v.iter()).collect();
    let values = StructArray::new(
        tag_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(flat.iter().map(|t| &t.tag))) as ArrayRef,
            Arc::new(Float32Array::from_iter_values(flat.iter().map(|t| t.score))),
        ],
        None,
    );
    Arc::new(ListArray::new(item(DataType::Struct(tag_fields())), offsets(rows), Arc::new(values), validity(rows)))
}

/// The `objects` column of `rows`.
pub fn objects_array(rows: &[Option<&Vec<ObjectRow>>]) -> ArrayRef {
    let flat: Vec<&ObjectRow> = rows.iter().flatten().flat_map(|v| v.iter()).collect();
    let n = flat.len();
    let boxes = Float32Array::from_iter_values(flat.iter().flat_map(|o| o.bbox));
    let masks: Vec<Option<&MaskRow>> = flat.iter().map(|o| o.mask.as_ref()).collect();
    let sizes = Int32Array::from_iter_values(masks.iter().flat_map(|m| m.map_or([0, 0], |m| m.size)));
    let counts = StringArray::from_iter_values(masks.iter().map(|m| m.map_or("", |m| m.counts.as_str())));
    let mask = StructArray::new(
        mask_fields(),
        vec![fixed_lists::<2, _>(sizes, n, DataType::Int32), Arc::new(counts) as ArrayRef],
        validity(&masks),
    );
    let values = StructArray::new(
        object_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(flat.iter().map(|o| &o.label))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(flat.iter().map(|o| &o.phrase))),
            Arc::new(Float32Array::from_iter_values(flat.iter().map(|o| o.score))),
            fixed_lists::<4, _>(boxes, n, DataType::Float32),
            Arc::new(mask),
            Arc::new(flat.iter().map(|o| o.mask_area).collect::<Int64Array>()),
            Arc::new(flat.iter().map(|o| o.mask_score).collect::<Float32Array>()),
        ],
        None,
    );
    Arc::new(ListArray::new(
        item(DataType::Struct(object_fields())),
        offsets(rows),
        Arc::new(values),
        validity(rows),
    ))
}

fn child<'a>(s: &'a StructArray, name: &str) -> Result<&'a ArrayRef, SchemaError> {
    s.column_by_name(name).ok_or_else(|| SchemaError::MissingColumn(name.to_string()))
}

/// A string child of a struct, nulls read as empty strings.
fn strings_at(s: &StructArray, name: &str) -> Result<Vec<String>, SchemaError> {
    Ok(strings_of(s.column_by_name(name), name)?.into_iter().map(Option::unwrap_or_default).collect())
}

/// Each row of a `list<struct>` column as its struct array; `None` where the row is null.
pub(crate) fn struct_rows(array: &ArrayRef, name: &str) -> Result<Vec<Option<StructArray>>, SchemaError> {
    let list = array.as_list_opt::<i32>().ok_or_else(|| SchemaError::column_type(name, array.data_type()))?;
    (0..list.len())
        .map(|i| {
            if list.is_null(i) {
                return Ok(None);
            }
            let value = list.value(i);
            let s = value.as_struct_opt().ok_or_else(|| SchemaError::column_type(name, value.data_type()))?;
            Ok(Some(s.clone()))
        })
        .collect()
}

/// The `box` child of a struct: a `list<float32>` of `[x1, y1, x2, y2]` per entry, missing corners read as 0.
pub(crate) fn boxes_at(s: &StructArray) -> Result<Vec<[f32; 4]>, SchemaError> {
    let boxes = child(s, col::BOX)?;
    let boxes = boxes.as_list_opt::<i32>().ok_or_else(|| SchemaError::column_type(col::BOX, boxes.data_type()))?;
    (0..boxes.len()).map(|j| corners(&boxes.value(j), col::BOX)).collect()
}

/// One `list<float32>` box of column `name` as `[x1, y1, x2, y2]`, missing corners read as 0.
pub(crate) fn corners(b: &ArrayRef, name: &str) -> Result<[f32; 4], SchemaError> {
    let b = b.as_primitive_opt::<Float32Type>().ok_or_else(|| SchemaError::column_type(name, b.data_type()))?;
    Ok([0, 1, 2, 3].map(|k| if k < b.len() { b.value(k) } else { 0.0 }))
}

fn floats_at(a: &ArrayRef, name: &str) -> Result<Vec<Option<f32>>, SchemaError> {
    let f = a.as_primitive_opt::<Float32Type>().ok_or_else(|| SchemaError::column_type(name, a.data_type()))?;
    Ok(f.iter().collect())
}

/// The `tags` column read back.
pub fn tags_from(array: &ArrayRef) -> Result<Vec<Option<Vec<TagRow>>>, SchemaError> {
    struct_rows(array, col::TAGS)?
        .into_iter()
        .map(|s| {
            let Some(s) = s else { return Ok(None) };
            let tags = strings_at(&s, col::TAG)?;
            let scores = floats_at(child(&s, col::SCORE)?, col::SCORE)?;
            Ok(Some(
                tags.into_iter()
                    .zip(scores)
                    .map(|(tag, score)| TagRow { tag, score: score.unwrap_or_default() })
                    .collect(),
            ))
        })
        .collect()
}

/// The `objects` column read back.
pub fn objects_from(array: &ArrayRef) -> Result<Vec<Option<Vec<ObjectRow>>>, SchemaError> {
    struct_rows(array, col::OBJECTS)?.into_iter().map(|s| s.as_ref().map(objects_of).transpose()).collect()
}

/// The objects of one row.
fn objects_of(s: &StructArray) -> Result<Vec<ObjectRow>, SchemaError> {
    let labels = strings_at(s, col::LABEL)?;
    let phrases = strings_at(s, col::PHRASE)?;
    let scores = floats_at(child(s, col::SCORE)?, col::SCORE)?;
    let boxes = boxes_at(s)?;
    let mask =
        child(s, col::MASK)?.as_struct_opt().ok_or_else(|| SchemaError::column_type(col::MASK, s.data_type()))?;
    let sizes = child(mask, col::MASK_SIZE)?
        .as_list_opt::<i32>()
        .ok_or_else(|| SchemaError::column_type(col::MASK_SIZE, mask.data_type()))?;
    let counts = strings_at(mask, col::MASK_COUNTS)?;
    let areas = child(s, col::MASK_AREA)?;
    let areas = areas
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| SchemaError::column_type(col::MASK_AREA, areas.data_type()))?;
    let mask_scores = floats_at(child(s, col::MASK_SCORE)?, col::MASK_SCORE)?;
    let mut objects = Vec::with_capacity(s.len());
    for (j, bbox) in boxes.into_iter().enumerate() {
        let mask = if mask.is_null(j) {
            None
        } else {
            let size = sizes.value(j);
            let size = size
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| SchemaError::column_type(col::MASK_SIZE, size.data_type()))?;
            Some(MaskRow {
                size: [0, 1].map(|k| if k < size.len() { size.value(k) } else { 0 }),
                counts: counts[j].clone(),
            })
        };
        objects.push(ObjectRow {
            label: labels[j].clone(),
            phrase: phrases[j].clone(),
            score: scores[j].unwrap_or_default(),
            bbox,
            mask,
            mask_area: (!areas.is_null(j)).then(|| areas.value(j)),
            mask_score: mask_scores[j],
        });
    }
    Ok(objects)
}

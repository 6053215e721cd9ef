//! The tables of grounded text: `pretrain` (one row per refined sample: a column per grounded format, the frames
//! of the formats not measured on the displayed image, the grounded caption and its GRIT-style spans, the objects) and `instruct` (one row per LLaVA/ShareGPT conversation).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int32Array, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Int32Type};

use crate::arrays::{column, strings, strings_of};
use crate::refined::{boxes_at, corners, objects_array, objects_from, struct_rows};
use crate::rows::{image_array, image_refs};
use crate::{ImageRef, ObjectRow, SchemaError, col, instruct_schema, pretrain_schema};

/// A caption span grounded by one box (GRIT's `ref_exps` entry): character offsets `[start, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRow {
    pub start: i32,
    pub end: i32,
    pub phrase: String,
    pub bbox: [f32; 4],
}

/// The grounded formats' columns of `pretrain`, in order: the names of the text stage's format registry, which
/// checks that the two lists agree.
pub const FORMAT_COLUMNS: &[&str] = &[
    "lyrics",
    "qwen",
    "kosmos2",
    "shikra",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "internvl",
    "minigpt_v2",
    "paligemma",
    "florence2",
    "llava",
    "ferret",
];

/// The frame a format's boxes are measured in, when it is not the displayed image: its size in pixels, so a reader
/// can map the boxes back (a padded square's side, a resized image's width and height).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRow {
    pub format: String,
    pub width: i32,
    pub height: i32,
}

/// One row of `pretrain`: a refined sample's caption in each grounded format, the caption with boxes inline, its grounded spans and the objects.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PretrainRow {
    pub key: String,
    pub image: ImageRef,
    pub caption: Option<String>,
    /// `(format, text)`: the objects (and for `lyrics` the caption) in each enabled format, in the order of
    /// [`FORMAT_COLUMNS`]; a format left out is null in its column.
    pub formats: Vec<(String, String)>,
    /// The frames of the enabled formats that are not measured on the displayed image.
    pub frames: Vec<FrameRow>,
    /// The caption with boxes inline after the spans they ground.
    pub grounded_caption: Option<String>,
    pub caption_spans: Vec<SpanRow>,
    pub objects: Vec<ObjectRow>,
}

/// One row of `instruct`: an instruction conversation about one image.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstructRow {
    /// Unique id of the conversation: `<key>-<task>`.
    pub id: String,
    pub key: String,
    /// The image's file name, as LLaVA-style trainers resolve it against their image folder.
    pub image: String,
    /// The task: `rec`, `region_caption`, `grounded_caption`, `tag_listing`, `counting`, `multi_turn`.
    pub task: String,
    /// `en` or `zh`.
    pub language: String,
    /// `(from, value)` turns: `human` and `gpt` alternating, `<image>` in the first human turn.
    pub conversations: Vec<(String, String)>,
    /// The same turns as ms-swift's grounding template: `<ref-object>` where a phrase refers to boxes, `<bbox>`
    /// where a box is; `None` when a turn's own text (a caption, a tag) holds one of those placeholders.
    pub template: Option<Vec<String>>,
    /// The phrases of the template's `<ref-object>`s, in order.
    pub refs: Vec<String>,
    /// The boxes of its `<bbox>`es, in order: `[x1, y1, x2, y2]` fractions of the displayed image.
    pub boxes: Vec<[f32; 4]>,
}

fn item(data_type: DataType) -> Arc<Field> {
    Arc::new(Field::new(col::LIST_ITEM, data_type, true))
}

/// The struct fields of one `caption_spans` item.
pub fn span_fields() -> Fields {
    Fields::from(vec![
        Field::new(col::START, DataType::Int32, false),
        Field::new(col::END, DataType::Int32, false),
        Field::new(col::PHRASE, DataType::Utf8, false),
        Field::new(col::BOX, DataType::List(item(DataType::Float32)), false),
    ])
}

/// The struct fields of one `conversations` turn.
pub fn turn_fields() -> Fields {
    Fields::from(vec![Field::new(col::FROM, DataType::Utf8, false), Field::new(col::VALUE, DataType::Utf8, false)])
}

impl PretrainRow {
    /// Approximate in-memory size, for cutting shards by bytes.
    pub fn approx_bytes(&self) -> usize {
        let texts = [&self.caption, &self.grounded_caption];
        self.key.len()
            + self.image.bytes.as_ref().map_or(0, Vec::len)
            + texts.iter().map(|t| t.as_ref().map_or(0, String::len)).sum::<usize>()
            + self.formats.iter().map(|(f, t)| f.len() + t.len()).sum::<usize>()
            + self.frames.len() * 24
            + self.caption_spans.len() * 32
            + self
                .objects
                .iter()
                .map(|o| o.label.len() + o.phrase.len() + o.mask.as_ref().map_or(0, |m| m.counts.len()) + 40)
                .sum::<usize>()
    }

    /// The text of `format`, when it was enabled.
    pub fn format(&self, format: &str) -> Option<&str> {
        self.formats.iter().find(|(f, _)| f == format).map(|(_, t)| t.as_str())
    }

    /// A `pretrain` batch of `rows`.
    pub fn to_batch(rows: &[PretrainRow]) -> Result<RecordBatch, SchemaError> {
        let text = |f: &dyn Fn(&PretrainRow) -> Option<&str>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<StringArray>())
        };
        let spans: Vec<&SpanRow> = rows.iter().flat_map(|r| r.caption_spans.iter()).collect();
        let boxes = box_values(spans.iter().map(|s| s.bbox));
        let span_values = StructArray::new(
            span_fields(),
            vec![
                Arc::new(Int32Array::from_iter_values(spans.iter().map(|s| s.start))) as ArrayRef,
                Arc::new(Int32Array::from_iter_values(spans.iter().map(|s| s.end))),
                Arc::new(StringArray::from_iter_values(spans.iter().map(|s| &s.phrase))),
                Arc::new(boxes),
            ],
            None,
        );
        let span_lists = ListArray::new(
            item(DataType::Struct(span_fields())),
            OffsetBuffer::from_lengths(rows.iter().map(|r| r.caption_spans.len())),
            Arc::new(span_values),
            None,
        );
        if let Some((format, _)) =
            rows.iter().flat_map(|r| &r.formats).find(|(f, _)| !FORMAT_COLUMNS.contains(&f.as_str()))
        {
            return Err(SchemaError::MissingColumn(format.clone()));
        }
        let objects: Vec<Option<&Vec<ObjectRow>>> = rows.iter().map(|r| Some(&r.objects)).collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.key))),
            Arc::new(image_array(rows.iter().map(|r| &r.image))),
            text(&|r| r.caption.as_deref()),
        ];
        columns.extend(FORMAT_COLUMNS.iter().map(|name| text(&|r| r.format(name))));
        columns.extend([
            frames_array(rows),
            text(&|r| r.grounded_caption.as_deref()),
            Arc::new(span_lists),
            objects_array(&objects),
        ]);
        Ok(RecordBatch::try_new(pretrain_schema(), columns)?)
    }

    /// The rows of a `pretrain` batch.
    pub fn from_batch(batch: &RecordBatch) -> Result<Vec<PretrainRow>, SchemaError> {
        let key = strings(batch, col::KEY)?;
        let images = image_refs(batch)?;
        let (caption, grounded) = (strings(batch, col::CAPTION)?, strings(batch, col::GROUNDED_CAPTION)?);
        let formats = FORMAT_COLUMNS
            .iter()
            .map(|name| Ok((*name, strings(batch, name)?)))
            .collect::<Result<Vec<_>, SchemaError>>()?;
        let frames = struct_rows(column(batch, col::FRAMES)?, col::FRAMES)?;
        let spans = struct_rows(column(batch, col::CAPTION_SPANS)?, col::CAPTION_SPANS)?;
        let objects = objects_from(column(batch, col::OBJECTS)?)?;
        let mut rows = Vec::with_capacity(batch.num_rows());
        for (i, s) in spans.into_iter().enumerate() {
            let caption_spans = match s {
                Some(s) => spans_of(&s)?,
                None => Vec::new(),
            };
            rows.push(PretrainRow {
                key: key[i].clone().unwrap_or_default(),
                image: images[i].clone(),
                caption: caption[i].clone(),
                formats: formats
                    .iter()
                    .filter_map(|(name, texts)| Some((name.to_string(), texts[i].clone()?)))
                    .collect(),
                frames: match &frames[i] {
                    Some(f) => frames_of(f)?,
                    None => Vec::new(),
                },
                grounded_caption: grounded[i].clone(),
                caption_spans,
                objects: objects[i].clone().unwrap_or_default(),
            });
        }
        Ok(rows)
    }
}

/// The struct fields of one `frames` item.
pub fn frame_fields() -> Fields {
    Fields::from(vec![
        Field::new(col::FORMAT, DataType::Utf8, false),
        Field::new(col::WIDTH, DataType::Int32, false),
        Field::new(col::HEIGHT, DataType::Int32, false),
    ])
}

fn frames_array(rows: &[PretrainRow]) -> ArrayRef {
    let frames: Vec<&FrameRow> = rows.iter().flat_map(|r| r.frames.iter()).collect();
    let values = StructArray::new(
        frame_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(frames.iter().map(|f| &f.format))) as ArrayRef,
            Arc::new(Int32Array::from_iter_values(frames.iter().map(|f| f.width))),
            Arc::new(Int32Array::from_iter_values(frames.iter().map(|f| f.height))),
        ],
        None,
    );
    Arc::new(ListArray::new(
        item(DataType::Struct(frame_fields())),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.frames.len())),
        Arc::new(values),
        None,
    ))
}

/// The frames of one `pretrain` row.
fn frames_of(s: &StructArray) -> Result<Vec<FrameRow>, SchemaError> {
    let int = |name: &str| -> Result<Int32Array, SchemaError> {
        let a = s.column_by_name(name).ok_or_else(|| SchemaError::MissingColumn(name.into()))?;
        Ok(a.as_primitive_opt::<Int32Type>().ok_or_else(|| SchemaError::column_type(name, a.data_type()))?.clone())
    };
    let (widths, heights) = (int(col::WIDTH)?, int(col::HEIGHT)?);
    let formats = strings_of(s.column_by_name(col::FORMAT), col::FORMAT)?;
    Ok(formats
        .into_iter()
        .enumerate()
        .map(|(j, format)| FrameRow {
            format: format.unwrap_or_default(),
            width: widths.value(j),
            height: heights.value(j),
        })
        .collect())
}

/// The caption spans of one `pretrain` row.
fn spans_of(s: &StructArray) -> Result<Vec<SpanRow>, SchemaError> {
    let int = |name: &str| -> Result<Int32Array, SchemaError> {
        let a = s.column_by_name(name).ok_or_else(|| SchemaError::MissingColumn(name.into()))?;
        Ok(a.as_primitive_opt::<Int32Type>().ok_or_else(|| SchemaError::column_type(name, a.data_type()))?.clone())
    };
    let (starts, ends) = (int(col::START)?, int(col::END)?);
    let phrases = strings_of(s.column_by_name(col::PHRASE), col::PHRASE)?;
    let boxes = boxes_at(s)?;
    Ok(phrases
        .into_iter()
        .zip(boxes)
        .enumerate()
        .map(|(j, (phrase, bbox))| SpanRow {
            start: starts.value(j),
            end: ends.value(j),
            phrase: phrase.unwrap_or_default(),
            bbox,
        })
        .collect())
}

impl InstructRow {
    /// Approximate in-memory size, for cutting shards by bytes.
    pub fn approx_bytes(&self) -> usize {
        self.id.len()
            + self.key.len()
            + self.image.len()
            + self.conversations.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>()
            + self.template.iter().flatten().map(String::len).sum::<usize>()
            + self.refs.iter().map(String::len).sum::<usize>()
            + self.boxes.len() * 16
            + 16
    }

    /// An `instruct` batch of `rows`.
    pub fn to_batch(rows: &[InstructRow]) -> Result<RecordBatch, SchemaError> {
        let turns: Vec<&(String, String)> = rows.iter().flat_map(|r| r.conversations.iter()).collect();
        let values = StructArray::new(
            turn_fields(),
            vec![
                Arc::new(StringArray::from_iter_values(turns.iter().map(|t| &t.0))) as ArrayRef,
                Arc::new(StringArray::from_iter_values(turns.iter().map(|t| &t.1))),
            ],
            None,
        );
        let conversations = ListArray::new(
            item(DataType::Struct(turn_fields())),
            OffsetBuffer::from_lengths(rows.iter().map(|r| r.conversations.len())),
            Arc::new(values),
            None,
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.id))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.key))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.image))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.task))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.language))),
            Arc::new(conversations),
            string_lists(rows.iter().map(|r| r.template.as_deref())),
            string_lists(rows.iter().map(|r| Some(r.refs.as_slice()))),
            box_lists(rows.iter().map(|r| r.boxes.as_slice())),
        ];
        Ok(RecordBatch::try_new(instruct_schema(), columns)?)
    }

    /// The rows of an `instruct` batch.
    pub fn from_batch(batch: &RecordBatch) -> Result<Vec<InstructRow>, SchemaError> {
        let [id, key, image, task, language] =
            [col::ID, col::KEY, col::IMAGE, col::TASK, col::LANGUAGE].map(|c| strings(batch, c));
        let (id, key, image, task, language) = (id?, key?, image?, task?, language?);
        let conversations = struct_rows(column(batch, col::CONVERSATIONS)?, col::CONVERSATIONS)?;
        // Outputs of schema version 2 have no template: their rows read as having none.
        let n = batch.num_rows();
        let templates = match batch.column_by_name(col::TEMPLATE) {
            Some(a) => string_lists_of(a, col::TEMPLATE)?,
            None => vec![None; n],
        };
        let refs = match batch.column_by_name(col::REFS) {
            Some(a) => string_lists_of(a, col::REFS)?,
            None => vec![None; n],
        };
        let boxes = match batch.column_by_name(col::BOXES) {
            Some(a) => box_lists_of(a)?,
            None => vec![Vec::new(); n],
        };
        let mut rows = Vec::with_capacity(batch.num_rows());
        for (i, s) in conversations.into_iter().enumerate() {
            let (from, text) = match s {
                Some(s) => (
                    strings_of(s.column_by_name(col::FROM), col::FROM)?,
                    strings_of(s.column_by_name(col::VALUE), col::VALUE)?,
                ),
                None => (Vec::new(), Vec::new()),
            };
            rows.push(InstructRow {
                id: id[i].clone().unwrap_or_default(),
                key: key[i].clone().unwrap_or_default(),
                image: image[i].clone().unwrap_or_default(),
                task: task[i].clone().unwrap_or_default(),
                language: language[i].clone().unwrap_or_default(),
                conversations: from
                    .into_iter()
                    .zip(text)
                    .map(|(f, v)| (f.unwrap_or_default(), v.unwrap_or_default()))
                    .collect(),
                template: templates[i].clone(),
                refs: refs[i].clone().unwrap_or_default(),
                boxes: boxes[i].clone(),
            });
        }
        Ok(rows)
    }
}

/// A `list<utf8>` column, a row null where it is `None`.
fn string_lists<'a>(rows: impl Iterator<Item = Option<&'a [String]>>) -> ArrayRef {
    let rows: Vec<Option<&[String]>> = rows.collect();
    let values: StringArray = rows.iter().flatten().flat_map(|r| r.iter()).map(Some).collect();
    Arc::new(ListArray::new(
        item(DataType::Utf8),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.map_or(0, <[String]>::len))),
        Arc::new(values),
        Some(NullBuffer::from_iter(rows.iter().map(Option::is_some))),
    ))
}

/// Boxes as the `list<float32>` values of a column, four corners each.
fn box_values(boxes: impl Iterator<Item = [f32; 4]>) -> ListArray {
    let values: Vec<f32> = boxes.flatten().collect();
    ListArray::new(
        item(DataType::Float32),
        OffsetBuffer::from_lengths(std::iter::repeat_n(4, values.len() / 4)),
        Arc::new(Float32Array::from(values)),
        None,
    )
}

/// A `list<list<float32>>` column of boxes.
fn box_lists<'a>(rows: impl Iterator<Item = &'a [[f32; 4]]>) -> ArrayRef {
    let rows: Vec<&[[f32; 4]]> = rows.collect();
    let boxes = box_values(rows.iter().flat_map(|r| r.iter().copied()));
    Arc::new(ListArray::new(
        item(boxes.data_type().clone()),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.len())),
        Arc::new(boxes),
        None,
    ))
}

/// The rows of a `list<utf8>` column.
fn string_lists_of(array: &ArrayRef, name: &str) -> Result<Vec<Option<Vec<String>>>, SchemaError> {
    let list = array.as_list_opt::<i32>().ok_or_else(|| SchemaError::column_type(name, array.data_type()))?;
    (0..list.len())
        .map(|i| {
            if list.is_null(i) {
                return Ok(None);
            }
            let values = strings_of(Some(&list.value(i)), name)?;
            Ok(Some(values.into_iter().map(Option::unwrap_or_default).collect()))
        })
        .collect()
}

/// The rows of a `list<list<float32>>` column of boxes, missing corners read as 0.
fn box_lists_of(array: &ArrayRef) -> Result<Vec<Vec<[f32; 4]>>, SchemaError> {
    let bad = |a: &ArrayRef| SchemaError::column_type(col::BOXES, a.data_type());
    let list = array.as_list_opt::<i32>().ok_or_else(|| bad(array))?;
    (0..list.len())
        .map(|i| {
            let boxes = list.value(i);
            let boxes = boxes.as_list_opt::<i32>().ok_or_else(|| bad(&boxes))?;
            (0..boxes.len()).map(|j| corners(&boxes.value(j), col::BOXES)).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretrain_and_instruct_round_trip() {
        let pretrain = vec![PretrainRow {
            key: "k".into(),
            image: ImageRef { bytes: Some(vec![1, 2]), path: Some("k.jpg".into()) },
            caption: Some("a dog".into()),
            formats: vec![
                ("lyrics".into(), "dog: [0.100, 0.100, 0.500, 0.500]. a dog".into()),
                ("kosmos2".into(), "<phrase>dog</phrase>".into()),
                ("shikra".into(), "dog[0.100,0.200,0.500,0.600]".into()),
            ],
            frames: vec![FrameRow { format: "shikra".into(), width: 640, height: 640 }],
            grounded_caption: Some("<phrase>a dog</phrase><object></object>".into()),
            caption_spans: vec![SpanRow { start: 0, end: 5, phrase: "dog".into(), bbox: [0.1, 0.1, 0.5, 0.5] }],
            objects: vec![],
        }];
        assert_eq!(PretrainRow::from_batch(&PretrainRow::to_batch(&pretrain).unwrap()).unwrap(), pretrain);
        let instruct = vec![InstructRow {
            id: "k-rec".into(),
            key: "k".into(),
            image: "k.jpg".into(),
            task: "rec".into(),
            language: "en".into(),
            conversations: vec![
                ("human".into(), "<image>\nWhere is the dog?".into()),
                ("gpt".into(), "[0.1, 0.1, 0.5, 0.5]".into()),
            ],
            template: Some(vec!["<image>\nWhere is the <ref-object>?".into(), "<bbox>".into()]),
            refs: vec!["dog".into()],
            boxes: vec![[0.1, 0.1, 0.5, 0.5]],
        }];
        let mut without_template = instruct.clone();
        without_template[0].template = None;
        assert_eq!(
            InstructRow::from_batch(&InstructRow::to_batch(&without_template).unwrap()).unwrap(),
            without_template
        );
        assert_eq!(InstructRow::from_batch(&InstructRow::to_batch(&instruct).unwrap()).unwrap(), instruct);
    }
}

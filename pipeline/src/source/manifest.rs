//! JSONL and CSV manifests: one row per item, naming the image (a path relative to the image prefix, an absolute
//! path, or a URL) and its caption. A manifest is cut into units of `rows_per_unit` rows by byte range at plan
//! time, so each unit reads only its own slice with a ranged GET. Columns beyond image, caption and key are kept,
//! as JSON, in `meta`.

use std::io::Read;

use futures::future::BoxFuture;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStoreExt};
use serde_json::{Map, Value};

use super::body::Body;
use super::fetch::{ImageRefItem, fetch_all, parent};
use super::parquet::{check_columns, missing, pick};
use super::{CAPTION_COLUMNS, Emitter, IMAGE_COLUMNS, KEY_COLUMNS, Source, SourceContext, file_stem};
use crate::PipelineError;
use crate::item::ItemError;
use crate::plan::{InputFormat, WorkUnit};
use crate::store::Location;

/// JSONL or CSV manifests: units of `rows_per_unit` rows.
pub(crate) struct Manifest {
    pub ctx: SourceContext,
    pub format: InputFormat,
}

impl Source for Manifest {
    fn format(&self) -> InputFormat {
        self.format
    }

    fn plan<'a>(&'a self, objects: &'a [ObjectMeta]) -> BoxFuture<'a, Result<Vec<WorkUnit>, PipelineError>> {
        Box::pin(async move {
            let mut units = Vec::new();
            for o in objects {
                let at = self.ctx.input.at(o.location.clone());
                self.check_columns(&at).await?;
                for (range, first_row) in split(&at, self.format, self.ctx.options.rows_per_unit).await? {
                    units.push(WorkUnit { id: 0, object: o.location.to_string(), range, first_row, files: vec![] });
                }
            }
            Ok(units)
        })
    }

    fn reads_ahead(&self) -> bool {
        true
    }

    fn read<'a>(
        &'a self,
        unit: &'a WorkUnit,
        emitter: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<(), PipelineError>> {
        Box::pin(read(&self.ctx, self.format, unit, emitter))
    }
}

impl Manifest {
    /// Refuses a configured column that the manifest does not have (the CSV header, or the first JSONL row), so
    /// a misspelt name fails the job at once instead of making every row an error.
    async fn check_columns(&self, at: &Location) -> Result<(), PipelineError> {
        // A CSV header names every row's columns; a JSONL row names only its own fields.
        let (names, every_row) = match self.format {
            InputFormat::Csv => (csv_header(at).await?, true),
            _ => match first_jsonl_object(at).await? {
                Some(object) => (object.keys().cloned().collect(), false),
                None => return Ok(()),
            },
        };
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        check_columns(&at.uri(), &self.ctx.options, &names, every_row)
    }
}

/// The first MiB of a manifest: enough for its header or first row.
async fn head_of(at: &Location) -> Result<bytes::Bytes, PipelineError> {
    let uri = at.uri();
    let options = GetOptions { range: Some(GetRange::Bounded(0..1 << 20)), ..GetOptions::default() };
    at.store
        .get_opts(&at.path, options)
        .await
        .map_err(|e| PipelineError::store(&uri, e))?
        .bytes()
        .await
        .map_err(|e| PipelineError::store(&uri, e))
}

/// The first non-blank line of a JSONL manifest, when it is a JSON object.
async fn first_jsonl_object(at: &Location) -> Result<Option<Map<String, Value>>, PipelineError> {
    let head = head_of(at).await?;
    let first = head.split(|b| *b == b'\n').find(|l| l.iter().any(|b| !b.is_ascii_whitespace()));
    Ok(first.and_then(|line| match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(object)) => Some(object),
        _ => None,
    }))
}

/// Byte ranges of `rows_per_unit` rows each (and the index of each range's first row), streaming the manifest
/// once. CSV records may span lines (quoted newlines), so CSV is cut where the CSV parser says records start.
pub(crate) async fn split(
    at: &Location,
    format: InputFormat,
    rows_per_unit: u64,
) -> Result<Vec<([u64; 2], u64)>, PipelineError> {
    let uri = at.uri();
    let per = rows_per_unit.max(1);
    let result = at.store.get(&at.path).await.map_err(|e| PipelineError::store(&uri, e))?;
    let reader = Body::new(result);
    let delimiter = delimiter_of(&uri);
    let uri_for_thread = uri.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<([u64; 2], u64)>, PipelineError> {
        let starts = match format {
            InputFormat::Csv => csv_record_starts(reader, delimiter, per),
            _ => jsonl_line_starts(reader, per),
        }
        .map_err(|e| PipelineError::input(&uri_for_thread, e))?;
        Ok(starts)
    })
    .await
    .map_err(|e| PipelineError::Internal(format!("splitting {uri} panicked: {e}")))?
}

/// Ranges of `per` non-blank lines each.
fn jsonl_line_starts(mut reader: impl Read, per: u64) -> Result<Vec<([u64; 2], u64)>, String> {
    let mut ranges = Vec::new();
    let (mut offset, mut range_start, mut rows_in_range, mut rows_total) = (0u64, 0u64, 0u64, 0u64);
    let mut line_has_text = false;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buffer).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        for &byte in &buffer[..n] {
            offset += 1;
            if byte == b'\n' {
                if line_has_text {
                    rows_in_range += 1;
                    if rows_in_range == per {
                        ranges.push(([range_start, offset], rows_total));
                        rows_total += rows_in_range;
                        range_start = offset;
                        rows_in_range = 0;
                    }
                }
                line_has_text = false;
            } else if !byte.is_ascii_whitespace() {
                line_has_text = true;
            }
        }
    }
    if line_has_text {
        rows_in_range += 1;
    }
    if rows_in_range > 0 {
        ranges.push(([range_start, offset], rows_total));
    }
    Ok(ranges)
}

/// Ranges of `per` CSV records each, after the header.
fn csv_record_starts(reader: impl Read, delimiter: u8, per: u64) -> Result<Vec<([u64; 2], u64)>, String> {
    let mut csv =
        csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).flexible(true).from_reader(reader);
    csv.byte_headers().map_err(|e| e.to_string())?;
    let mut ranges = Vec::new();
    let mut range_start = csv.position().byte();
    let (mut rows_in_range, mut rows_total) = (0u64, 0u64);
    let mut record = csv::ByteRecord::new();
    while csv.read_byte_record(&mut record).map_err(|e| e.to_string())? {
        rows_in_range += 1;
        if rows_in_range == per {
            let end = csv.position().byte();
            ranges.push(([range_start, end], rows_total));
            rows_total += rows_in_range;
            range_start = end;
            rows_in_range = 0;
        }
    }
    if rows_in_range > 0 {
        ranges.push(([range_start, csv.position().byte()], rows_total));
    }
    Ok(ranges)
}

fn delimiter_of(uri: &str) -> u8 {
    if uri.to_ascii_lowercase().ends_with(".tsv") { b'\t' } else { b',' }
}

async fn read(
    ctx: &SourceContext,
    format: InputFormat,
    unit: &WorkUnit,
    emitter: &mut Emitter,
) -> Result<(), PipelineError> {
    let location = ctx.input.at(object_store::path::Path::from(unit.object.as_str()));
    let uri = location.uri();
    let [start, end] = unit.range;
    let options = GetOptions { range: Some(GetRange::Bounded(start..end)), ..GetOptions::default() };
    let bytes = location
        .store
        .get_opts(&location.path, options)
        .await
        .map_err(|e| PipelineError::store(&uri, e))?
        .bytes()
        .await
        .map_err(|e| PipelineError::store(&uri, e))?;
    let stem = file_stem(&unit.object);
    let items = match format {
        InputFormat::Csv => {
            let header = csv_header(&location).await?;
            csv_items(ctx, &uri, &stem, &header, &bytes, unit.first_row)?
        }
        _ => jsonl_items(ctx, &uri, &stem, &bytes, unit.first_row),
    };
    let base = location.at(parent(&location.path));
    fetch_all(ctx, &base, items, emitter).await
}

/// The CSV header row, from the head of the object.
async fn csv_header(location: &Location) -> Result<Vec<String>, PipelineError> {
    let uri = location.uri();
    let head = head_of(location).await?;
    let mut csv =
        csv::ReaderBuilder::new().delimiter(delimiter_of(&uri)).has_headers(true).from_reader(head.as_ref());
    let header = csv.headers().map_err(|e| PipelineError::input(&uri, format!("unreadable CSV header: {e}")))?;
    Ok(header.iter().map(|h| h.trim().to_string()).collect())
}

fn csv_items(
    ctx: &SourceContext,
    uri: &str,
    stem: &str,
    header: &[String],
    bytes: &[u8],
    first_row: u64,
) -> Result<Vec<ImageRefItem>, PipelineError> {
    let names: Vec<&str> = header.iter().map(String::as_str).collect();
    let o = &ctx.options;
    let image = pick(uri, "image_column", o.image_column.as_deref(), &IMAGE_COLUMNS, &names)?
        .ok_or_else(|| missing(uri, "image column", &IMAGE_COLUMNS, &names))?;
    let caption = pick(uri, "caption_column", o.caption_column.as_deref(), &CAPTION_COLUMNS, &names)?;
    let key = pick(uri, "key_column", o.key_column.as_deref(), &KEY_COLUMNS, &names)?;
    let index_of = |name: &Option<String>| name.as_ref().and_then(|n| names.iter().position(|c| c == n));
    let (image_i, caption_i, key_i) = (index_of(&Some(image)), index_of(&caption), index_of(&key));
    let mut csv =
        csv::ReaderBuilder::new().delimiter(delimiter_of(uri)).has_headers(false).flexible(true).from_reader(bytes);
    let mut items = Vec::new();
    for (n, record) in csv.records().enumerate() {
        let index = first_row + n as u64;
        let default_key = format!("{stem}-{index:09}");
        let source = format!("{uri}#row={index}");
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let error = ItemError::new("read", "bad_row", format!("unreadable CSV row: {e}"));
                items.push(ImageRefItem {
                    key: default_key,
                    source,
                    error: Some(error),
                    ..ImageRefItem::default()
                });
                continue;
            }
        };
        let cell = |i: Option<usize>| i.and_then(|i| record.get(i)).map(str::to_string).filter(|v| !v.is_empty());
        let mut meta = Map::new();
        for (i, name) in names.iter().enumerate() {
            if Some(i) != image_i
                && Some(i) != caption_i
                && Some(i) != key_i
                && let Some(value) = record.get(i)
            {
                meta.insert(name.to_string(), Value::String(value.to_string()));
            }
        }
        items.push(ImageRefItem {
            key: cell(key_i).unwrap_or(default_key),
            source,
            reference: cell(image_i),
            inline: None,
            captions: cell(caption_i).into_iter().collect(),
            meta: (!meta.is_empty()).then(|| Value::Object(meta).to_string()),
            error: None,
        });
    }
    Ok(items)
}

fn jsonl_items(ctx: &SourceContext, uri: &str, stem: &str, bytes: &[u8], first_row: u64) -> Vec<ImageRefItem> {
    let o = &ctx.options;
    let lines = bytes.split(|b| *b == b'\n').filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()));
    let mut items = Vec::new();
    for (n, line) in lines.enumerate() {
        let index = first_row + n as u64;
        let default_key = format!("{stem}-{index:09}");
        let source = format!("{uri}#row={index}");
        let object = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                let error = ItemError::new("read", "bad_row", "the line is JSON but not an object");
                items.push(ImageRefItem {
                    key: default_key,
                    source,
                    error: Some(error),
                    ..ImageRefItem::default()
                });
                continue;
            }
            Err(e) => {
                let error = ItemError::new("read", "bad_row", format!("the line is not valid JSON: {e}"));
                items.push(ImageRefItem {
                    key: default_key,
                    source,
                    error: Some(error),
                    ..ImageRefItem::default()
                });
                continue;
            }
        };
        let names: Vec<&str> = object.keys().map(String::as_str).collect();
        let field = |configured: &Option<String>, candidates: &[&str]| -> Option<String> {
            match configured {
                Some(name) => Some(name.clone()),
                None => candidates.iter().find(|c| names.contains(c)).map(|c| c.to_string()),
            }
        };
        let image = field(&o.image_column, &IMAGE_COLUMNS);
        let caption = field(&o.caption_column, &CAPTION_COLUMNS);
        let key = field(&o.key_column, &KEY_COLUMNS);
        let text = |name: &Option<String>| -> Option<String> {
            match object.get(name.as_deref()?)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let captions = match caption.as_deref().and_then(|c| object.get(c)) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(values)) => values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        let mut meta = object.clone();
        for name in [&image, &caption, &key].into_iter().flatten() {
            meta.remove(name);
        }
        let error = image.is_none().then(|| {
            ItemError::new(
                "read",
                "missing_image",
                format!("the row has none of the image fields {}", IMAGE_COLUMNS.join(", ")),
            )
        });
        items.push(ImageRefItem {
            key: text(&key).unwrap_or(default_key),
            source,
            reference: text(&image),
            inline: None,
            captions,
            meta: (!meta.is_empty()).then(|| Value::Object(meta).to_string()),
            error,
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn jsonl_splits_on_non_blank_lines() {
        let text = b"{\"a\":1}\n\n{\"a\":2}\n{\"a\":3}";
        let ranges = jsonl_line_starts(&text[..], 2).unwrap();
        assert_eq!(ranges, vec![([0, 17], 0), ([17, text.len() as u64], 2)]);
    }

    #[test]
    fn csv_splits_between_records_even_with_quoted_newlines() {
        let text = b"image,caption\na.jpg,\"two\nlines\"\nb.jpg,x\nc.jpg,y\n";
        let ranges = csv_record_starts(&text[..], b',', 2).unwrap();
        assert_eq!(ranges.len(), 2);
        let (first, second) = (ranges[0].0, ranges[1].0);
        assert_eq!(&text[first[0] as usize..first[1] as usize], b"a.jpg,\"two\nlines\"\nb.jpg,x\n");
        assert_eq!(&text[second[0] as usize..second[1] as usize], b"c.jpg,y\n");
        assert_eq!(ranges[1].1, 2);
    }

    proptest! {
        #[test]
        fn jsonl_ranges_cover_every_row_once(rows in proptest::collection::vec("[a-z]{1,5}", 0..30), per in 1u64..7) {
            let text: String = rows.iter().map(|r| format!("{{\"k\":\"{r}\"}}\n")).collect();
            let ranges = jsonl_line_starts(text.as_bytes(), per).unwrap();
            let mut seen = 0u64;
            let mut last_end = 0;
            for ([start, end], first) in ranges {
                prop_assert_eq!(start, last_end);
                prop_assert_eq!(first, seen);
                let slice = &text[start as usize..end as usize];
                seen += slice.lines().count() as u64;
                last_end = end;
            }
            prop_assert_eq!(seen, rows.len() as u64);
            prop_assert_eq!(last_end, text.len() as u64);
        }
    }
}

//! Parquet inputs: an image column holding bytes (or a Hugging Face `{bytes, path}` struct), or a path/URL column
//! resolved against the store; a caption column (string or list of strings); an optional key column. Every other
//! column is kept, as JSON, in `meta`.
//!
//! A file is cut into units of about `rows_per_unit` rows on row-group boundaries, planned from the footers alone
//! (read a few files at a time): a unit is a run of consecutive whole row groups, and reads only those. A file that
//! fits in one unit is one whole-file unit, as a file whose footer cannot be read is.
//!
//! A file the store serves but that is not readable Parquet (a corrupt footer or page) is the unit's one
//! `corrupt_input` error row, after the rows read before the damage, and the unit commits, as a damaged tar's
//! does; a store that fails past its retries fails the unit instead, for a rerun to retry.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
// The object_store adapter is deprecated upstream in favour of hand-written readers, yet it is the one that
// parquet keeps tested against object_store; it stays until a replacement ships in the crate.
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;

use futures::future::BoxFuture;
use object_store::ObjectMeta;

use super::fetch::{ImageRefItem, fetch_all, parent};
use super::{
    CAPTION_COLUMNS, Emitter, IMAGE_COLUMNS, KEY_COLUMNS, Source, SourceContext, SourceOptions, file_stem,
};
use crate::PipelineError;
use crate::item::{ItemError, SourceRecord};
use crate::plan::{InputFormat, WorkUnit};
use crate::store::Location;

/// Footers read at once while planning: enough to hide a store's latency, few enough not to flood it.
const FOOTER_READS: usize = 16;

/// Parquet files: units of whole row groups, about `rows_per_unit` rows each.
pub(crate) struct ParquetSource {
    pub ctx: SourceContext,
}

impl Source for ParquetSource {
    fn format(&self) -> InputFormat {
        InputFormat::Parquet
    }

    fn plan<'a>(&'a self, objects: &'a [ObjectMeta]) -> BoxFuture<'a, Result<Vec<WorkUnit>, PipelineError>> {
        Box::pin(async move {
            let files: Vec<(Location, u64)> =
                objects.iter().map(|o| (self.ctx.input.at(o.location.clone()), o.size)).collect();
            let footers: Vec<Result<Footer, String>> = futures::stream::iter(files)
                .map(|(at, size)| footer(at, size))
                .buffered(FOOTER_READS)
                .try_collect()
                .await?;
            // The first readable file's columns stand for all. A broken file is its unit's error row when read,
            // so it holds up neither planning nor the job, unless no file at all is readable.
            match footers.iter().zip(objects).find(|(footer, _)| footer.is_ok()) {
                Some((Ok(footer), object)) => {
                    let names: Vec<&str> = footer.columns.iter().map(String::as_str).collect();
                    let uri = self.ctx.input.at(object.location.clone()).uri();
                    check_columns(&uri, &self.ctx.options, &names, true)?;
                }
                _ => {
                    if let (Some(Err(message)), Some(object)) = (footers.first(), objects.first()) {
                        return Err(PipelineError::input(
                            self.ctx.input.at(object.location.clone()).uri(),
                            message,
                        ));
                    }
                }
            }
            let per = self.ctx.options.rows_per_unit;
            let mut units = Vec::new();
            for (footer, object) in footers.iter().zip(objects) {
                let cuts = footer.as_ref().map(|f| cut(&f.row_groups, per)).unwrap_or_default();
                if cuts.len() <= 1 {
                    units.push(super::whole_object(object));
                    continue;
                }
                for (groups, first_row) in cuts {
                    let range = [groups.start as u64, groups.end as u64];
                    units.push(WorkUnit {
                        id: 0,
                        object: object.location.to_string(),
                        range,
                        first_row,
                        files: vec![],
                    });
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
        Box::pin(read(&self.ctx, unit, emitter))
    }
}

/// What planning needs of a file's footer: its columns, and the rows of each row group.
struct Footer {
    columns: Vec<String>,
    row_groups: Vec<u64>,
}

/// Reads the footer of the file at `at` (of `size` bytes), and nothing else; the inner error says why the file is
/// not readable Parquet.
async fn footer(at: Location, size: u64) -> Result<Result<Footer, String>, PipelineError> {
    Ok(open_file(&at, Some(size)).await?.map(|builder| Footer {
        columns: builder.schema().fields().iter().map(|f| f.name().clone()).collect(),
        row_groups: builder.metadata().row_groups().iter().map(|g| g.num_rows().max(0) as u64).collect(),
    }))
}

/// Cuts row groups of `rows` rows each into runs of consecutive groups of at most `per` rows (a group larger than
/// that is a run of its own), with the file's row number of each run's first row.
fn cut(rows: &[u64], per: u64) -> Vec<(std::ops::Range<usize>, u64)> {
    let per = per.max(1);
    let mut runs = Vec::new();
    let (mut start, mut in_run, mut first_row) = (0usize, 0u64, 0u64);
    for (group, &n) in rows.iter().enumerate() {
        if group > start && in_run.saturating_add(n) > per {
            runs.push((start..group, first_row));
            first_row += in_run;
            (start, in_run) = (group, 0);
        }
        in_run = in_run.saturating_add(n);
    }
    if start < rows.len() {
        runs.push((start..rows.len(), first_row));
    }
    runs
}

/// Opens a Parquet file (reading its footer); `size` saves a request when the listing told it. The outer error is
/// the store's (the unit fails, and a rerun retries it); the inner one says why the file itself cannot be read (it
/// is broken: one `corrupt_input` error row, and the unit commits).
#[allow(deprecated)]
async fn open_file(
    location: &Location,
    size: Option<u64>,
) -> Result<Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>, String>, PipelineError> {
    let uri = location.uri();
    let size = match size {
        Some(size) => size,
        None => location.store.head(&location.path).await.map_err(|e| PipelineError::store(&uri, e))?.size,
    };
    let reader = ParquetObjectReader::new(location.store.clone(), location.path.clone()).with_file_size(size);
    match ParquetRecordBatchStreamBuilder::new(reader).await {
        Ok(builder) => Ok(Ok(builder)),
        Err(e) if from_store(&e) => Err(PipelineError::store(&uri, e)),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Whether a Parquet reader's failure is the store's (a request that failed past its retries) rather than the
/// file's own: the object_store reader hands the store's errors through as they are.
fn from_store(e: &ParquetError) -> bool {
    match e {
        ParquetError::External(inner) => {
            inner.is::<object_store::Error>()
                || inner.is::<tokio::task::JoinError>()
                || inner.is::<std::io::Error>()
        }
        _ => false,
    }
}

/// The error row of a unit of a file that cannot be read from `row` on: the rows before it stand, as a tar's do.
fn corrupt_input(uri: &str, unit: &WorkUnit, row: u64, message: &str) -> SourceRecord {
    let lost = match (row, unit.range) {
        (0, [0, 0]) => "no row of it can be read".to_string(),
        (_, [0, 0]) => format!("rows from {row} on are lost"),
        (_, [first, end]) => format!("the rows of its row groups {first}..{end} from row {row} on are lost"),
    };
    let object = unit.object.as_str();
    let error = ItemError::new(
        "read",
        "corrupt_input",
        format!("{uri}: the Parquet file is unreadable ({lost}): {message}"),
    );
    SourceRecord::error(&file_stem(object), uri, error)
}

/// Refuses configured columns that `names` lacks, and, when `names` is the schema of every row (a header, a
/// Parquet schema), an input with no image column at all.
pub(crate) fn check_columns(
    uri: &str,
    options: &SourceOptions,
    names: &[&str],
    every_row: bool,
) -> Result<(), PipelineError> {
    let image = pick(uri, "image_column", options.image_column.as_deref(), &IMAGE_COLUMNS, names)?;
    if every_row && image.is_none() {
        return Err(missing(uri, "image column", &IMAGE_COLUMNS, names));
    }
    pick(uri, "caption_column", options.caption_column.as_deref(), &CAPTION_COLUMNS, names)?;
    pick(uri, "key_column", options.key_column.as_deref(), &KEY_COLUMNS, names)?;
    Ok(())
}

async fn read(ctx: &SourceContext, unit: &WorkUnit, emitter: &mut Emitter) -> Result<(), PipelineError> {
    let location = ctx.input.at(object_store::path::Path::from(unit.object.as_str()));
    let uri = location.uri();
    let builder = match open_file(&location, None).await? {
        Ok(builder) => builder,
        Err(message) => {
            emitter.push(corrupt_input(&uri, unit, unit.first_row, &message)).await?;
            return Ok(());
        }
    };
    let builder = match unit.range {
        [0, 0] => builder,
        [first, end] => {
            let groups = builder.metadata().num_row_groups() as u64;
            if first >= end || end > groups {
                return Err(PipelineError::input(
                    &uri,
                    format!(
                        "the plan has a unit of row groups {first}..{end}, and the file has {groups}: it changed \
                         since it was planned"
                    ),
                ));
            }
            builder.with_row_groups((first as usize..end as usize).collect())
        }
    };
    let schema = builder.schema().clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let image_col = pick(&uri, "image_column", ctx.options.image_column.as_deref(), &IMAGE_COLUMNS, &names)?
        .ok_or_else(|| missing(&uri, "image column", &IMAGE_COLUMNS, &names))?;
    let caption_col =
        pick(&uri, "caption_column", ctx.options.caption_column.as_deref(), &CAPTION_COLUMNS, &names)?;
    let key_col = pick(&uri, "key_column", ctx.options.key_column.as_deref(), &KEY_COLUMNS, &names)?;
    let meta_cols: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            Some(**n) != Some(image_col.as_str())
                && Some(**n) != caption_col.as_deref()
                && Some(**n) != key_col.as_deref()
        })
        .map(|(i, _)| i)
        .collect();
    let batch_rows = 256;
    let mut stream = builder.with_batch_size(batch_rows).build().map_err(|e| PipelineError::input(&uri, e))?;
    let stem = file_stem(&unit.object);
    let base = location.at(parent(&location.path));
    let mut row_index: u64 = unit.first_row;
    // Rows that name their image are fetched many batches at a time: each `fetch_all` ends only when its slowest
    // URL does (one that never answers: all its attempts), so fetching batch by batch would pay that wait once per
    // batch of 256 rows instead of once per this many rows (the fetch window of the web). Rows holding their image
    // go on batch by batch, as their bytes are in memory already.
    let fetch_rows = ctx.registry.download_options().concurrency.max(1).saturating_mul(64);
    let mut pending: Vec<ImageRefItem> = Vec::new();
    let mut pending_inline = false;
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) if from_store(&e) => return Err(PipelineError::store(&uri, e)),
            Err(e) => {
                fetch_all(ctx, &base, std::mem::take(&mut pending), emitter).await?;
                emitter.push(corrupt_input(&uri, unit, row_index, &e.to_string())).await?;
                return Ok(());
            }
        };
        let metas = meta_json(&batch, &meta_cols).map_err(|e| PipelineError::input(&uri, e))?;
        let images = column(&batch, &image_col).map_err(|e| PipelineError::input(&uri, e))?;
        let captions = caption_col
            .as_deref()
            .map(|c| column(&batch, c))
            .transpose()
            .map_err(|e| PipelineError::input(&uri, e))?;
        let keys =
            key_col.as_deref().map(|c| column(&batch, c)).transpose().map_err(|e| PipelineError::input(&uri, e))?;
        let mut items = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let index = row_index + row as u64;
            let key =
                keys.as_ref().and_then(|k| scalar_text(k, row)).unwrap_or_else(|| format!("{stem}-{index:09}"));
            let (inline, reference) = image_cell(images, row);
            pending_inline |= inline.is_some();
            items.push(ImageRefItem {
                key,
                source: format!("{uri}#row={index}"),
                reference,
                inline,
                captions: captions.map(|c| texts(c, row)).unwrap_or_default(),
                meta: metas.get(row).cloned().flatten(),
                error: None,
            });
        }
        row_index += batch.num_rows() as u64;
        pending.append(&mut items);
        if pending_inline || pending.len() >= fetch_rows {
            fetch_all(ctx, &base, std::mem::take(&mut pending), emitter).await?;
            pending_inline = false;
        }
    }
    fetch_all(ctx, &base, pending, emitter).await
}

/// The column `name` of `batch`; a column the file's schema named is in every batch, so a miss is the file's fault.
fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    batch.column_by_name(name).ok_or_else(|| format!("a batch of the file lacks the column `{name}`"))
}

/// The configured column (which must exist), or the first candidate present.
pub(crate) fn pick(
    uri: &str,
    setting: &str,
    configured: Option<&str>,
    candidates: &[&str],
    names: &[&str],
) -> Result<Option<String>, PipelineError> {
    match configured {
        Some(name) if names.contains(&name) => Ok(Some(name.to_string())),
        Some(name) => Err(PipelineError::input(
            uri,
            format!("input.{setting} `{name}` is not a column here; the columns are: {}", names.join(", ")),
        )),
        None => Ok(candidates.iter().find(|c| names.contains(c)).map(|c| c.to_string())),
    }
}

pub(crate) fn missing(uri: &str, what: &str, candidates: &[&str], names: &[&str]) -> PipelineError {
    PipelineError::input(
        uri,
        format!(
            "found no {what} (looked for {}); the columns are: {}; name it with input.image_column",
            candidates.join(", "),
            names.join(", ")
        ),
    )
}

/// Inline bytes and/or the path of the image in `row`.
fn image_cell(array: &ArrayRef, row: usize) -> (Option<Vec<u8>>, Option<String>) {
    if array.is_null(row) {
        return (None, None);
    }
    match array.data_type() {
        DataType::Binary => (Some(array.as_binary::<i32>().value(row).to_vec()), None),
        DataType::LargeBinary => (Some(array.as_binary::<i64>().value(row).to_vec()), None),
        DataType::BinaryView => (Some(array.as_binary_view().value(row).to_vec()), None),
        DataType::Struct(_) => {
            let s = array.as_struct();
            let bytes = s.column_by_name("bytes").and_then(|b| image_cell(b, row).0);
            let path = s.column_by_name("path").and_then(|p| scalar_text(p, row));
            (bytes, path)
        }
        _ => (None, scalar_text(array, row)),
    }
}

/// A string or integer cell as text.
fn scalar_text(array: &ArrayRef, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Some(array.as_string_view().value(row).to_string()),
        _ => arrow::util::display::array_value_to_string(array, row).ok(),
    }
}

/// The captions of `row`: one string, or a list of strings.
fn texts(array: &ArrayRef, row: usize) -> Vec<String> {
    if array.is_null(row) {
        return Vec::new();
    }
    match array.data_type() {
        DataType::List(_) => {
            let values = array.as_list::<i32>().value(row);
            (0..values.len()).filter_map(|i| scalar_text(&values, i)).collect()
        }
        DataType::LargeList(_) => {
            let values = array.as_list::<i64>().value(row);
            (0..values.len()).filter_map(|i| scalar_text(&values, i)).collect()
        }
        _ => scalar_text(array, row).into_iter().collect(),
    }
}

/// Each row's `columns` as one JSON object (nulls left out), or `None` when there are none.
fn meta_json(batch: &RecordBatch, columns: &[usize]) -> Result<Vec<Option<String>>, arrow::error::ArrowError> {
    if columns.is_empty() {
        return Ok(vec![None; batch.num_rows()]);
    }
    let projected = batch.project(columns)?;
    let mut buffer = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
        writer.write(&projected)?;
        writer.finish()?;
    }
    let text = String::from_utf8_lossy(&buffer);
    Ok(text.lines().map(|l| (l != "{}").then(|| l.to_string())).collect())
}

#[cfg(test)]
mod tests {
    use super::cut;
    use proptest::prelude::*;

    #[test]
    fn runs_of_whole_row_groups() {
        let runs: Vec<_> = cut(&[5; 10], 12).into_iter().map(|(g, first)| (g.start, g.end, first)).collect();
        assert_eq!(runs, [(0, 2, 0), (2, 4, 10), (4, 6, 20), (6, 8, 30), (8, 10, 40)]);
        let runs: Vec<_> =
            cut(&[3, 20, 1, 1, 0, 9], 10).into_iter().map(|(g, first)| (g.start, g.end, first)).collect();
        assert_eq!(runs, [(0, 1, 0), (1, 2, 3), (2, 5, 23), (5, 6, 25)]);
        assert!(cut(&[], 10).is_empty());
        assert_eq!(cut(&[7, 7], 0).len(), 2, "a setting of 0 rows is taken as 1");
    }

    proptest! {
        #[test]
        fn runs_cover_every_row_group_once_in_order(
            rows in proptest::collection::vec(0u64..50, 0..60),
            per in 1u64..80,
        ) {
            let runs = cut(&rows, per);
            let mut next = 0;
            let mut first_row = 0;
            for (groups, first) in &runs {
                prop_assert_eq!(groups.start, next);
                prop_assert!(groups.end > groups.start);
                prop_assert_eq!(*first, first_row);
                let sizes = &rows[groups.clone()];
                let total: u64 = sizes.iter().sum();
                let largest = sizes.iter().copied().max().unwrap_or(0);
                prop_assert!(total <= per.max(largest), "{:?} holds {} rows", groups, total);
                // Runs are as long as they may be: the next group would not have fitted.
                if let Some(&following) = rows.get(groups.end) {
                    prop_assert!(total + following > per);
                }
                next = groups.end;
                first_row += total;
            }
            prop_assert_eq!(next, rows.len());
        }
    }
}

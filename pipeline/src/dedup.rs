//! Keys unique per job, across work units.
//!
//! Within a unit the source's emitter refuses a repeated key as it reads it. A key that another unit repeats can
//! only be seen once every unit has committed, since units run in any order on any worker; so [`resolve`] runs
//! when the job finalizes. It reads the `key` column of every unit's `samples` and `errors` shards (never the
//! images): a key's first occurrence is the one in the lowest unit, and a later unit's sample of that key, with
//! every product row of it, becomes one `duplicate_key` error row naming the first occurrence's source. An
//! occurrence is a sample or an error of an item that was admitted (an error of a stage after `read`), exactly
//! what the emitter remembers within a unit; error rows stay as they are.
//!
//! The decision is recorded first, in `_lyrics/duplicates.json` (a conditional create, so concurrent finalizers
//! agree on one); then each affected unit's product shards are rewritten without those rows, its errors get one
//! more shard, and its marker is replaced, marked resolved. Every step is idempotent, so a finalize killed halfway
//! reruns to the same bytes. A job without cross-unit duplicates reads the key columns and writes nothing extra.
//!
//! Memory: 16 bytes per key of the job (a hash and a unit) for the first pass; the exact keys are held only for
//! the hashes that repeat.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use futures::{StreamExt, TryStreamExt};
use lyrics_schemas::{ErrorRow, Table, col};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
// Deprecated upstream, yet the adapter parquet keeps tested against object_store (as in `source::parquet`).
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::commit::{UnitMarker, get_json};
use crate::sink::{ShardInfo, SinkOptions, properties, shard_path};
use crate::store::Location;

/// Where the decision is recorded.
pub const DUPLICATES_FILE: &str = "_lyrics/duplicates.json";

/// The stage that names the errors of items refused as they were read (never admitted, so not an occurrence).
const READ_STAGE: &str = "read";

/// One sample that lost its key to an earlier unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub unit: u64,
    pub key: String,
    pub source: String,
    pub first_unit: u64,
    pub first_source: String,
}

/// `_lyrics/duplicates.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Decision {
    duplicates: Vec<Duplicate>,
}

/// Makes keys unique across the units of `markers` (every unit of the job, committed), rewriting what must be;
/// returns how many samples became errors. The markers are updated in place.
pub(crate) async fn resolve(
    output: &Location,
    sink: &SinkOptions,
    markers: &mut [UnitMarker],
) -> Result<u64, PipelineError> {
    let decision = match get_json::<Decision>(output, DUPLICATES_FILE).await? {
        Some(decision) => decision,
        None => {
            let duplicates = find(output, markers).await?;
            if duplicates.is_empty() {
                return Ok(0);
            }
            record(output, Decision { duplicates }).await?
        }
    };
    let mut by_unit: BTreeMap<u64, Vec<&Duplicate>> = BTreeMap::new();
    for duplicate in &decision.duplicates {
        by_unit.entry(duplicate.unit).or_default().push(duplicate);
    }
    for marker in markers.iter_mut() {
        let Some(duplicates) = by_unit.get(&marker.unit) else { continue };
        if marker.duplicates == 0 {
            amend(output, sink, marker, duplicates).await?;
        }
    }
    Ok(decision.duplicates.len() as u64)
}

/// Writes the decision, or returns the one a concurrent finalizer wrote first.
async fn record(output: &Location, decision: Decision) -> Result<Decision, PipelineError> {
    let path = output.child(DUPLICATES_FILE);
    let mut bytes = serde_json::to_vec_pretty(&decision).map_err(|e| PipelineError::Internal(e.to_string()))?;
    bytes.push(b'\n');
    let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    match output.store.put_opts(&path, PutPayload::from(bytes), create).await {
        Ok(_) => Ok(decision),
        Err(object_store::Error::AlreadyExists { .. }) => get_json(output, DUPLICATES_FILE)
            .await?
            .ok_or_else(|| PipelineError::Internal(format!("{} exists and cannot be read", output.uri_of(&path)))),
        Err(e) => Err(PipelineError::sink(output.uri_of(&path), e)),
    }
}

/// One occurrence of a key, as read from a shard.
struct Occurrence {
    key: String,
    source: String,
    sample: bool,
}

/// The keys of the admitted items of one shard (`samples`, or `errors` past the read stage), with their sources
/// when `sources`.
async fn occurrences(
    output: &Location,
    shard: &ShardInfo,
    sources: bool,
) -> Result<Vec<Occurrence>, PipelineError> {
    let sample = shard.table == Table::Samples.name();
    let mut columns = vec![col::KEY];
    if sources {
        columns.push(col::SOURCE);
    }
    if !sample {
        columns.push(col::STAGE);
    }
    let uri = output.uri_of(&output.child(&shard.path));
    let mut found = Vec::new();
    let mut stream = open(output, shard, Some(&columns)).await?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| PipelineError::input(&uri, e))?;
        let text = |name: &str| text_column(&batch, name, &uri);
        let keys = text(col::KEY)?;
        let source_column = if sources { Some(text(col::SOURCE)?) } else { None };
        let stages = if sample { None } else { Some(text(col::STAGE)?) };
        for row in 0..batch.num_rows() {
            if stages.is_some_and(|s| s.value(row) == READ_STAGE) {
                continue;
            }
            let source = source_column.map(|s| s.value(row).to_string()).unwrap_or_default();
            found.push(Occurrence { key: keys.value(row).to_string(), source, sample });
        }
    }
    Ok(found)
}

/// The shards whose keys count as occurrences, in unit order.
fn keyed_shards<'a>(markers: &'a [&'a UnitMarker]) -> impl Iterator<Item = (u64, &'a ShardInfo)> {
    markers.iter().flat_map(|m| {
        m.shards
            .iter()
            .filter(|s| s.table == Table::Samples.name() || s.table == Table::Errors.name())
            .map(move |s| (m.unit, s))
    })
}

fn hash_of(key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// Shards read at a time.
const READ_AHEAD: usize = 8;

/// The samples whose key an earlier unit already used, in unit order.
async fn find(output: &Location, markers: &[UnitMarker]) -> Result<Vec<Duplicate>, PipelineError> {
    let mut markers: Vec<&UnitMarker> = markers.iter().collect();
    markers.sort_by_key(|m| m.unit);
    // First pass: by hash, the lowest unit of each key, and the hashes seen in two units.
    let mut first: HashMap<u64, u64> = HashMap::new();
    let mut repeated: HashSet<u64> = HashSet::new();
    let mut shards = futures::stream::iter(keyed_shards(&markers).map(|(unit, shard)| async move {
        let keys: Vec<u64> = occurrences(output, shard, false).await?.iter().map(|o| hash_of(&o.key)).collect();
        Ok::<_, PipelineError>((unit, keys))
    }))
    .buffered(READ_AHEAD);
    while let Some((unit, keys)) = shards.try_next().await? {
        for hash in keys {
            let lowest = *first.entry(hash).or_insert(unit);
            if lowest != unit {
                repeated.insert(hash);
            }
        }
    }
    drop(first);
    if repeated.is_empty() {
        return Ok(Vec::new());
    }
    // Second pass, exact, over the keys whose hash repeats only.
    let repeated = &repeated;
    let mut firsts: HashMap<String, (u64, String)> = HashMap::new();
    let mut duplicates = Vec::new();
    let mut shards = futures::stream::iter(keyed_shards(&markers).map(|(unit, shard)| async move {
        let mut found = occurrences(output, shard, true).await?;
        found.retain(|o| repeated.contains(&hash_of(&o.key)));
        Ok::<_, PipelineError>((unit, found))
    }))
    .buffered(READ_AHEAD);
    while let Some((unit, found)) = shards.try_next().await? {
        for occurrence in found {
            match firsts.get(&occurrence.key) {
                None => {
                    firsts.insert(occurrence.key, (unit, occurrence.source));
                }
                Some((first_unit, first_source)) if *first_unit != unit && occurrence.sample => {
                    duplicates.push(Duplicate {
                        unit,
                        first_unit: *first_unit,
                        first_source: first_source.clone(),
                        key: occurrence.key,
                        source: occurrence.source,
                    });
                }
                Some(_) => {}
            }
        }
    }
    Ok(duplicates)
}

#[allow(deprecated)]
type BatchStream = parquet::arrow::async_reader::ParquetRecordBatchStream<ParquetObjectReader>;

/// A stream of the shard's rows, all columns or those named.
#[allow(deprecated)]
pub(crate) async fn open(
    output: &Location,
    shard: &ShardInfo,
    columns: Option<&[&str]>,
) -> Result<BatchStream, PipelineError> {
    let path = output.child(&shard.path);
    let uri = output.uri_of(&path);
    let meta = output.store.head(&path).await.map_err(|e| PipelineError::store(&uri, e))?;
    let reader = ParquetObjectReader::new(output.store.clone(), path).with_file_size(meta.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(|e| PipelineError::input(&uri, e))?;
    let builder = match columns {
        Some(columns) => {
            let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
            builder.with_projection(mask)
        }
        None => builder,
    };
    builder.with_batch_size(256).build().map_err(|e| PipelineError::input(&uri, e))
}

/// Rewrites one unit without the samples (and product rows) of `duplicates`, adds their error rows as one more
/// errors shard, and replaces its marker.
async fn amend(
    output: &Location,
    sink: &SinkOptions,
    marker: &mut UnitMarker,
    duplicates: &[&Duplicate],
) -> Result<(), PipelineError> {
    let keys: HashSet<&str> = duplicates.iter().map(|d| d.key.as_str()).collect();
    let mut shards = Vec::with_capacity(marker.shards.len() + 1);
    for shard in &marker.shards {
        if shard.table == Table::Errors.name() {
            shards.push(shard.clone());
        } else {
            shards.push(rewrite_without(output, sink, shard, &keys).await?);
        }
    }
    let rows: Vec<ErrorRow> = duplicates
        .iter()
        .map(|d| ErrorRow {
            key: d.key.clone(),
            source: d.source.clone(),
            stage: READ_STAGE.to_string(),
            kind: "duplicate_key".to_string(),
            error: format!(
                "the key {} was already used by {} in work unit {} (the first occurrence is kept)",
                d.key, d.first_source, d.first_unit
            ),
        })
        .collect();
    let seq = marker
        .shards
        .iter()
        .filter(|s| s.table == Table::Errors.name())
        .filter_map(|s| seq_of(&s.path))
        .max()
        .map_or(0, |s| s + 1);
    let batch = ErrorRow::to_batch(&rows).map_err(|e| PipelineError::Internal(e.to_string()))?;
    let relative = shard_path(Table::Errors, marker.unit, seq);
    let bytes = write(output, sink, Table::Errors, &relative, futures::stream::iter([Ok(batch)])).await?;
    shards.push(ShardInfo {
        path: relative,
        table: Table::Errors.name().to_string(),
        rows: rows.len() as u64,
        bytes,
        schema_version: lyrics_schemas::SCHEMA_VERSION.to_string(),
    });
    marker.rows = shards.iter().filter(|s| s.table == Table::Samples.name()).map(|s| s.rows).sum();
    marker.shards = shards;
    marker.errors += rows.len() as u64;
    *marker.errors_by_kind.entry("duplicate_key".to_string()).or_default() += rows.len() as u64;
    marker.duplicates = rows.len() as u64;
    crate::failpoint::hit("before-amended-marker", marker.unit);
    crate::commit::write_marker(output, marker).await
}

/// The sequence number of a shard path (`…/part-UUUUUU-SSS.parquet`).
pub(crate) fn seq_of(path: &str) -> Option<u32> {
    path.rsplit('/').next()?.strip_suffix(".parquet")?.rsplit('-').next()?.parse().ok()
}

/// Rewrites `shard` without the rows of `keys`, in place; returns its new record. A shard that holds none of
/// them is left as it is (perhaps rewritten already by a finalize that was killed), and its record is read from
/// the file.
pub(crate) async fn rewrite_without(
    output: &Location,
    sink: &SinkOptions,
    shard: &ShardInfo,
    keys: &HashSet<&str>,
) -> Result<ShardInfo, PipelineError> {
    let (rows, gone, size) = count_keys(output, shard, keys).await?;
    if gone == 0 {
        return Ok(ShardInfo { rows, bytes: size, ..shard.clone() });
    }
    let table = Table::from_name(&shard.table)
        .ok_or_else(|| PipelineError::Internal(format!("the shard {} is of no known table", shard.path)))?;
    let uri = output.uri_of(&output.child(&shard.path));
    let schema = table.schema();
    let stream = open(output, shard, None).await?;
    let filtered = stream.map(|batch| {
        let batch = batch.map_err(|e| PipelineError::input(&uri, e))?;
        let keep: BooleanArray =
            key_column(&batch, &uri)?.iter().map(|k| Some(!k.is_some_and(|k| keys.contains(k)))).collect();
        let kept = arrow::compute::filter_record_batch(&batch, &keep).map_err(|e| PipelineError::input(&uri, e))?;
        RecordBatch::try_new(schema.clone(), kept.columns().to_vec()).map_err(|e| PipelineError::input(&uri, e))
    });
    // The new file replaces the old one only when whole (a completed upload), after every row was read.
    let bytes = write(output, sink, table, &shard.path, filtered).await?;
    Ok(ShardInfo { rows: rows - gone, bytes, ..shard.clone() })
}

fn key_column<'a>(batch: &'a RecordBatch, uri: &str) -> Result<&'a arrow::array::StringArray, PipelineError> {
    text_column(batch, col::KEY, uri)
}

/// The string column `name` of a batch read from the shard at `uri`.
pub(crate) fn text_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    uri: &str,
) -> Result<&'a arrow::array::StringArray, PipelineError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| PipelineError::input(uri, format!("no string column `{name}`")))
}

/// The rows of `shard`, how many of them have a key of `keys`, and the file's size.
async fn count_keys(
    output: &Location,
    shard: &ShardInfo,
    keys: &HashSet<&str>,
) -> Result<(u64, u64, u64), PipelineError> {
    let path = output.child(&shard.path);
    let uri = output.uri_of(&path);
    let size = output.store.head(&path).await.map_err(|e| PipelineError::store(&uri, e))?.size;
    let mut stream = open(output, shard, Some(&[col::KEY])).await?;
    let (mut rows, mut gone) = (0, 0);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| PipelineError::input(&uri, e))?;
        let column = key_column(&batch, &uri)?;
        rows += column.len() as u64;
        gone += column.iter().filter(|k| k.is_some_and(|k| keys.contains(k))).count() as u64;
    }
    Ok((rows, gone, size))
}

/// Writes `batches` as the shard `relative` of `table`, with the job's writer settings; returns its size.
async fn write(
    output: &Location,
    sink: &SinkOptions,
    table: Table,
    relative: &str,
    batches: impl futures::Stream<Item = Result<RecordBatch, PipelineError>>,
) -> Result<u64, PipelineError> {
    let path = output.child(relative);
    let uri = output.uri_of(&path);
    // Parts of 10 MiB to an object store: `BufWriter::new`'s capacity, which this used before.
    let upload = crate::sink::Upload::open(output, &path, 10 << 20);
    let mut writer = AsyncArrowWriter::try_new(upload, table.schema(), Some(properties(table, sink)?))
        .map_err(|e| PipelineError::sink(&uri, e))?;
    let mut batches = std::pin::pin!(batches);
    while let Some(batch) = batches.next().await {
        match batch {
            Ok(batch) => writer.write(&batch).await.map_err(|e| PipelineError::sink(&uri, e))?,
            Err(e) => {
                writer.into_inner().abort().await;
                return Err(e);
            }
        }
    }
    writer.finish().await.map_err(|e| PipelineError::sink(&uri, e))?;
    Ok(writer.bytes_written() as u64)
}

#[cfg(test)]
mod tests {
    use super::seq_of;

    #[test]
    fn shard_sequence_numbers_are_read_from_paths() {
        assert_eq!(seq_of("errors/part-000003-002.parquet"), Some(2));
        assert_eq!(seq_of("errors/part-000003-000.parquet"), Some(0));
        assert_eq!(seq_of("errors/notes.txt"), None);
    }
}

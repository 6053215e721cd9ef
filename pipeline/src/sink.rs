//! The sharded Parquet sink: each table of a unit (`samples`, `errors` and whatever tables the stages declared,
//! see [`crate::table`]) is written as shards `<output>/<table>/part-UUUUUU-SSS.parquet`, bounded by rows and
//! bytes, zstd-compressed, with row groups sized for streaming readers.
//!
//! A shard is uploaded with a multipart upload (one PUT when small) that completes only when the file is whole, so
//! no reader ever sees half a shard; a failed unit aborts its upload and deletes the shards it had finished. Bytes
//! depend only on the rows, so a retried unit rewrites identical shards.

use std::any::Any;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use lyrics_schemas::{Table, col};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::{ArrowSchemaConverter, AsyncArrowWriter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::PipelineError;
use crate::claims::Claim;
use crate::direct::DirectFile;
use crate::order::{Added, KeyOrder, key_index};
use crate::store::Location;
use crate::table::{RowBuffer, TableId, Tables};
use std::sync::Arc;

/// Shard and row-group sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkOptions {
    /// Rows per shard, at most.
    pub shard_rows: u64,
    /// Bytes per shard (before compression), at most, give or take one row.
    pub shard_bytes: u64,
    /// Rows per row group, at most.
    pub row_group_rows: usize,
    /// Bytes per row group, at most: what a streaming reader holds in memory.
    pub row_group_bytes: usize,
    /// zstd level, 1 to 22.
    pub zstd_level: i32,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            shard_rows: 10_000,
            shard_bytes: 512 << 20,
            row_group_rows: 1024,
            row_group_bytes: 64 << 20,
            zstd_level: 3,
        }
    }
}

/// One finished shard, as the commit marker and the manifest record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Path relative to the output root.
    pub path: String,
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    pub schema_version: String,
}

/// The relative path of shard `seq` of `unit` in `table`.
pub fn shard_path(table: Table, unit: u64, seq: u32) -> String {
    format!("{}/part-{unit:06}-{seq:03}.parquet", table.name())
}

/// The unit a shard path (as [`shard_path`] makes it) belongs to.
pub fn unit_of_shard(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_prefix("part-")?.split('-').next()?.parse().ok()
}

/// The writer settings of `table`'s shards. Rows are sorted by key (see [`crate::order`]), and the footer says so.
pub(crate) fn properties(table: Table, options: &SinkOptions) -> Result<WriterProperties, PipelineError> {
    let level = ZstdLevel::try_new(options.zstd_level)
        .map_err(|e| PipelineError::Config(format!("output.zstd_level: {e}")))?;
    let image_bytes = ColumnPath::new(vec![col::IMAGE.to_string(), col::IMAGE_BYTES.to_string()]);
    let schema = table.schema();
    // The sort column as the footer names it: the key's index among the Parquet leaf columns.
    let key = key_index(&schema)
        .and_then(|_| ArrowSchemaConverter::new().convert(&schema).ok())
        .and_then(|parquet| parquet.columns().iter().position(|c| c.path().parts() == [col::KEY]));
    let sorting =
        key.map(|column| vec![SortingColumn { column_idx: column as i32, descending: false, nulls_first: false }]);
    Ok(WriterProperties::builder()
        .set_sorting_columns(sorting)
        .set_compression(Compression::ZSTD(level))
        // Min/max per row group and per page (the page index), so SQL engines skip what a predicate excludes.
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        .set_max_row_group_bytes(Some(options.row_group_bytes.max(1)))
        // Encoded images neither compress nor repeat: skip the work, and keep blobs out of the statistics.
        .set_column_compression(image_bytes.clone(), Compression::UNCOMPRESSED)
        .set_column_dictionary_enabled(image_bytes.clone(), false)
        .set_column_statistics_enabled(image_bytes, EnabledStatistics::None)
        .set_statistics_truncate_length(Some(64))
        .build())
}

/// A shard's upload, as the Parquet writer's output. To an object store, the writer hands over each encoded row
/// group as one buffer of its own; `BufWriter::put` makes it part of the upload as it is, where the upload as an
/// `AsyncWrite` (the writer's generic path) would copy every byte into parts of its own. To a local disk, the
/// shard is written past the page cache and renamed into place when whole (see [`crate::direct`]).
pub(crate) enum Upload {
    Store(BufWriter),
    Local(DirectFile),
}

impl Upload {
    /// The upload of `path` under `output`, in parts of `part_bytes` where it goes to an object store.
    pub(crate) fn open(output: &Location, path: &Path, part_bytes: usize) -> Upload {
        match output.local_path(path) {
            Some(file) => Upload::Local(DirectFile::new(file)),
            None => Upload::Store(BufWriter::with_capacity(output.store.clone(), path.clone(), part_bytes.max(1))),
        }
    }

    /// Abandons the upload: nothing of it becomes visible.
    pub(crate) async fn abort(self) {
        match self {
            Upload::Store(mut upload) => {
                let _ = upload.abort().await;
            }
            Upload::Local(file) => file.abort().await,
        }
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileWriter for Upload {
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            match self {
                Upload::Store(upload) => upload.put(bytes).await.map_err(external),
                Upload::Local(file) => file.write(&bytes).await.map_err(external),
            }
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            match self {
                Upload::Store(upload) => upload.shutdown().await.map_err(external),
                Upload::Local(file) => file.complete().await.map_err(external),
            }
        })
    }
}

struct OpenShard {
    writer: AsyncArrowWriter<Upload>,
    path: Path,
    relative: String,
    rows: u64,
    bytes: u64,
}

/// Writes one table of one unit.
pub(crate) struct TableWriter {
    table: Table,
    output: Location,
    options: SinkOptions,
    part_bytes: usize,
    properties: WriterProperties,
    unit: u64,
    next_seq: u32,
    open: Option<OpenShard>,
    pending: Box<dyn RowBuffer>,
    pending_bytes: usize,
    /// The open shard's rows on their way to key order.
    order: KeyOrder,
    finished: Vec<ShardInfo>,
    /// The claim of the unit, when workers share units by claims: checked before a shard becomes visible.
    claim: Option<Arc<Claim>>,
}

/// Rows handed to the Parquet writer at a time.
const WRITE_BATCH_ROWS: usize = 64;

impl TableWriter {
    fn new(
        table: Table,
        pending: Box<dyn RowBuffer>,
        output: Location,
        options: SinkOptions,
        part_bytes: usize,
        unit: u64,
        claim: Option<Arc<Claim>>,
    ) -> Result<Self, PipelineError> {
        let order = KeyOrder::new(table.schema(), options.row_group_rows);
        Ok(TableWriter {
            claim,
            table,
            properties: properties(table, &options)?,
            pending_bytes: 0,
            order,
            output,
            options,
            part_bytes,
            unit,
            next_seq: 0,
            open: None,
            pending,
            finished: Vec::new(),
        })
    }

    async fn push(&mut self, row: Box<dyn Any + Send>) -> Result<(), PipelineError> {
        if self.open.is_none() {
            self.open_shard()?;
        }
        let bytes = self.pending.push(row)?;
        self.pending_bytes += bytes;
        let Some(shard) = self.open.as_mut() else { return Err(PipelineError::Internal("no open shard".into())) };
        shard.rows += 1;
        shard.bytes += bytes as u64;
        if self.pending.len() >= WRITE_BATCH_ROWS {
            self.write_pending().await?;
        }
        // After the write: a cut (see `crate::order`) may have opened the next shard.
        let Some(shard) = self.open.as_ref() else { return Err(PipelineError::Internal("no open shard".into())) };
        if shard.rows >= self.options.shard_rows.max(1) || shard.bytes >= self.options.shard_bytes {
            self.close_shard().await?;
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<(), PipelineError> {
        let relative = shard_path(self.table, self.unit, self.next_seq);
        self.next_seq += 1;
        let path = self.output.child(&relative);
        let upload = Upload::open(&self.output, &path, self.part_bytes);
        let writer = AsyncArrowWriter::try_new(upload, self.table.schema(), Some(self.properties.clone()))
            .map_err(|e| PipelineError::sink(self.output.uri_of(&path), e))?;
        self.open = Some(OpenShard { writer, path, relative, rows: 0, bytes: 0 });
        Ok(())
    }

    /// Moves the buffered rows on: to the open shard while they come in key order, else to be sorted (see
    /// [`crate::order`]).
    async fn write_pending(&mut self) -> Result<(), PipelineError> {
        if self.pending.len() == 0 {
            return Ok(());
        }
        let batch = self.pending.take_batch()?;
        let bytes = std::mem::take(&mut self.pending_bytes);
        match self.order.add(batch, bytes)? {
            Added::Write(batch) => self.write_batch(&batch).await,
            Added::Held => Ok(()),
            Added::Cut(batch) => {
                // The rows written so far are a whole, sorted shard; these start the next one.
                let rows = batch.num_rows() as u64;
                if let Some(shard) = self.open.as_mut() {
                    shard.rows -= rows;
                    shard.bytes = shard.bytes.saturating_sub(bytes as u64);
                }
                self.finish_shard().await?;
                self.open_shard()?;
                if let Some(shard) = self.open.as_mut() {
                    (shard.rows, shard.bytes) = (rows, bytes as u64);
                }
                match self.order.add(batch, bytes)? {
                    Added::Held => Ok(()),
                    _ => Err(PipelineError::Internal("rows after a cut were not held for sorting".into())),
                }
            }
        }
    }

    async fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), PipelineError> {
        let Some(shard) = self.open.as_mut() else {
            return Err(PipelineError::Internal("rows without a shard".into()));
        };
        let uri = self.output.uri_of(&shard.path);
        shard.writer.write(batch).await.map_err(|e| PipelineError::sink(uri, e))
    }

    async fn close_shard(&mut self) -> Result<(), PipelineError> {
        self.write_pending().await?;
        self.finish_shard().await
    }

    /// Writes the rows held for the open shard, in key order, and completes it.
    async fn finish_shard(&mut self) -> Result<(), PipelineError> {
        let mut sorted = self.order.drain()?;
        while let Some(batch) = sorted.next_batch()? {
            self.write_batch(&batch).await?;
        }
        let Some(mut shard) = self.open.take() else { return Ok(()) };
        let uri = self.output.uri_of(&shard.path);
        if let Some(claim) = &self.claim
            && let Err(e) = claim.ensure().await
        {
            self.open = Some(shard);
            return Err(e);
        }
        // A failed finish leaves the upload shut down: nothing to abort (object_store refuses), and an incomplete
        // multipart upload is invisible until a bucket lifecycle rule removes it.
        shard.writer.finish().await.map_err(|e| PipelineError::sink(uri, e))?;
        self.finished.push(ShardInfo {
            path: shard.relative,
            table: self.table.name().to_string(),
            rows: shard.rows,
            bytes: shard.writer.bytes_written() as u64,
            schema_version: lyrics_schemas::SCHEMA_VERSION.to_string(),
        });
        crate::failpoint::hit("after-shard", self.unit);
        Ok(())
    }

    /// Completes the unit's last shard and returns every shard written. After an error, [`TableWriter::abort`]
    /// removes what was written.
    async fn finish(&mut self) -> Result<Vec<ShardInfo>, PipelineError> {
        self.close_shard().await?;
        Ok(self.finished.clone())
    }

    /// Abandons the unit: the open upload is aborted and finished shards are deleted, so nothing of it stays;
    /// with `keep_finished` (another worker took the unit over, and may have written the same paths) they stay.
    async fn abort(mut self, keep_finished: bool) {
        if let Some(shard) = self.open.take() {
            shard.writer.into_inner().abort().await;
        }
        if keep_finished {
            return;
        }
        for shard in &self.finished {
            let _ = self.output.store.delete(&self.output.child(&shard.path)).await;
        }
    }
}

/// Every table of one unit.
pub(crate) struct UnitWriter {
    tables: Vec<TableWriter>,
}

impl UnitWriter {
    pub fn new(
        output: &Location,
        tables: &Tables,
        options: SinkOptions,
        part_bytes: usize,
        unit: u64,
        claim: Option<Arc<Claim>>,
    ) -> Result<Self, PipelineError> {
        let tables = tables
            .decls
            .iter()
            .map(|d| {
                TableWriter::new(d.table, (d.buffer)(), output.clone(), options, part_bytes, unit, claim.clone())
            })
            .collect::<Result<_, _>>()?;
        Ok(UnitWriter { tables })
    }

    /// Numbers each table's shards from `first` on (by table name; 0 for a table not named), for the shards an
    /// amended unit adds after its own (see [`crate::retry`]).
    pub fn numbered_from(mut self, first: &std::collections::BTreeMap<String, u32>) -> Self {
        for table in &mut self.tables {
            table.next_seq = first.get(table.table.name()).copied().unwrap_or(0);
        }
        self
    }

    /// The unit's claim, when units are shared by claims.
    pub fn claim(&self) -> Option<Arc<Claim>> {
        self.tables.first().and_then(|t| t.claim.clone())
    }

    /// Adds one row to table `table`.
    pub async fn push(&mut self, table: TableId, row: Box<dyn Any + Send>) -> Result<(), PipelineError> {
        let writer = self
            .tables
            .get_mut(table.0)
            .ok_or_else(|| PipelineError::Internal(format!("no table {} was declared", table.0)))?;
        writer.push(row).await
    }

    /// Completes every table; on error, aborts the unit so nothing of it stays visible.
    pub async fn finish(mut self) -> Result<Vec<ShardInfo>, PipelineError> {
        let result = async {
            let mut shards = Vec::new();
            for table in &mut self.tables {
                shards.extend(table.finish().await?);
            }
            Ok(shards)
        }
        .await;
        if let Err(e) = &result {
            let taken = matches!(e, PipelineError::Taken { .. });
            self.abort_with(taken).await;
        }
        result
    }

    /// Removes every trace of the unit.
    pub async fn abort(self) {
        self.abort_with(false).await;
    }

    /// Aborts the unit's uploads; finished shards are deleted unless `keep_finished`.
    pub async fn abort_with(self, keep_finished: bool) {
        for table in self.tables {
            table.abort(keep_finished).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, BinaryArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use object_store::memory::InMemory;
    use object_store::{ObjectStore, ObjectStoreExt};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Rows of `len` bytes each, every row's bytes its own.
    fn rows(n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| (0..len).map(|j| (i * 31 + j * 7) as u8).collect()).collect()
    }

    /// Writes `rows` through [`Upload`] with upload parts of `part` bytes and row groups of `group` rows; returns
    /// what the store holds, read back by the Parquet reader.
    async fn round_trip(rows: &[Vec<u8>], part: usize, group: usize) -> Vec<Vec<u8>> {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("t/part-0.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("b", DataType::Binary, false)]));
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(group)).build();
        let upload = Upload::Store(BufWriter::with_capacity(Arc::clone(&store), path.clone(), part));
        let mut writer = AsyncArrowWriter::try_new(upload, Arc::clone(&schema), Some(props)).unwrap();
        for chunk in rows.chunks(7) {
            let column = BinaryArray::from_iter_values(chunk.iter().map(Vec::as_slice));
            writer
                .write(&RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(column)]).unwrap())
                .await
                .unwrap();
        }
        writer.finish().await.unwrap();
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.len(), writer.bytes_written(), "the store holds every byte the writer wrote");
        let mut read = Vec::new();
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap() {
            let batch = batch.unwrap();
            let column = batch.column(0).as_any().downcast_ref::<BinaryArray>().unwrap();
            read.extend((0..column.len()).map(|i| column.value(i).to_vec()));
        }
        read
    }

    #[tokio::test]
    async fn row_groups_reach_the_store_whole_in_multipart_uploads_and_single_puts() {
        let many = rows(200, 1000);
        // Row groups of 30 rows (~30 KB) across 8 KiB parts: each group is split over several parts.
        assert_eq!(round_trip(&many, 8 << 10, 30).await, many);
        // Everything below one part: the upload is one PUT at the end.
        let few = rows(5, 100);
        assert_eq!(round_trip(&few, 1 << 20, 30).await, few);
    }
}

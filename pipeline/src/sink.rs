//! The sharded Parquet sink: each table of a unit is written as shards `<output>/<table>/part-UUUUUU-SSS.parquet`,
//! bounded by rows and bytes, zstd-compressed, with row groups sized for streaming readers.
//!
//! A shard is uploaded with a multipart upload (one PUT when small) that completes only when the file is whole, so
//! no reader ever sees half a shard; a failed unit aborts its upload and deletes the shards it had finished. Bytes
//! depend only on the rows, so a retried unit rewrites identical shards.

use arrow::array::RecordBatch;
use lyrics_schemas::{ErrorRow, InstructRow, PretrainRow, SampleRow, Table, col};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::store::Location;

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

/// A row type with a table of its own.
pub trait TableRow: Sized + Send {
    const TABLE: Table;
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, PipelineError>;
    fn approx_bytes(&self) -> usize;
}

impl TableRow for SampleRow {
    const TABLE: Table = Table::Samples;
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, PipelineError> {
        SampleRow::to_batch(rows).map_err(|e| PipelineError::Internal(e.to_string()))
    }
    fn approx_bytes(&self) -> usize {
        SampleRow::approx_bytes(self)
    }
}

impl TableRow for ErrorRow {
    const TABLE: Table = Table::Errors;
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, PipelineError> {
        ErrorRow::to_batch(rows).map_err(|e| PipelineError::Internal(e.to_string()))
    }
    fn approx_bytes(&self) -> usize {
        ErrorRow::approx_bytes(self)
    }
}

impl TableRow for PretrainRow {
    const TABLE: Table = Table::Pretrain;
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, PipelineError> {
        PretrainRow::to_batch(rows).map_err(|e| PipelineError::Internal(e.to_string()))
    }
    fn approx_bytes(&self) -> usize {
        PretrainRow::approx_bytes(self)
    }
}

impl TableRow for InstructRow {
    const TABLE: Table = Table::Instruct;
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, PipelineError> {
        InstructRow::to_batch(rows).map_err(|e| PipelineError::Internal(e.to_string()))
    }
    fn approx_bytes(&self) -> usize {
        InstructRow::approx_bytes(self)
    }
}

/// The relative path of shard `seq` of `unit` in `table`.
pub fn shard_path(table: Table, unit: u64, seq: u32) -> String {
    format!("{}/part-{unit:06}-{seq:03}.parquet", table.name())
}

fn properties(options: &SinkOptions) -> Result<WriterProperties, PipelineError> {
    let level = ZstdLevel::try_new(options.zstd_level)
        .map_err(|e| PipelineError::Config(format!("output.zstd_level: {e}")))?;
    let image_bytes = ColumnPath::new(vec![col::IMAGE.to_string(), col::IMAGE_BYTES.to_string()]);
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
        .set_max_row_group_bytes(Some(options.row_group_bytes.max(1)))
        // Encoded images neither compress nor repeat: skip the work, and keep blobs out of the statistics.
        .set_column_compression(image_bytes.clone(), Compression::UNCOMPRESSED)
        .set_column_dictionary_enabled(image_bytes.clone(), false)
        .set_column_statistics_enabled(image_bytes, EnabledStatistics::None)
        .set_statistics_truncate_length(Some(64))
        .build())
}

struct OpenShard {
    writer: AsyncArrowWriter<BufWriter>,
    path: Path,
    relative: String,
    rows: u64,
    bytes: u64,
}

/// Writes one table of one unit.
pub struct TableWriter<R: TableRow> {
    output: Location,
    options: SinkOptions,
    part_bytes: usize,
    properties: WriterProperties,
    unit: u64,
    next_seq: u32,
    open: Option<OpenShard>,
    pending: Vec<R>,
    finished: Vec<ShardInfo>,
}

/// Rows handed to the Parquet writer at a time.
const WRITE_BATCH_ROWS: usize = 64;

impl<R: TableRow> TableWriter<R> {
    pub fn new(
        output: Location,
        options: SinkOptions,
        part_bytes: usize,
        unit: u64,
    ) -> Result<Self, PipelineError> {
        Ok(TableWriter {
            properties: properties(&options)?,
            output,
            options,
            part_bytes,
            unit,
            next_seq: 0,
            open: None,
            pending: Vec::new(),
            finished: Vec::new(),
        })
    }

    pub async fn push(&mut self, row: R) -> Result<(), PipelineError> {
        if self.open.is_none() {
            self.open_shard()?;
        }
        let Some(shard) = self.open.as_mut() else { return Err(PipelineError::Internal("no open shard".into())) };
        shard.rows += 1;
        shard.bytes += row.approx_bytes() as u64;
        let full = shard.rows >= self.options.shard_rows.max(1) || shard.bytes >= self.options.shard_bytes;
        self.pending.push(row);
        if self.pending.len() >= WRITE_BATCH_ROWS {
            self.write_pending().await?;
        }
        if full {
            self.close_shard().await?;
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<(), PipelineError> {
        let relative = shard_path(R::TABLE, self.unit, self.next_seq);
        self.next_seq += 1;
        let path = self.output.child(&relative);
        let upload = BufWriter::with_capacity(self.output.store.clone(), path.clone(), self.part_bytes.max(1));
        let writer = AsyncArrowWriter::try_new(upload, R::TABLE.schema(), Some(self.properties.clone()))
            .map_err(|e| PipelineError::sink(self.output.uri_of(&path), e))?;
        self.open = Some(OpenShard { writer, path, relative, rows: 0, bytes: 0 });
        Ok(())
    }

    async fn write_pending(&mut self) -> Result<(), PipelineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(shard) = self.open.as_mut() else {
            return Err(PipelineError::Internal("rows without a shard".into()));
        };
        let batch = R::to_batch(&self.pending)?;
        self.pending.clear();
        let uri = self.output.uri_of(&shard.path);
        shard.writer.write(&batch).await.map_err(|e| PipelineError::sink(uri, e))
    }

    async fn close_shard(&mut self) -> Result<(), PipelineError> {
        self.write_pending().await?;
        let Some(mut shard) = self.open.take() else { return Ok(()) };
        let uri = self.output.uri_of(&shard.path);
        // A failed finish leaves the upload shut down: nothing to abort (object_store refuses), and an incomplete
        // multipart upload is invisible until a bucket lifecycle rule removes it.
        shard.writer.finish().await.map_err(|e| PipelineError::sink(uri, e))?;
        self.finished.push(ShardInfo {
            path: shard.relative,
            table: R::TABLE.name().to_string(),
            rows: shard.rows,
            bytes: shard.writer.bytes_written() as u64,
            schema_version: lyrics_schemas::SCHEMA_VERSION.to_string(),
        });
        crate::failpoint::hit("after-shard", self.unit);
        Ok(())
    }

    /// Completes the unit's last shard and returns every shard written. After an error, [`TableWriter::abort`]
    /// removes what was written.
    pub async fn finish(&mut self) -> Result<Vec<ShardInfo>, PipelineError> {
        self.close_shard().await?;
        Ok(self.finished.clone())
    }

    /// Abandons the unit: the open upload is aborted and finished shards are deleted, so nothing of it stays.
    pub async fn abort(mut self) {
        if let Some(shard) = self.open.take() {
            let _ = shard.writer.into_inner().abort().await;
        }
        for shard in &self.finished {
            let _ = self.output.store.delete(&self.output.child(&shard.path)).await;
        }
    }
}

/// Both tables of one unit.
pub struct UnitWriter {
    pub samples: TableWriter<SampleRow>,
    pub errors: TableWriter<ErrorRow>,
    pub pretrain: TableWriter<PretrainRow>,
    pub instruct: TableWriter<InstructRow>,
}

impl UnitWriter {
    pub fn new(
        output: &Location,
        options: SinkOptions,
        part_bytes: usize,
        unit: u64,
    ) -> Result<Self, PipelineError> {
        Ok(UnitWriter {
            samples: TableWriter::new(output.clone(), options, part_bytes, unit)?,
            errors: TableWriter::new(output.clone(), options, part_bytes, unit)?,
            pretrain: TableWriter::new(output.clone(), options, part_bytes, unit)?,
            instruct: TableWriter::new(output.clone(), options, part_bytes, unit)?,
        })
    }

    /// Completes both tables; on error, aborts the unit so nothing of it stays visible.
    pub async fn finish(mut self) -> Result<Vec<ShardInfo>, PipelineError> {
        let result = async {
            let mut shards = self.samples.finish().await?;
            shards.extend(self.errors.finish().await?);
            shards.extend(self.pretrain.finish().await?);
            shards.extend(self.instruct.finish().await?);
            Ok(shards)
        }
        .await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    pub async fn abort(self) {
        self.samples.abort().await;
        self.errors.abort().await;
        self.pretrain.abort().await;
        self.instruct.abort().await;
    }
}

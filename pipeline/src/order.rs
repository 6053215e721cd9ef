//! Key order within a shard: the rows of every shard are written sorted by `key` (stably: rows of one key keep the
//! order they came in), so that a query for some keys skips the row groups and pages whose statistics rule them
//! out. Sources hand rows over in their own order, and a shard may be far larger than the memory a worker should
//! hold, so:
//!
//! - while a unit's rows come in key order (the usual WebDataset tar, written sorted), they go straight to the
//!   shard: no copy, no temporary file;
//! - the first batch out of order ends that: the shard written so far is complete and sorted, so it is closed
//!   there ([`Added::Cut`]), and the rest of the unit's rows of that table are sorted externally. Rows gather in a
//!   *run* of at most [`RUN_BYTES`] (and a row group's rows); a full run is sorted in memory and spilled to an
//!   anonymous local temporary file as Arrow IPC, in small batches; when the shard closes, a shard of one run is
//!   written from memory, and several are merged, reading one small batch of each at a time.
//!
//! Memory stays at one run plus one small batch per run; the temporary file holds at most one shard's rows and is
//! gone when the shard is written. Where a shard is cut depends only on the rows, so shards stay byte-identical
//! across reruns.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{Seek, SeekFrom};

use arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{concat_batches, interleave_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

use crate::PipelineError;

/// Bytes of rows held in memory before a run is sorted and spilled.
pub(crate) const RUN_BYTES: usize = 16 << 20;

/// Rows per spilled batch and per merged output batch: what the merge holds of each run.
const SPILL_BATCH_ROWS: usize = 64;

/// A spilled run: batches `first..first + batches` of the spill file.
struct Run {
    first: usize,
    batches: usize,
}

/// What became of rows handed to [`KeyOrder::add`].
pub(crate) enum Added {
    /// They follow the rows before them in key order: write them to the shard now.
    Write(RecordBatch),
    /// They are held to be sorted.
    Held,
    /// They break the key order of the rows already written: close the shard there, open the next, and add them
    /// again (they are then held).
    Cut(RecordBatch),
}

/// The rows of one table of one unit on their way to key order.
pub(crate) struct KeyOrder {
    schema: SchemaRef,
    /// Rows still go straight through: every row so far came in key order.
    direct: bool,
    /// The last key written straight through in the open shard (`None`: no row was).
    last_key: Option<String>,
    /// The key column, when the table has one (a table without a `key` keeps its rows' order).
    key: Option<usize>,
    run: Vec<RecordBatch>,
    run_rows: usize,
    run_bytes: usize,
    max_run_rows: usize,
    spill: Option<FileWriter<File>>,
    runs: Vec<Run>,
    spilled_batches: usize,
}

/// The column rows are sorted by: `key`, where the table has it as text.
pub(crate) fn key_index(schema: &Schema) -> Option<usize> {
    schema.index_of(lyrics_schemas::col::KEY).ok().filter(|&i| schema.field(i).data_type() == &DataType::Utf8)
}

fn spill_error(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal(format!("sorting a shard by key (its temporary file): {e}"))
}

impl KeyOrder {
    pub(crate) fn new(schema: SchemaRef, max_run_rows: usize) -> Self {
        let key = key_index(&schema);
        KeyOrder {
            schema,
            direct: true,
            last_key: None,
            key,
            run: Vec::new(),
            run_rows: 0,
            run_bytes: 0,
            max_run_rows: max_run_rows.max(1),
            spill: None,
            runs: Vec::new(),
            spilled_batches: 0,
        }
    }

    /// Adds rows (about `bytes` of them): see [`Added`]. Spills the run when it is full.
    pub(crate) fn add(&mut self, batch: RecordBatch, bytes: usize) -> Result<Added, PipelineError> {
        let Some(key) = self.key else { return Ok(Added::Write(batch)) };
        if self.direct {
            let keys = key_column(&batch, key)?;
            let after_last = match (&self.last_key, keys.is_empty()) {
                (Some(last), false) => last.as_str() <= keys.value(0),
                _ => true,
            };
            let in_order = (1..keys.len()).all(|i| keys.value(i - 1) <= keys.value(i));
            if after_last && in_order {
                if !keys.is_empty() {
                    self.last_key = Some(keys.value(keys.len() - 1).to_string());
                }
                return Ok(Added::Write(batch));
            }
            self.direct = false;
            if self.last_key.is_some() {
                return Ok(Added::Cut(batch));
            }
        }
        self.run_rows += batch.num_rows();
        self.run_bytes += bytes;
        self.run.push(batch);
        if self.run_bytes >= RUN_BYTES || self.run_rows >= self.max_run_rows {
            self.spill_run()?;
        }
        Ok(Added::Held)
    }

    /// The current run, sorted.
    fn sorted_run(&mut self) -> Result<Option<RecordBatch>, PipelineError> {
        if self.run.is_empty() {
            return Ok(None);
        }
        let run = std::mem::take(&mut self.run);
        (self.run_rows, self.run_bytes) = (0, 0);
        let batch = concat_batches(&self.schema, &run).map_err(|e| PipelineError::Internal(e.to_string()))?;
        let Some(key) = self.key else { return Ok(Some(batch)) };
        let keys = key_column(&batch, key)?;
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        // A stable sort: rows of one key stay in the order they came.
        order.sort_by(|&a, &b| keys.value(a as usize).cmp(keys.value(b as usize)));
        if order.windows(2).all(|w| w[0] < w[1]) {
            return Ok(Some(batch));
        }
        take_record_batch(&batch, &UInt32Array::from(order))
            .map(Some)
            .map_err(|e| PipelineError::Internal(e.to_string()))
    }

    fn spill_run(&mut self) -> Result<(), PipelineError> {
        let Some(batch) = self.sorted_run()? else { return Ok(()) };
        if self.spill.is_none() {
            let file = tempfile::tempfile().map_err(spill_error)?;
            self.spill = Some(FileWriter::try_new(file, &self.schema).map_err(spill_error)?);
        }
        let Some(spill) = self.spill.as_mut() else { return Err(spill_error("no spill file")) };
        let first = self.spilled_batches;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = SPILL_BATCH_ROWS.min(batch.num_rows() - offset);
            spill.write(&batch.slice(offset, len)).map_err(spill_error)?;
            offset += len;
            self.spilled_batches += 1;
        }
        self.runs.push(Run { first, batches: self.spilled_batches - first });
        Ok(())
    }

    /// Every row held, in key order, a batch at a time, for the shard that closes; leaves this empty for the next.
    pub(crate) fn drain(&mut self) -> Result<Drain, PipelineError> {
        self.last_key = None;
        if self.spill.is_none() {
            // The shard fit in one run: no temporary file.
            return Ok(Drain::Memory(self.sorted_run()?));
        }
        self.spill_run()?;
        let Some(spill) = self.spill.take() else { return Ok(Drain::Memory(None)) };
        let runs = std::mem::take(&mut self.runs);
        self.spilled_batches = 0;
        let mut file = spill.into_inner().map_err(spill_error)?;
        file.seek(SeekFrom::Start(0)).map_err(spill_error)?;
        let mut reader = FileReader::try_new(file, None).map_err(spill_error)?;
        let merge = Merge::new(&mut reader, runs, self.key.unwrap_or(0))?;
        Ok(Drain::Merge { reader: Box::new(reader), merge, schema: self.schema.clone() })
    }
}

/// A shard's rows in key order, as [`KeyOrder::drain`] gives them.
pub(crate) enum Drain {
    Memory(Option<RecordBatch>),
    Merge { reader: Box<FileReader<File>>, merge: Merge, schema: SchemaRef },
}

impl Drain {
    /// The next rows, `None` after the last.
    pub(crate) fn next_batch(&mut self) -> Result<Option<RecordBatch>, PipelineError> {
        match self {
            Drain::Memory(batch) => Ok(batch.take()),
            Drain::Merge { reader, merge, schema } => merge.next_batch(reader, schema),
        }
    }
}

fn key_column(batch: &RecordBatch, key: usize) -> Result<StringArray, PipelineError> {
    batch
        .column(key)
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| PipelineError::Internal("the key column is not text".into()))
}

/// Where a run stands in the merge: its current batch and row.
struct Cursor {
    batch: RecordBatch,
    keys: StringArray,
    row: usize,
    /// The spill batch after the current one, and the end of the run.
    next: usize,
    end: usize,
}

/// A k-way merge of sorted runs; ties go to the earlier run, which keeps the sort stable.
pub(crate) struct Merge {
    cursors: Vec<Option<Cursor>>,
    /// (key of the cursor's current row, run): the smallest first.
    heap: BinaryHeap<Reverse<(String, usize)>>,
    key: usize,
}

fn read_batch(reader: &mut FileReader<File>, index: usize) -> Result<RecordBatch, PipelineError> {
    reader.set_index(index).map_err(spill_error)?;
    reader.next().ok_or_else(|| spill_error("a spilled batch is missing"))?.map_err(spill_error)
}

impl Merge {
    fn new(reader: &mut FileReader<File>, runs: Vec<Run>, key: usize) -> Result<Self, PipelineError> {
        let mut merge = Merge { cursors: Vec::new(), heap: BinaryHeap::new(), key };
        for (i, run) in runs.into_iter().enumerate() {
            let cursor = if run.batches == 0 {
                None
            } else {
                let batch = read_batch(reader, run.first)?;
                let keys = key_column(&batch, key)?;
                merge.heap.push(Reverse((keys.value(0).to_string(), i)));
                Some(Cursor { batch, keys, row: 0, next: run.first + 1, end: run.first + run.batches })
            };
            merge.cursors.push(cursor);
        }
        Ok(merge)
    }

    /// Up to [`SPILL_BATCH_ROWS`] rows, the next in key order.
    fn next_batch(
        &mut self,
        reader: &mut FileReader<File>,
        schema: &SchemaRef,
    ) -> Result<Option<RecordBatch>, PipelineError> {
        // The batches the picked rows come from: each cursor's batch as it was when its row was picked.
        let mut sources: Vec<RecordBatch> = Vec::new();
        let mut source_of: Vec<Option<usize>> = vec![None; self.cursors.len()];
        let mut picked: Vec<(usize, usize)> = Vec::new();
        while picked.len() < SPILL_BATCH_ROWS {
            let Some(Reverse((_, run))) = self.heap.pop() else { break };
            let Some(cursor) = self.cursors.get_mut(run).and_then(Option::as_mut) else {
                return Err(spill_error("a merge cursor is missing"));
            };
            let source = match source_of[run] {
                Some(source) => source,
                None => {
                    sources.push(cursor.batch.clone());
                    source_of[run] = Some(sources.len() - 1);
                    sources.len() - 1
                }
            };
            picked.push((source, cursor.row));
            cursor.row += 1;
            if cursor.row == cursor.batch.num_rows() {
                if cursor.next == cursor.end {
                    self.cursors[run] = None;
                    continue;
                }
                cursor.batch = read_batch(reader, cursor.next)?;
                cursor.keys = key_column(&cursor.batch, self.key)?;
                cursor.row = 0;
                cursor.next += 1;
                source_of[run] = None;
            }
            self.heap.push(Reverse((cursor.keys.value(cursor.row).to_string(), run)));
        }
        if picked.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&RecordBatch> = sources.iter().collect();
        let merged = interleave_record_batch(&refs, &picked).map_err(|e| PipelineError::Internal(e.to_string()))?;
        // The spill file's schema is the table's; the writer compares metadata too.
        RecordBatch::try_new(schema.clone(), merged.columns().to_vec())
            .map(Some)
            .map_err(|e| PipelineError::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::Field;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("seq", DataType::Int64, false),
        ]))
    }

    fn batch(rows: &[(String, i64)]) -> RecordBatch {
        let keys = StringArray::from_iter_values(rows.iter().map(|(k, _)| k.as_str()));
        let seq = Int64Array::from_iter_values(rows.iter().map(|(_, s)| *s));
        RecordBatch::try_new(schema(), vec![Arc::new(keys), Arc::new(seq)]).unwrap()
    }

    fn rows_of(batches: &[RecordBatch]) -> Vec<(String, i64)> {
        let mut rows = Vec::new();
        for b in batches {
            let keys = key_column(b, 0).unwrap();
            let seq = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            rows.extend((0..b.num_rows()).map(|i| (keys.value(i).to_string(), seq.value(i))));
        }
        rows
    }

    /// What a table writer makes of `rows` added `add_rows` at a time: the shards, as lists of rows.
    fn shards(
        rows: &[(String, i64)],
        add_rows: usize,
        run_rows: usize,
        shard_rows: usize,
    ) -> Vec<Vec<(String, i64)>> {
        let mut order = KeyOrder::new(schema(), run_rows);
        let (mut shards, mut open): (Vec<Vec<(String, i64)>>, Vec<RecordBatch>) = (Vec::new(), Vec::new());
        let mut open_rows = 0;
        let close = |order: &mut KeyOrder, open: &mut Vec<RecordBatch>, shards: &mut Vec<_>| {
            let mut drain = order.drain().unwrap();
            while let Some(b) = drain.next_batch().unwrap() {
                open.push(b);
            }
            shards.push(rows_of(&std::mem::take(open)));
        };
        for chunk in rows.chunks(add_rows.max(1)) {
            match order.add(batch(chunk), chunk.len()).unwrap() {
                Added::Write(b) => open.push(b),
                Added::Held => {}
                Added::Cut(b) => {
                    close(&mut order, &mut open, &mut shards);
                    open_rows = 0;
                    assert!(matches!(order.add(b, chunk.len()).unwrap(), Added::Held));
                }
            }
            open_rows += chunk.len();
            if open_rows >= shard_rows {
                close(&mut order, &mut open, &mut shards);
                open_rows = 0;
            }
        }
        close(&mut order, &mut open, &mut shards);
        shards.retain(|s| !s.is_empty());
        shards
    }

    proptest! {
        /// Whatever the run, batch and shard sizes: every shard holds a stretch of the rows as they came, as a
        /// stable sort by key orders it; rows in key order are never cut; sorted, spilled and merged alike.
        #[test]
        fn every_shard_is_a_stretch_of_the_rows_stably_sorted_by_key(
            keys in proptest::collection::vec("[a-e]{0,3}", 0..400),
            sorted_first in any::<bool>(),
            add_rows in 1usize..80,
            run_rows in 1usize..300,
            shard_rows in 1usize..500,
        ) {
            let mut keys = keys;
            if sorted_first {
                keys.sort();
            }
            let rows: Vec<(String, i64)> = keys.into_iter().enumerate().map(|(i, k)| (k, i as i64)).collect();
            let shards = shards(&rows, add_rows, run_rows, shard_rows);
            let mut offset = 0;
            for shard in &shards {
                let mut expected = rows[offset..offset + shard.len()].to_vec();
                expected.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(shard, &expected);
                offset += shard.len();
            }
            prop_assert_eq!(offset, rows.len());
            if sorted_first {
                // Sorted rows are cut only where the shard is full.
                let full = rows.len().div_ceil(shard_rows.div_ceil(add_rows) * add_rows);
                prop_assert!(shards.len() <= full.max(1), "{} shards", shards.len());
            }
        }
    }

    #[test]
    fn a_table_without_a_key_keeps_its_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("seq", DataType::Int64, false)]));
        let mut order = KeyOrder::new(schema.clone(), 2);
        for s in [3i64, 1, 2] {
            let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![s]))]).unwrap();
            assert!(matches!(order.add(b, 1).unwrap(), Added::Write(_)));
        }
    }
}

//! The `objects` and `tags` tables of a `lyrics-prep sql` session: one row per element of a list-of-structs column
//! of `samples` (`objects`, `tags`), beside columns of its sample (`key`, the image's `width` and `height`).
//!
//! They read the samples shards themselves instead of being SQL views over `unnest`: a view decodes every field of
//! every element (each mask's RLE string, for a query that counts labels) and copies the elements through the
//! generic unnest. Here a scan asks the Parquet reader for the leaves the query names only, and slices the struct's
//! child arrays by the list's offsets; a sample-level column is repeated once per element with one `take`. The rows
//! are those of `SELECT key, unnest(objects) …`: a NULL or empty list gives none, a NULL element a row of NULLs.
//!
//! Each scan splits the shards over the session's target partitions, read in turn within a partition; filters are
//! applied above the scan by DataFusion.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, StructArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::ProjectionMask;
// The object_store adapter is deprecated upstream in favour of hand-written readers; the pipeline's Parquet source
// explains why it stays.
#[allow(deprecated)]
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};

/// Rows per batch the reader decodes; a batch's elements are a few times more.
const BATCH_ROWS: usize = 8192;

/// One of the table's columns: a column of the sample, or a field of the list's element struct.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    Sample(String),
    Element(String),
}

/// A flattened list column of the samples shards, as a table.
#[derive(Debug)]
pub struct Flattened {
    schema: SchemaRef,
    columns: Vec<Column>,
    /// The list column of `samples`.
    list: String,
    store: Arc<dyn ObjectStore>,
    /// The shards, with their sizes (which spare the reader a request for each).
    files: Vec<(Path, u64)>,
}

impl Flattened {
    /// The table of `list`'s elements, with the sample's `leading` columns before the element's fields and
    /// `trailing` after them, over `files` whose merged schema is `samples`. `None` when `samples` has no such list
    /// of structs (an output from before the refiner existed).
    pub fn new(
        samples: &Schema,
        list: &str,
        leading: &[&str],
        trailing: &[&str],
        store: Arc<dyn ObjectStore>,
        files: Vec<(Path, u64)>,
    ) -> Option<Flattened> {
        let element = match samples.field_with_name(list).ok()?.data_type() {
            DataType::List(item) => match item.data_type() {
                DataType::Struct(fields) => fields.clone(),
                _ => return None,
            },
            _ => return None,
        };
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        let sample = |name: &str| samples.field_with_name(name).ok().map(|f| f.data_type().clone());
        for name in leading {
            fields.push(Field::new(*name, sample(name)?, true));
            columns.push(Column::Sample(name.to_string()));
        }
        for field in element.iter() {
            fields.push(Field::new(field.name(), field.data_type().clone(), true));
            columns.push(Column::Element(field.name().clone()));
        }
        for name in trailing {
            fields.push(Field::new(*name, sample(name)?, true));
            columns.push(Column::Sample(name.to_string()));
        }
        Some(Flattened {
            schema: Arc::new(Schema::new(Fields::from(fields))),
            columns,
            list: list.to_string(),
            store,
            files,
        })
    }
}

#[async_trait]
impl TableProvider for Flattened {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&indices)?);
        let partitions = state.config().target_partitions().clamp(1, self.files.len().max(1));
        let mut groups = vec![Vec::new(); partitions];
        for (i, file) in self.files.iter().enumerate() {
            groups[i % partitions].push(file.clone());
        }
        let scan = Arc::new(Scan {
            schema: schema.clone(),
            columns: indices.iter().map(|&i| self.columns[i].clone()).collect(),
            list: self.list.clone(),
            store: self.store.clone(),
        });
        let streams: Vec<Arc<dyn PartitionStream>> = groups
            .into_iter()
            .map(|files| Arc::new(FlattenStream { scan: scan.clone(), files }) as Arc<dyn PartitionStream>)
            .collect();
        let exec = StreamingTableExec::try_new(schema, streams, None, Vec::new(), false, limit)?;
        Ok(Arc::new(exec))
    }
}

/// What one scan reads: the projected columns, from every shard alike.
#[derive(Debug)]
struct Scan {
    schema: SchemaRef,
    columns: Vec<Column>,
    list: String,
    store: Arc<dyn ObjectStore>,
}

/// One partition of a scan: its shards, read one after the other.
#[derive(Debug)]
struct FlattenStream {
    scan: Arc<Scan>,
    files: Vec<(Path, u64)>,
}

impl PartitionStream for FlattenStream {
    fn schema(&self) -> &SchemaRef {
        &self.scan.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let scan = self.scan.clone();
        let batches = futures::stream::iter(self.files.clone())
            .then(move |(path, size)| scan.clone().open(path, size))
            .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.scan.schema.clone(), batches))
    }
}

type Batches = futures::stream::BoxStream<'static, Result<RecordBatch>>;

impl Scan {
    /// The flattened batches of one shard, read with the Parquet leaves of the projected columns only.
    #[allow(deprecated)]
    async fn open(self: Arc<Self>, path: Path, size: u64) -> Result<Batches> {
        let failed =
            |e: parquet::errors::ParquetError| DataFusionError::Execution(format!("cannot read {path}: {e}"));
        let reader = ParquetObjectReader::new(self.store.clone(), path.clone()).with_file_size(size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(failed)?;
        let leaves = self.leaves(builder.parquet_schema());
        let mask = ProjectionMask::leaves(builder.parquet_schema(), leaves);
        let stream = builder.with_projection(mask).with_batch_size(BATCH_ROWS).build().map_err(failed)?;
        let path = path.to_string();
        Ok(stream
            .map(move |batch| {
                let batch = batch.map_err(|e| DataFusionError::Execution(format!("cannot read {path}: {e}")))?;
                self.flatten(&batch)
            })
            .boxed())
    }

    /// The leaves to read: those of the sample's columns, and of the element fields asked for. The list's offsets
    /// come with any of its leaves, so a scan that names no field (`count(*)`) reads the smallest one.
    fn leaves(&self, parquet: &parquet::schema::types::SchemaDescriptor) -> Vec<usize> {
        let mut leaves = Vec::new();
        let mut element_leaves = Vec::new();
        for (i, leaf) in parquet.columns().iter().enumerate() {
            let parts = leaf.path().parts();
            let Some(top) = parts.first() else { continue };
            if self.columns.contains(&Column::Sample(top.clone())) {
                leaves.push(i);
            } else if *top == self.list && parts.len() >= 4 {
                // `objects.list.element.label`: the list's repeated group and its element come between.
                element_leaves.push(i);
                if self.columns.contains(&Column::Element(parts[3].clone())) {
                    leaves.push(i);
                }
            }
        }
        if !self.columns.iter().any(|c| matches!(c, Column::Element(_))) {
            let smallest =
                element_leaves.iter().copied().min_by_key(|&i| width_rank(parquet.column(i).physical_type()));
            leaves.extend(smallest);
        }
        leaves.sort_unstable();
        leaves
    }

    /// One row per element of the batch's lists.
    fn flatten(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let list = batch.column_by_name(&self.list).and_then(|c| c.as_list_opt::<i32>());
        let (parents, elements) = match list {
            Some(list) => elements_of(list)?,
            None => (UInt32Array::from(Vec::<u32>::new()), None),
        };
        let count = parents.len();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (column, field) in self.columns.iter().zip(self.schema.fields()) {
            let array = match column {
                Column::Sample(name) => batch
                    .column_by_name(name)
                    .map(|values| arrow::compute::take(values, &parents, None))
                    .transpose()?,
                Column::Element(name) => elements
                    .as_ref()
                    .and_then(|elements| elements.column_by_name(name).map(|c| with_parent_nulls(c, elements)))
                    .transpose()?,
            };
            let array = match array {
                Some(a) if a.data_type() == field.data_type() => a,
                Some(a) => arrow::compute::cast(&a, field.data_type())?,
                // A shard written before the field existed: NULLs, as a merged schema reads it.
                None => arrow::array::new_null_array(field.data_type(), count),
            };
            arrays.push(array);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(count));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)?)
    }
}

/// For each element of `list`'s valid entries, the row it belongs to; and the elements, in that order (`None` when
/// the list holds no structs).
fn elements_of(list: &arrow::array::ListArray) -> Result<(UInt32Array, Option<StructArray>)> {
    let offsets = list.value_offsets();
    let mut parents = Vec::with_capacity(list.values().len());
    let mut picked: Vec<u32> = Vec::new();
    // Arrow allows a NULL list to cover elements; they are not its rows, so then the elements are taken one by one.
    let contiguous = (0..list.len()).all(|i| list.is_valid(i) || offsets[i] == offsets[i + 1]);
    for i in 0..list.len() {
        if list.is_valid(i) {
            let (start, end) = (offsets[i] as u32, offsets[i + 1] as u32);
            parents.extend(std::iter::repeat_n(i as u32, (end - start) as usize));
            if !contiguous {
                picked.extend(start..end);
            }
        }
    }
    let Some(values) = list.values().as_struct_opt() else { return Ok((UInt32Array::from(parents), None)) };
    let elements = if contiguous {
        let (start, end) = (offsets[0] as usize, offsets[list.len()] as usize);
        values.slice(start, end - start)
    } else {
        arrow::compute::take(values, &UInt32Array::from(picked), None)?.as_struct().clone()
    };
    Ok((UInt32Array::from(parents), Some(elements)))
}

/// `field` of `elements`, NULL where the element itself is.
fn with_parent_nulls(field: &ArrayRef, elements: &StructArray) -> Result<ArrayRef> {
    let Some(parent) = elements.nulls() else { return Ok(field.clone()) };
    let nulls = arrow::buffer::NullBuffer::union(field.nulls(), Some(parent));
    Ok(arrow::array::make_array(field.to_data().into_builder().nulls(nulls).build()?))
}

/// Fixed-width leaves first, the narrowest first: the cheapest to read for offsets alone.
fn width_rank(kind: parquet::basic::Type) -> u8 {
    use parquet::basic::Type;
    match kind {
        Type::BOOLEAN => 0,
        Type::INT32 | Type::FLOAT => 1,
        Type::INT64 | Type::DOUBLE => 2,
        Type::INT96 | Type::FIXED_LEN_BYTE_ARRAY => 3,
        Type::BYTE_ARRAY => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Int32Array, ListArray, StringArray};
    use arrow::buffer::{NullBuffer, OffsetBuffer};
    use datafusion::prelude::{ParquetReadOptions, SessionContext};

    fn element_fields() -> Fields {
        Fields::from(vec![Field::new("label", DataType::Utf8, true), Field::new("score", DataType::Float32, true)])
    }

    fn elements(labels: &[Option<&str>], scores: &[Option<f32>], valid: Option<Vec<bool>>) -> StructArray {
        let columns: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from(labels.to_vec())), Arc::new(Float32Array::from(scores.to_vec()))];
        StructArray::new(element_fields(), columns, valid.map(NullBuffer::from))
    }

    fn samples(keys: &[&str], list: ListArray) -> RecordBatch {
        let widths: Vec<i32> = (0..keys.len() as i32).map(|i| 100 + i).collect();
        let schema = Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("width", DataType::Int32, false),
            Field::new("objects", list.data_type().clone(), true),
        ]);
        let columns: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from(keys.to_vec())), Arc::new(Int32Array::from(widths)), Arc::new(list)];
        RecordBatch::try_new(Arc::new(schema), columns).unwrap()
    }

    fn list(offsets: Vec<i32>, values: StructArray, valid: Vec<bool>) -> ListArray {
        let item = Arc::new(Field::new("item", DataType::Struct(element_fields()), true));
        ListArray::new(item, OffsetBuffer::new(offsets.into()), Arc::new(values), Some(NullBuffer::from(valid)))
    }

    fn table(batch: &RecordBatch) -> Flattened {
        let store = Arc::new(object_store::memory::InMemory::new());
        Flattened::new(&batch.schema(), "objects", &["key"], &["width"], store, Vec::new()).unwrap()
    }

    fn scan_of(table: &Flattened) -> Scan {
        Scan {
            schema: table.schema.clone(),
            columns: table.columns.clone(),
            list: "objects".into(),
            store: table.store.clone(),
        }
    }

    fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let column = batch.column_by_name(name).unwrap().as_string::<i32>();
        column.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn rows_are_the_valid_lists_elements_and_a_null_element_is_a_row_of_nulls() {
        // Row 1 is a NULL list that still covers element 2, which Arrow allows: that element is no row.
        let values = elements(
            &[Some("a0"), Some("a1"), Some("hidden"), None, Some("d1")],
            &[Some(0.1), Some(0.2), Some(0.3), Some(0.4), Some(0.5)],
            Some(vec![true, true, true, false, true]),
        );
        let batch =
            samples(&["a", "b", "c", "d"], list(vec![0, 2, 3, 3, 5], values, vec![true, false, true, true]));
        let table = table(&batch);
        let out = scan_of(&table).flatten(&batch).unwrap();
        assert_eq!(out.num_rows(), 4);
        let keys: Vec<_> = strings(&out, "key").into_iter().map(Option::unwrap).collect();
        assert_eq!(keys, ["a", "a", "d", "d"]);
        assert_eq!(strings(&out, "label"), [Some("a0".into()), Some("a1".into()), None, Some("d1".into())]);
        let scores = out.column_by_name("score").unwrap().as_primitive::<arrow::datatypes::Float32Type>();
        // The NULL element's field holds 0.4 underneath; its row reads NULL.
        assert_eq!(scores.iter().collect::<Vec<_>>(), [Some(0.1), Some(0.2), None, Some(0.5)]);
        let widths = out.column_by_name("width").unwrap().as_primitive::<arrow::datatypes::Int32Type>();
        assert_eq!(widths.values().to_vec(), [100, 100, 103, 103]);
    }

    #[tokio::test]
    async fn a_scan_reads_what_unnest_gives_for_any_projection() {
        let values = elements(
            &[Some("x"), Some("y"), None, Some("z"), Some("x")],
            &[Some(0.5), None, Some(0.7), Some(0.9), Some(0.1)],
            Some(vec![true, true, false, true, true]),
        );
        let batch =
            samples(&["k0", "k1", "k2", "k3"], list(vec![0, 2, 2, 3, 5], values, vec![true, false, true, true]));
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        // Two shards, so that the scan spreads over partitions.
        for (i, part) in [batch.slice(0, 2), batch.slice(2, 2)].iter().enumerate() {
            let path = dir.path().join(format!("part-{i}.parquet"));
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), part.schema(), None)
                    .unwrap();
            writer.write(part).unwrap();
            writer.close().unwrap();
            files.push((Path::from_filesystem_path(&path).unwrap(), std::fs::metadata(&path).unwrap().len()));
        }
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        let ctx = SessionContext::new();
        ctx.register_parquet("samples", dir.path().to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
        let schema = ctx.table_provider("samples").await.unwrap().schema();
        let flat = Flattened::new(&schema, "objects", &["key"], &["width"], store, files).unwrap();
        ctx.register_table("flat", Arc::new(flat)).unwrap();
        let view = "SELECT key, o['label'] AS label, o['score'] AS score, width FROM (SELECT key, width, unnest(objects) AS o FROM samples)";
        ctx.register_table("unnested", ctx.sql(view).await.unwrap().into_view()).unwrap();
        let queries = [
            "SELECT * FROM {} ORDER BY key, label",
            "SELECT label FROM {} ORDER BY 1",
            "SELECT key, score FROM {} ORDER BY 1, 2",
            "SELECT count(*) FROM {}",
            "SELECT width, count(*) FROM {} GROUP BY 1 ORDER BY 1",
        ];
        let show = |b: &[RecordBatch]| arrow::util::pretty::pretty_format_batches(b).unwrap().to_string();
        for query in queries {
            let mine = ctx.sql(&query.replace("{}", "flat")).await.unwrap().collect().await.unwrap();
            let theirs = ctx.sql(&query.replace("{}", "unnested")).await.unwrap().collect().await.unwrap();
            assert_eq!(show(&mine), show(&theirs), "{query}");
        }
        // k0's two, k2's NULL element, k3's two; k1's NULL list none.
        let all = ctx.sql("SELECT count(*) FROM flat").await.unwrap().collect().await.unwrap();
        assert_eq!(arrow::util::display::array_value_to_string(all[0].column(0), 0).unwrap(), "5");
    }
}

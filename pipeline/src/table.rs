//! Tables as data: the set of tables a job writes, declared before it starts.
//!
//! Every job writes `samples` (one row per accepted item) and `errors` (one row per refused item). Stages that
//! make more products (grounded text, conversations, embeddings) declare a table each with
//! [`Tables::declare`] and get a typed [`TableHandle`]; with it they add rows to a sample's
//! [`Products`](crate::Products), and the sink writes them as shards of that table beside the sample's own row,
//! committed with the same unit. The engine names no product table: adding one is a row type with a
//! [`TableRow`] impl in `schemas` and one `declare` call where its stage is built.

use std::any::Any;
use std::marker::PhantomData;

use arrow::array::RecordBatch;
use lyrics_schemas::{ErrorRow, SampleRow, Table, TableRow};

use crate::PipelineError;
use crate::item::Products;

/// The index of a declared table within its [`Tables`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableId(pub(crate) usize);

/// A typed handle on a declared table: the only way to add rows of it to a sample.
pub struct TableHandle<R> {
    id: TableId,
    _row: PhantomData<fn(R)>,
}

impl<R> Clone for TableHandle<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for TableHandle<R> {}

impl<R: TableRow> TableHandle<R> {
    /// Adds `row` to the sample's rows of this table.
    pub fn push(&self, products: &mut Products, row: R) {
        products.entries.push((self.id, Box::new(row), 1));
    }
}

/// One table: its name (the folder under the output, `lyrics.table` in its files) and how its rows are buffered.
pub(crate) struct TableDecl {
    pub table: Table,
    pub buffer: fn() -> Box<dyn RowBuffer>,
}

/// The tables of a job, in the order their shards are written and listed: `samples`, `errors`, then the declared.
pub struct Tables {
    pub(crate) decls: Vec<TableDecl>,
}

pub(crate) const SAMPLES: TableId = TableId(0);
pub(crate) const ERRORS: TableId = TableId(1);

impl Default for Tables {
    fn default() -> Self {
        Tables {
            decls: vec![
                TableDecl { table: Table::Samples, buffer: buffer_of::<SampleRow> },
                TableDecl { table: Table::Errors, buffer: buffer_of::<ErrorRow> },
            ],
        }
    }
}

impl Tables {
    /// Declares the table of row type `R`; refused when it is already declared.
    pub fn declare<R: TableRow>(&mut self) -> Result<TableHandle<R>, PipelineError> {
        if self.decls.iter().any(|d| d.table == R::TABLE) {
            return Err(PipelineError::Config(format!("the table `{}` is declared twice", R::TABLE.name())));
        }
        self.decls.push(TableDecl { table: R::TABLE, buffer: buffer_of::<R> });
        Ok(TableHandle { id: TableId(self.decls.len() - 1), _row: PhantomData })
    }

    /// The names of the tables, in order.
    pub fn names(&self) -> Vec<String> {
        self.decls.iter().map(|d| d.table.name().to_string()).collect()
    }
}

/// Rows of one table waiting to become a batch.
pub(crate) trait RowBuffer: Send {
    /// Adds one row; returns its approximate size in bytes.
    fn push(&mut self, row: Box<dyn Any + Send>) -> Result<usize, PipelineError>;
    fn len(&self) -> usize;
    /// The buffered rows as one batch, leaving the buffer empty.
    fn take_batch(&mut self) -> Result<RecordBatch, PipelineError>;
}

fn buffer_of<R: TableRow>() -> Box<dyn RowBuffer> {
    Box::new(Rows::<R>(Vec::new()))
}

struct Rows<R>(Vec<R>);

impl<R: TableRow> RowBuffer for Rows<R> {
    fn push(&mut self, row: Box<dyn Any + Send>) -> Result<usize, PipelineError> {
        // Rows reach a table only through its typed handle, so this holds by construction.
        let row = row.downcast::<R>().map_err(|_| {
            PipelineError::Internal(format!("a row of another type reached the `{}` table", R::TABLE.name()))
        })?;
        let bytes = row.approx_bytes();
        self.0.push(*row);
        Ok(bytes)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn take_batch(&mut self) -> Result<RecordBatch, PipelineError> {
        let batch = R::to_batch(&self.0).map_err(|e| PipelineError::Internal(e.to_string()));
        self.0.clear();
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lyrics_schemas::{InstructRow, PretrainRow};

    #[test]
    fn declared_tables_follow_the_two_every_job_writes() {
        let mut tables = Tables::default();
        let pretrain = tables.declare::<PretrainRow>().unwrap();
        tables.declare::<InstructRow>().unwrap();
        assert_eq!(tables.names(), ["samples", "errors", "pretrain", "instruct"]);
        assert!(tables.declare::<PretrainRow>().is_err());
        let mut products = Products::default();
        pretrain.push(&mut products, PretrainRow::default());
        assert_eq!(products.len(), 1);
        let mut buffer = (tables.decls[pretrain.id.0].buffer)();
        let (_, row, _) = products.entries.pop().unwrap();
        buffer.push(row).unwrap();
        assert_eq!(buffer.take_batch().unwrap().num_rows(), 1);
        // A row of the wrong type is refused, not written.
        let mut samples = (tables.decls[SAMPLES.0].buffer)();
        assert!(samples.push(Box::new(PretrainRow::default())).is_err());
    }
}

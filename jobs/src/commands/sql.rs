//! `lyrics-prep sql`: SQL over a job's output with DataFusion, straight from its store. Every table of the job
//! (`samples`, `errors`, `pretrain`, `instruct`, and any other its stages declared) is registered from the shards
//! its [`OutputView`] shows: the manifest's, or, while the job is still running, the committed units', so a query
//! never sees a shard of an unfinished unit. A table with no shard yet is registered empty with its schema, so
//! queries stay valid on any output.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use lyrics_pipeline::{Location, OutputView, StorageOptions, StoreRegistry, redact};
use lyrics_schemas::Table;

use super::runtime;
use crate::{SqlArgs, SqlFormat};

/// A session with the output's tables registered: the tables the job declared (and the four built-in ones, so
/// queries stay valid on any output), each from its visible shards.
async fn session(output: &Location, uri: &str) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    ctx.register_object_store(output.base(), output.store.clone());
    let view = OutputView::open(output)
        .await?
        .with_context(|| format!("{} holds no lyrics-prep output (no _lyrics/plan.json)", redact(uri)))?;
    if !view.complete() {
        eprintln!(
            "lyrics-prep sql: the job is not finished: querying the {} of {} units committed so far",
            view.units_done,
            view.units_total()
        );
    }
    let mut names = view.tables();
    for table in Table::ALL {
        if !names.iter().any(|n| n == table.name()) {
            names.push(table.name().to_string());
        }
    }
    for name in names {
        let paths: Vec<String> = view.shards_of(&name).map(|s| output.uri_of(&output.child(&s.path))).collect();
        if !paths.is_empty() {
            let frame = ctx
                .read_parquet(paths, ParquetReadOptions::default())
                .await
                .with_context(|| format!("cannot read the `{name}` shards of {}", redact(uri)))?;
            ctx.register_table(name.as_str(), frame.into_view())?;
        } else if let Some(table) = Table::from_name(&name) {
            let empty = MemTable::try_new(table.schema(), vec![vec![]])?;
            ctx.register_table(name.as_str(), Arc::new(empty))?;
        }
    }
    Ok(ctx)
}

pub fn sql(args: SqlArgs) -> Result<ExitCode> {
    if args.query.trim().is_empty() {
        bail!("the query is empty; e.g. lyrics-prep sql --output out/ \"SELECT count(*) FROM samples\"");
    }
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let batches = runtime()?.block_on(async {
        let ctx = session(&output, &args.output).await?;
        let frame = ctx.sql(&args.query).await.context("the query does not plan")?;
        frame.collect().await.context("the query failed")
    })?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format {
        SqlFormat::Table => {
            let text = arrow::util::pretty::pretty_format_batches(&batches)?;
            writeln!(out, "{text}")?;
        }
        SqlFormat::Csv => {
            let mut writer = arrow::csv::Writer::new(&mut out);
            for batch in &batches {
                writer.write(batch)?;
            }
        }
        SqlFormat::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
            writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
            writer.finish()?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

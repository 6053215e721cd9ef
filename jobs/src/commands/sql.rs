//! `lyrics-prep sql`: SQL over a job's output with DataFusion, straight from its store. The four tables (`samples`,
//! `errors`, `pretrain`, `instruct`) are registered from the shards the manifest lists, or, while the job is still
//! running, from the committed units' markers, so a query never sees a shard of an unfinished unit. A table with
//! no shard yet is registered empty with its schema, so queries stay valid on any output.
//!
//! Queries are read-only: DDL (`CREATE`, `DROP`), DML (`INSERT`, `COPY … TO`) and statements (`SET`, transactions)
//! are refused before anything runs, so a query can neither write files nor change the session.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use lyrics_pipeline::{Location, StorageOptions, StoreRegistry, commit, redact};
use lyrics_schemas::Table;

use super::runtime;
use crate::{SqlArgs, SqlFormat};

/// The shards of each table that a query may read: the manifest's, else the committed units'.
async fn committed_shards(output: &Location, uri: &str) -> Result<(BTreeMap<String, Vec<String>>, Option<String>)> {
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(manifest) = commit::read_manifest(output).await? {
        for shard in manifest.shards {
            tables.entry(shard.table).or_default().push(shard.path);
        }
        return Ok((tables, None));
    }
    let plan = commit::read_plan(output).await?.with_context(|| {
        format!("{} holds no lyrics-prep output (no _lyrics/plan.json nor manifest)", redact(uri))
    })?;
    let committed = commit::committed_units(output).await?;
    for unit in plan.plan.units.iter().filter(|u| committed.contains(&u.id)) {
        let Some(marker) = commit::read_marker(output, unit.id).await? else { continue };
        for shard in marker.shards {
            tables.entry(shard.table).or_default().push(shard.path);
        }
    }
    let note = format!(
        "the job is not finished: querying the {} of {} units committed so far",
        committed.len(),
        plan.plan.units.len()
    );
    Ok((tables, Some(note)))
}

/// A session with the output's tables registered.
async fn session(output: &Location, uri: &str) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    ctx.register_object_store(output.base(), output.store.clone());
    let (shards, note) = committed_shards(output, uri).await?;
    if let Some(note) = note {
        eprintln!("lyrics-prep sql: {note}");
    }
    for table in Table::ALL {
        let name = table.name();
        match shards.get(name).filter(|s| !s.is_empty()) {
            Some(paths) => {
                let urls: Vec<String> = paths.iter().map(|p| output.uri_of(&output.child(p))).collect();
                let frame = ctx
                    .read_parquet(urls, ParquetReadOptions::default())
                    .await
                    .with_context(|| format!("cannot read the `{name}` shards of {}", redact(uri)))?;
                ctx.register_table(name, frame.into_view())?;
            }
            None => {
                let empty = MemTable::try_new(table.schema(), vec![vec![]])?;
                ctx.register_table(name, Arc::new(empty))?;
            }
        }
    }
    Ok(ctx)
}

/// Plans `query` read-only. Every error is one line of DataFusion's reason: it is turned into a message here, not
/// kept as a source, since DataFusion's messages already hold their causes and a chain would print them again.
async fn plan(ctx: &SessionContext, query: &str) -> Result<DataFrame> {
    let state = ctx.state();
    // What `SessionContext::sql_with_options` does, in two steps, so that a refusal reads as one.
    let planned = match state.create_logical_plan(query).await {
        Ok(plan) => plan,
        Err(e) => {
            if let Some(table) = missing_table(ctx, query) {
                let tables: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
                bail!(
                    "the query does not plan: no table `{table}` in the output; its tables are {}",
                    tables.join(", ")
                );
            }
            bail!("the query does not plan: {}", message(e));
        }
    };
    let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    read_only.verify_plan(&planned).map_err(|e| {
        anyhow::anyhow!(
            "the query is refused: lyrics-prep sql is read-only (no DDL, DML, COPY or SET): {}",
            message(e)
        )
    })?;
    ctx.execute_logical_plan(planned).await.map_err(|e| anyhow::anyhow!("the query does not plan: {}", message(e)))
}

/// The first table `query` reads that the session does not have.
fn missing_table(ctx: &SessionContext, query: &str) -> Option<String> {
    let state = ctx.state();
    let statement = state.sql_to_statement(query, &state.config().options().sql_parser.dialect).ok()?;
    let tables = state.resolve_table_references(&statement).ok()?;
    tables.into_iter().find(|t| !ctx.table_exist(t.clone()).unwrap_or(true)).map(|t| t.to_string())
}

/// DataFusion's reason for `error`, once, without a backtrace; a parser error as the parser says it.
fn message(error: DataFusionError) -> String {
    match error.find_root() {
        DataFusionError::SQL(parser, _) => parser.to_string(),
        _ => error.strip_backtrace(),
    }
}

pub fn sql(args: SqlArgs) -> Result<ExitCode> {
    if args.query.trim().is_empty() {
        bail!("the query is empty; e.g. lyrics-prep sql --output out/ \"SELECT count(*) FROM samples\"");
    }
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let batches = runtime()?.block_on(async {
        let ctx = session(&output, &args.output).await?;
        let frame = plan(&ctx, &args.query).await?;
        frame.collect().await.map_err(|e| anyhow::anyhow!("the query failed: {}", message(e)))
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

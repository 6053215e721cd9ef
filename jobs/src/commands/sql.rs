//! `lyrics-prep sql`: SQL over a job's output with DataFusion, straight from its store. Every table of the job
//! (`samples`, `errors`, `pretrain`, `instruct`, and any other its stages declared) is registered from the shards
//! its [`OutputView`] shows: the manifest's, or, while the job is still running, the committed units', so a query
//! never sees a shard of an unfinished unit. A table with no shard yet is registered empty with its schema, so
//! queries stay valid on any output.
//!
//! Queries are read-only: DDL (`CREATE`, `DROP`), DML (`INSERT`, `COPY … TO`) and statements (`SET`, transactions)
//! are refused before anything runs, so a query can neither write files nor change the session.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use lyrics_pipeline::{Location, OutputView, StorageOptions, StoreRegistry, redact};
use lyrics_schemas::Table;

use super::runtime;
use crate::{SqlArgs, SqlFormat};

/// A session with the output's tables registered: the tables the job declared (and the four built-in ones, so
/// queries stay valid on any output), each from its visible shards.
pub(crate) async fn session(output: &Location, uri: &str, config: SessionConfig) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(config);
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
    crate::sqlfns::register(&ctx);
    let samples = ctx.table_provider("samples").await?.schema();
    let files: Vec<_> = view.shards_of("samples").map(|s| (output.child(&s.path), s.bytes)).collect();
    // Each table is named after the list column of `samples` it flattens.
    for (list, leading, trailing) in [("objects", &["key"][..], &["width", "height"][..]), ("tags", &["key"], &[])]
    {
        let table =
            crate::sqlviews::Flattened::new(&samples, list, leading, trailing, output.store.clone(), files.clone());
        if let Some(table) = table {
            ctx.register_table(list, Arc::new(table))?;
        }
    }
    Ok(ctx)
}

/// Plans `query` read-only. Every error is one line of DataFusion's reason: it is turned into a message here, not
/// kept as a source, since DataFusion's messages already hold their causes and a chain would print them again.
pub(crate) async fn plan(ctx: &SessionContext, query: &str) -> Result<DataFrame> {
    let state = ctx.state();
    // What `SessionContext::sql_with_options` does, in two steps, so that a refusal reads as one.
    let planned = match state.create_logical_plan(query).await {
        Ok(plan) => plan,
        Err(e) => {
            if let Some(table) = missing_table(ctx, query) {
                let mut tables: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
                tables.extend(["objects (a view)", "tags (a view)"]);
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
pub(crate) fn message(error: DataFusionError) -> String {
    match error.find_root() {
        DataFusionError::SQL(parser, _) => parser.to_string(),
        _ => error.strip_backtrace(),
    }
}

/// The file `--to` names: itself when it ends in `.parquet`, else `part-000000.parquet` in that folder.
fn result_file(to: &str) -> String {
    if to.to_ascii_lowercase().ends_with(".parquet") {
        to.to_string()
    } else {
        format!("{}/part-000000.parquet", to.trim_end_matches('/'))
    }
}

/// Refuses a `--to` that would write among the output's shards or its bookkeeping: inside a table's folder (where
/// a `part-….parquet` would replace a committed shard), in `_lyrics/`, or over `_SUCCESS`.
fn refuse_target_inside(
    target: &Location,
    to: &str,
    output: &Location,
    uri: &str,
    ctx: &SessionContext,
) -> Result<()> {
    let Some(rest) = super::within(target, output) else { return Ok(()) };
    // A file beside the tables (`out/result.parquet`) or in a folder of its own is the reader's; what is named as
    // a table or as the job's bookkeeping is not.
    let reserved = match rest.as_slice() {
        [] => Some("the output itself".to_string()),
        [name, ..] if name == "_lyrics" || name == "_SUCCESS" => Some(format!("its `{name}`")),
        [name, ..]
            if Table::from_name(name).is_some()
                || ctx.table_exist(TableReference::bare(name.as_str())).unwrap_or(true) =>
        {
            Some(format!("its `{name}` table"))
        }
        _ => None,
    };
    if let Some(what) = reserved {
        bail!(
            "--to {} would write {} inside the output {uri}, into {what}: a query must not change what it reads; \
             write the result outside the output's tables and _lyrics/",
            redact(to),
            redact(&target.uri()),
            uri = redact(uri),
        );
    }
    Ok(())
}

/// Streams the result into one Parquet file at `target` (a multipart upload: it appears whole or not at all);
/// returns the rows written.
async fn write_result(frame: DataFrame, target: &Location) -> Result<u64> {
    use futures::StreamExt;
    let schema: arrow::datatypes::SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let uri = redact(&target.uri());
    let upload = object_store::buffered::BufWriter::new(target.store.clone(), target.path.clone());
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::default()))
        .build();
    let mut writer = parquet::arrow::AsyncArrowWriter::try_new(upload, schema, Some(properties))
        .with_context(|| format!("cannot write {uri}"))?;
    let mut stream =
        frame.execute_stream().await.map_err(|e| anyhow::anyhow!("the query failed: {}", message(e)))?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| anyhow::anyhow!("the query failed: {}", message(e)))?;
        rows += batch.num_rows() as u64;
        writer.write(&batch).await.with_context(|| format!("cannot write {uri}"))?;
    }
    writer.close().await.with_context(|| format!("cannot write {uri}"))?;
    Ok(rows)
}

pub fn sql(args: SqlArgs) -> Result<ExitCode> {
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let runtime = runtime()?;
    let ctx = runtime.block_on(session(&output, &args.output, SessionConfig::new()))?;
    let Some(query) = args.query.as_deref() else {
        return prompt(&runtime, &ctx, args.format, args.timing);
    };
    if query.trim().is_empty() {
        bail!("the query is empty; e.g. lyrics-prep sql --output out/ \"SELECT count(*) FROM samples\"");
    }
    if let Some(to) = &args.to {
        let target = registry.locate(&result_file(to))?;
        refuse_target_inside(&target, to, &output, &args.output, &ctx)?;
        let rows = runtime.block_on(async { write_result(plan(&ctx, query).await?, &target).await })?;
        eprintln!("wrote {rows} rows to {}", redact(&target.uri()));
        return Ok(ExitCode::SUCCESS);
    }
    runtime.block_on(timed(args.timing, print_result(&ctx, query, args.format)))?;
    Ok(ExitCode::SUCCESS)
}

/// Awaits `statement`, and with `timing` prints how long it took, as psql's `\timing` and DuckDB's `.timer` do.
async fn timed<T>(timing: bool, statement: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let start = std::time::Instant::now();
    let result = statement.await;
    if timing {
        eprintln!("time: {:.1} ms", start.elapsed().as_secs_f64() * 1000.0);
    }
    result
}

/// Runs `query` and prints its result in `format`.
async fn print_result(ctx: &SessionContext, query: &str, format: SqlFormat) -> Result<()> {
    let frame = plan(ctx, query).await?;
    let schema: arrow::datatypes::SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut batches = frame.collect().await.map_err(|e| anyhow::anyhow!("the query failed: {}", message(e)))?;
    // An empty result still says what its columns are.
    if batches.is_empty() {
        batches.push(arrow::array::RecordBatch::new_empty(schema));
    }
    let mut out = crate::stdout::lock();
    match format {
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
    Ok(())
}

/// `~/.cache/lyrics-prep/sql_history` (under `XDG_CACHE_HOME` when set).
fn history_file() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("lyrics-prep").join("sql_history"))
}

/// The interactive prompt: statements end with `;` and may span lines; history is kept in the cache folder. A
/// failing statement is reported and the prompt goes on. Also reads statements piped into standard input.
fn prompt(
    runtime: &tokio::runtime::Runtime,
    ctx: &SessionContext,
    format: SqlFormat,
    timing: bool,
) -> Result<ExitCode> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new().context("cannot start the prompt")?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    // History is a person's: kept beside the model cache, and not for piped scripts.
    let history = interactive.then(history_file).flatten();
    if let Some(file) = &history {
        let _ = editor.load_history(file);
    }
    if interactive {
        eprintln!(
            "lyrics-prep sql: end each statement with `;`, Ctrl-D to leave; tables: samples, errors, pretrain, instruct, objects, tags"
        );
    }
    let mut statement = String::new();
    let mut failed = false;
    loop {
        let line = match editor.readline(if statement.is_empty() { "sql> " } else { "...> " }) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("cannot read the prompt"),
        };
        statement.push_str(&line);
        statement.push('\n');
        let Some(end) = statement.trim_end().strip_suffix(';') else { continue };
        let query = end.trim().to_string();
        statement.clear();
        if query.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(format!("{query};"));
        if let Err(e) = runtime.block_on(timed(timing, print_result(ctx, &query, format))) {
            if crate::stdout::closed() {
                // Nobody reads the results any more: the rest of the script has no one to print to.
                break;
            }
            eprintln!("error: {}", lyrics_pipeline::store::redact_secrets(&format!("{e:#}")));
            failed = true;
        }
    }
    if let Some(file) = &history {
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(file);
    }
    // Piped statements are a script: it fails when one of them did.
    Ok(if failed && !interactive { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

//! `lyrics-prep status`: a job's progress, read from its output alone (so it works from any machine).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use lyrics_pipeline::{OutputView, StorageOptions, StoreRegistry};
use serde::Serialize;

use super::runtime;
use crate::{FinalizeArgs, StatusArgs};

#[derive(Debug, Serialize)]
struct Status {
    output: String,
    units_total: u64,
    units_done: u64,
    items: u64,
    rows: u64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    warnings_by_kind: BTreeMap<String, u64>,
    /// Rows of every table, `samples` and `errors` included.
    tables: BTreeMap<String, u64>,
    bytes: u64,
    complete: bool,
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let view = runtime()?.block_on(OutputView::open(&output))?.with_context(|| {
        format!("{} holds no lyrics-prep job (no _lyrics/plan.json)", lyrics_pipeline::redact(&args.output))
    })?;
    let mut out = crate::stdout::lock();
    if args.unfinished {
        let workers: Vec<String> = view.unfinished_workers().iter().map(u64::to_string).collect();
        writeln!(out, "{}", workers.join(","))?;
        return Ok(ExitCode::SUCCESS);
    }
    let status = Status {
        output: lyrics_pipeline::redact(&args.output),
        units_total: view.units_total(),
        units_done: view.units_done,
        items: view.items,
        rows: view.rows("samples"),
        errors: view.rows("errors"),
        errors_by_kind: view.errors_by_kind.clone(),
        warnings_by_kind: view.warnings_by_kind.clone(),
        tables: view.tables().into_iter().map(|t| (view.rows(&t), t)).map(|(n, t)| (t, n)).collect(),
        bytes: view.bytes(),
        complete: view.complete(),
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        writeln!(out, "output   {}", status.output)?;
        writeln!(
            out,
            "units    {} / {} done{}",
            status.units_done,
            status.units_total,
            if status.complete { " (complete)" } else { "" }
        )?;
        writeln!(out, "items    {}", status.items)?;
        writeln!(out, "rows     {}", status.rows)?;
        writeln!(out, "errors   {}", status.errors)?;
        for (kind, n) in &status.errors_by_kind {
            writeln!(out, "  {kind:<20} {n}")?;
        }
        if !status.warnings_by_kind.is_empty() {
            writeln!(out, "warnings {}", status.warnings_by_kind.values().sum::<u64>())?;
            for (kind, n) in &status.warnings_by_kind {
                writeln!(out, "  {kind:<20} {n}")?;
            }
        }
        writeln!(out, "tables")?;
        for (table, n) in &status.tables {
            writeln!(out, "  {table:<20} {n}")?;
        }
        writeln!(out, "bytes    {}", status.bytes)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn finalize(args: FinalizeArgs) -> Result<ExitCode> {
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let shown = lyrics_pipeline::redact(&args.output);
    runtime()?.block_on(async {
        let view = OutputView::open(&output)
            .await?
            .with_context(|| format!("{shown} holds no lyrics-prep job (no _lyrics/plan.json)"))?;
        // Staging files killed writers left: all of them in a finished output, else those of committed units.
        let committed = (!view.complete()).then_some(&view.committed);
        let swept = lyrics_pipeline::commit::sweep_staging(&output, &view.plan.tables, committed).await?;
        if swept > 0 {
            eprintln!("{shown}: removed {swept} staging files that killed writers left behind");
        }
        // Units a killed `run --retry-errors` was amending: completed or undone (no worker is at work now).
        let sink = view.plan.sink.unwrap_or_default();
        let recovered = lyrics_pipeline::retry::recover(&output, &sink, |_| true).await?;
        if recovered > 0 {
            eprintln!("{shown}: finished what killed retries left in {recovered} units");
        }
        if view.complete() {
            eprintln!("{shown} is complete already");
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(finalized) = lyrics_pipeline::commit::finalize(&output, &view.plan).await? {
            if let Some(notice) = finalized.notice() {
                eprintln!("{shown}: {notice}");
            }
            eprintln!("{shown} is complete: _lyrics/manifest.json and _SUCCESS written");
            return Ok(ExitCode::SUCCESS);
        }
        let workers: Vec<String> = view.unfinished_workers().iter().map(u64::to_string).collect();
        eprintln!(
            "{shown}: {} of {} units committed; workers {} still own uncommitted units (rerun them)",
            view.units_done,
            view.units_total(),
            workers.join(",")
        );
        anyhow::Ok(ExitCode::from(1))
    })
}

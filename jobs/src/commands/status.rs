//! `lyrics-prep status`: a job's progress, read from its output alone (so it works from any machine).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result};
use lyrics_pipeline::{StorageOptions, StoreRegistry, commit};
use serde::Serialize;

use super::runtime;
use crate::StatusArgs;

#[derive(Debug, Serialize)]
struct Status {
    output: String,
    units_total: u64,
    units_done: u64,
    items: u64,
    rows: u64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    bytes: u64,
    complete: bool,
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let registry = StoreRegistry::new(StorageOptions::default());
    let output = registry.locate(&args.output)?;
    let status = runtime()?.block_on(async {
        let plan = commit::read_plan(&output).await?.with_context(|| {
            format!("{} holds no lyrics-prep job (no _lyrics/plan.json)", lyrics_pipeline::redact(&args.output))
        })?;
        let committed = commit::committed_units(&output).await?;
        let mut status = Status {
            output: lyrics_pipeline::redact(&args.output),
            units_total: plan.plan.units.len() as u64,
            units_done: 0,
            items: 0,
            rows: 0,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            bytes: 0,
            complete: false,
        };
        for unit in plan.plan.units.iter().filter(|u| committed.contains(&u.id)) {
            let Some(marker) = commit::read_marker(&output, unit.id).await? else { continue };
            status.units_done += 1;
            status.items += marker.items;
            status.rows += marker.rows;
            status.errors += marker.errors;
            status.bytes += marker.shards.iter().map(|s| s.bytes).sum::<u64>();
            for (kind, n) in marker.errors_by_kind {
                *status.errors_by_kind.entry(kind).or_default() += n;
            }
        }
        status.complete = commit::read_manifest(&output).await?.is_some();
        anyhow::Ok(status)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("output   {}", status.output);
        println!(
            "units    {} / {} done{}",
            status.units_done,
            status.units_total,
            if status.complete { " (complete)" } else { "" }
        );
        println!("items    {}", status.items);
        println!("rows     {}", status.rows);
        println!("errors   {}", status.errors);
        for (kind, n) in &status.errors_by_kind {
            println!("  {kind:<20} {n}");
        }
        println!("bytes    {}", status.bytes);
    }
    Ok(ExitCode::SUCCESS)
}

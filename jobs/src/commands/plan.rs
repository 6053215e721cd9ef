//! `lyrics-prep plan`: list the input and print its work units.

use std::process::ExitCode;

use anyhow::Result;
use lyrics_pipeline::plan;

use super::{input_of, load_spec, registry, runtime};
use crate::PlanArgs;

pub fn plan(args: PlanArgs) -> Result<ExitCode> {
    let spec = load_spec(&args.job)?;
    let input = input_of(&spec)?;
    let registry = registry(&spec);
    let plan = runtime()?.block_on(plan::plan(&registry, &input, spec.input.format, &spec.input.source))?.plan;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("input   {}", lyrics_pipeline::redact(&input));
    println!("format  {}", plan.format.name());
    println!("units   {}", plan.units.len());
    println!("spec    {}", spec.hash());
    for unit in plan.units.iter().take(20) {
        let what = if unit.files.is_empty() {
            unit.object.clone()
        } else {
            format!("{} files from {}", unit.files.len(), unit.files[0])
        };
        let range =
            if unit.range == [0, 0] { String::new() } else { format!(" [{}..{})", unit.range[0], unit.range[1]) };
        println!("  {:>6}  {what}{range}", unit.id);
    }
    if plan.units.len() > 20 {
        println!("  ... {} more (--json prints them all)", plan.units.len() - 20);
    }
    Ok(ExitCode::SUCCESS)
}

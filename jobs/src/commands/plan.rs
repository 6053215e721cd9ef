//! `lyrics-prep plan`: list the input and print its work units.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use lyrics_pipeline::plan;

use super::{input_of, load_spec, refuse_output_inside_input, registry, runtime};
use crate::PlanArgs;

pub fn plan(args: PlanArgs) -> Result<ExitCode> {
    let spec = load_spec(&args.job)?;
    let input = input_of(&spec)?;
    let registry = registry(&spec);
    if let Some(output) = &spec.output.uri {
        refuse_output_inside_input(&registry, &input, output)?;
    }
    let plan = runtime()?.block_on(plan::plan(&registry, &input, spec.input.format, &spec.input.source))?.plan;
    let mut out = crate::stdout::lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "input   {}", lyrics_pipeline::redact(&input))?;
    writeln!(out, "format  {}", plan.format.name())?;
    writeln!(out, "units   {}", plan.units.len())?;
    writeln!(out, "spec    {}", spec.hash())?;
    let location = registry.locate(&input)?;
    let shown = |object: &str| as_given(&input, location.path.as_ref(), object);
    for unit in plan.units.iter().take(20) {
        let what = if unit.files.is_empty() {
            shown(&unit.object)
        } else {
            format!("{} files from {}", unit.files.len(), shown(&unit.files[0]))
        };
        let range =
            if unit.range == [0, 0] { String::new() } else { format!(" [{}..{})", unit.range[0], unit.range[1]) };
        writeln!(out, "  {:>6}  {what}{range}", unit.id)?;
    }
    if plan.units.len() > 20 {
        writeln!(out, "  ... {} more (--json prints them all)", plan.units.len() - 20)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `object` (a path within the input's store) as the user named the input: `/data/x` and `data/x/a.tar` give
/// `/data/x/a.tar`, `s3://b/p/` and `p/a.tar` give `s3://b/p/a.tar`.
fn as_given(input: &str, input_path: &str, object: &str) -> String {
    let given = lyrics_pipeline::redact(input);
    match object.strip_prefix(input_path) {
        Some("") => given,
        Some(rest) => format!("{}/{}", given.trim_end_matches('/'), rest.trim_start_matches('/')),
        None => object.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::as_given;

    #[test]
    fn units_are_shown_as_the_input_was_given() {
        assert_eq!(as_given("/data/x", "data/x", "data/x/shard.tar"), "/data/x/shard.tar");
        assert_eq!(as_given("/data/x/", "data/x", "data/x/shard.tar"), "/data/x/shard.tar");
        assert_eq!(as_given("s3://b/p/", "p", "p/a/shard.tar"), "s3://b/p/a/shard.tar");
        assert_eq!(as_given("/data/x.tar", "data/x.tar", "data/x.tar"), "/data/x.tar");
        assert_eq!(as_given("rel/dir", "work/rel/dir", "work/rel/dir/s.tar"), "rel/dir/s.tar");
    }
}

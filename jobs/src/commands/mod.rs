//! One module per subcommand, plus what they share: loading the job spec and building the runtime.

pub mod demo;
pub mod export;
pub mod plan;
pub mod render;
pub mod run;
pub mod sql;
pub mod status;

use std::sync::Arc;

use anyhow::{Context, Result};
use lyrics_pipeline::StoreRegistry;

use crate::JobArgs;
use crate::spec::JobSpec;

/// The spec from `--config` (or the defaults) with the flags applied.
pub fn load_spec(args: &JobArgs) -> Result<JobSpec> {
    let mut spec = match &args.config {
        Some(path) => JobSpec::load(path)?,
        None => JobSpec::default(),
    };
    if let Some(input) = &args.input {
        spec.input.uri = Some(input.clone());
    }
    if let Some(format) = args.format {
        spec.input.format = Some(format);
    }
    Ok(spec)
}

pub fn input_of(spec: &JobSpec) -> Result<String> {
    spec.input.uri.clone().context("no input: pass --input URI or set input.uri in the job spec")
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("lyrics-io")
        .build()
        .context("cannot start the async runtime")
}

pub fn registry(spec: &JobSpec) -> Arc<StoreRegistry> {
    Arc::new(StoreRegistry::new(spec.storage))
}

//! `lyrics-prep run`: the main job.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lyrics_operators::image::ImageOperator;
use lyrics_pipeline::{Metrics, RunConfig, Stage, Worker};

use super::{input_of, load_spec, registry, runtime};
use crate::RunArgs;
use crate::progress::{ProgressMode, Reporter, summary};
use crate::stages::DecodeStage;

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let mode = args.progress.resolved();
    init_logging(mode);
    let mut spec = load_spec(&args.job)?;
    if let Some(output) = &args.output {
        spec.output.uri = Some(output.clone());
    }
    if let Some(threads) = args.threads {
        spec.pipeline.threads = threads;
    }
    spec.validate()?;
    let input = input_of(&spec)?;
    let output =
        spec.output.uri.clone().context("no output: pass --output URI or set output.uri in the job spec")?;
    let worker = Worker::resolve(args.worker.as_deref(), args.workers, |name| std::env::var(name).ok())?;
    let threads = match spec.pipeline.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("decode-{i}"))
        .build()
        .context("cannot start the decode threads")?;
    let operator =
        ImageOperator { limits: spec.decode, resize: spec.resize, encode: spec.encode, keep_pixels: false };
    let stages: Vec<Box<dyn Stage>> = vec![Box::new(DecodeStage::new(operator, Arc::new(pool)))];
    let mut source = spec.input.source.clone();
    source.max_image_bytes = spec.decode.max_bytes;
    let config = RunConfig {
        input,
        output,
        format: spec.input.format,
        source,
        sink: spec.output.sink,
        batch_size: spec.pipeline.batch_size,
        channel_capacity: spec.pipeline.channel_capacity,
        worker,
        spec_hash: spec.hash(),
        force: args.force,
    };
    let metrics = Arc::new(Metrics::default());
    let registry = registry(&spec);
    let reporter = Reporter::start(mode, metrics.clone(), Duration::from_secs_f64(args.log_every.max(0.1)));
    let report = runtime()?.block_on(lyrics_pipeline::run(config, registry, stages, metrics.clone()));
    drop(reporter);
    let report = report?;
    eprint!("{}", summary(&report, &metrics, &format!("{}/{}", worker.index, worker.count)));
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn init_logging(mode: ProgressMode) {
    crate::logging::init(if mode == ProgressMode::Bar { "warn" } else { "info" });
}

//! `lyrics-prep run`: the main job.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lyrics_operators::image::ImageOperator;
use lyrics_operators::text::TextOptions;
use lyrics_pipeline::{Metrics, RetryKinds, RunConfig, Stage, Tables, Worker, redact};

use super::{input_of, load_spec, refuse_output_inside_input, registry, runtime};
use crate::RunArgs;
use crate::progress::{ProgressMode, Reporter, summary};
use crate::stages::{
    DecodeStage, LayoutSlot, PendingRefiner, RefineInferStage, State, refine_finish, refine_prepare, text,
};

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
    if let Some(models) = &args.models {
        spec.refine.models = Some(models.clone());
    }
    if let Some(device) = &args.device {
        spec.refine.device = device.clone();
    }
    spec.validate()?;
    let retry_errors = if args.retry_errors.is_empty() { None } else { Some(RetryKinds::new(&args.retry_errors)?) };
    let input = input_of(&spec)?;
    let output =
        spec.output.uri.clone().context("no output: pass --output URI or set output.uri in the job spec")?;
    let worker = if args.claim {
        Worker::default()
    } else {
        Worker::resolve(args.worker.as_deref(), args.workers, |name| std::env::var(name).ok())?
    };
    if args.claim && !(args.lease_s.is_finite() && args.lease_s >= 1.0) {
        anyhow::bail!("--lease-s {}: a lease lasts at least 1 second", args.lease_s);
    }
    let threads = match spec.pipeline.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("decode-{i}"))
        .build()
        .context("cannot start the decode threads")?;
    let pool = Arc::new(pool);
    let metrics = Arc::new(Metrics::default());
    let registry = registry(&spec);
    refuse_output_inside_input(&registry, &input, &output)?;
    let runtime = runtime()?;
    let refining = spec.refine.models.is_some();
    let operator =
        ImageOperator { limits: spec.decode, resize: spec.resize, encode: spec.encode, keep_pixels: refining };
    let mut stages: Vec<Box<dyn Stage<State>>> =
        vec![Box::new(DecodeStage::new(operator, pool.clone(), metrics.clone()))];
    let mut tables = Tables::default();
    let mut refiner_description = String::new();
    if let Some(models_uri) = &spec.refine.models {
        let refiner = runtime.block_on(start_refiner(&spec, models_uri, &registry, mode))?;
        refiner_description = refiner.description.clone();
        let description: Arc<str> = Arc::from(refiner.description.as_str());
        stages.push(Box::new(refine_prepare(refiner.layout, pool.clone()).measured(metrics.clone())));
        stages.push(Box::new(RefineInferStage::new(refiner.sessions, metrics.clone())));
        stages.push(Box::new(refine_finish(description, pool.clone()).measured(metrics.clone())));
        if spec.text.enabled {
            let options = TextOptions {
                formats: spec.text.formats.clone(),
                inline_format: spec.text.inline_format,
                instruct: spec.text.instruct.clone(),
            };
            stages.push(Box::new(text(Arc::new(options), pool.clone(), &mut tables)?.measured(metrics.clone())));
        }
        // Model inputs are large: smaller batches and queues keep memory bounded.
        spec.pipeline.batch_size = spec.refine.batch_size;
        spec.pipeline.channel_capacity = spec.pipeline.channel_capacity.min(2);
    }
    let mut source = spec.input.source.clone();
    source.max_image_bytes = spec.decode.max_bytes;
    let resolved =
        registry.locate(&input).with_context(|| format!("cannot open the input {}", redact(&input)))?.uri();
    let (spec_hash, earlier_spec_hash) = spec.hashes_with(&refiner_description, &resolved);
    let config = RunConfig {
        input,
        output,
        format: spec.input.format,
        source,
        sink: spec.output.sink,
        batch_size: spec.pipeline.batch_size,
        channel_capacity: spec.pipeline.channel_capacity,
        worker,
        spec_hash,
        earlier_spec_hash,
        force: args.force,
        claim: args.claim.then(|| Duration::from_secs_f64(args.lease_s)),
        units: (!args.unit.is_empty()).then(|| args.unit.clone()),
        retry_errors,
    };
    let reporter = Reporter::start(mode, metrics.clone(), Duration::from_secs_f64(args.log_every.max(0.1)));
    let report = runtime.block_on(lyrics_pipeline::run(config, registry, stages, tables, metrics.clone()));
    drop(reporter);
    let report = report?;
    let who = if args.claim { "claiming".to_string() } else { format!("{}/{}", worker.index, worker.count) };
    eprint!("{}", summary(&report, &metrics, &who));
    if args.summary == crate::SummaryFormat::Json {
        let printed = writeln!(crate::stdout::lock(), "{}", crate::progress::summary_json(&report, &metrics, &who));
        // A reader that left does not change how the run went.
        if let Err(e) = printed
            && !crate::stdout::closed()
        {
            return Err(e).context("cannot print the summary");
        }
    }
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn init_logging(mode: ProgressMode) {
    crate::logging::init(if mode == ProgressMode::Bar { "warn" } else { "info" });
}

/// A refiner on its way: what it is (known at once), its sessions (possibly still loading) and the layout of its
/// graphs (published once they are loaded).
struct StartedRefiner {
    description: String,
    sessions: PendingRefiner,
    layout: LayoutSlot,
}

/// Publishes the layout of the loading thread's outcome, and a failure if that thread ends without one (a panic),
/// so the stages waiting for it never wait forever.
struct Publish(LayoutSlot);

impl Drop for Publish {
    fn drop(&mut self) {
        let _ = self.0.set(Err("loading the models failed".into()));
    }
}

/// Reads the models file and makes its files local (downloading what the cache lacks); then loads the sessions, on
/// the CPU in the background, so that loading overlaps planning; the run waits for them before it writes anything
/// ([`lyrics_pipeline::Stage::ready`]), so models that do not load (a corrupt graph, a wrong contract, an empty tag
/// list) leave no output behind. CUDA sessions load before the run starts, so a device that cannot be used fails
/// the run before anything is written.
async fn start_refiner(
    spec: &crate::spec::JobSpec,
    models_uri: &str,
    registry: &lyrics_pipeline::StoreRegistry,
    mode: ProgressMode,
) -> Result<StartedRefiner> {
    use lyrics_operators::models::{Device, Refiner, describe};
    let device = Device::parse(&spec.refine.device)?;
    let models = crate::models::read_models_file(models_uri, registry).await?;
    let cache = crate::models::cache_dir(spec.refine.cache.as_deref().map(std::path::Path::new));
    let paths = crate::models::pull(&models, &cache, registry, mode == ProgressMode::Bar).await?;
    let description = describe(&models.config, &paths);
    let threads = spec.refine.threads;
    let config = models.config.clone();
    let uri = lyrics_pipeline::redact(models_uri);
    let layout: LayoutSlot = Arc::default();
    let publish = Publish(layout.clone());
    let load = move || {
        let loaded = Refiner::load(&config, &paths, device, threads);
        let _ = publish.0.set(match &loaded {
            Ok(refiner) => {
                tracing::info!(device = %device, models = %uri, "refiner loaded");
                Ok(refiner.layout())
            }
            Err(e) => Err(format!("cannot load the models: {e}")),
        });
        drop(publish);
        loaded
    };
    let sessions = match device {
        Device::Cpu => PendingRefiner::Loading(std::thread::Builder::new().name("model-load".into()).spawn(load)?),
        Device::Cuda(_) => PendingRefiner::Ready(Box::new(
            tokio::task::spawn_blocking(load)
                .await
                .context("loading the models panicked")?
                .with_context(|| format!("cannot load the models of {}", lyrics_pipeline::redact(models_uri)))?,
        )),
    };
    Ok(StartedRefiner { description, sessions, layout })
}

//! The `lyrics-prep` command: job specs, subcommands, logging and progress. It wires the engine
//! (`lyrics-pipeline`) to the operators (`lyrics-operators`) and does nothing else of its own.
//!
//! A new stage is a `lyrics_pipeline::Stage<stages::State>` in `stages.rs` (per-sample work as a
//! `stages::PerSample`, which catches panics per item), added to the list `commands::run` builds; state it hands to
//! later stages is a variant of `State`, and rows of a new table go through the `TableHandle` its `declare` call
//! returns. A new subcommand is a module under `commands/` and a variant of `Command`; a reader of an output uses
//! `lyrics_pipeline::OutputView`.

mod commands;
mod gallery;
mod logging;
mod models;
mod progress;
mod spec;
mod sqlfns;
mod sqlviews;
mod stages;
mod stdout;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use lyrics_pipeline::InputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "lyrics-prep",
    version,
    long_version = long_version(),
    about = "Prepare grounded vision-language training data: stream image-text corpora from object storage into sharded Parquet, resumably"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--version`: the version, then the codec backends this binary was built with.
fn long_version() -> &'static str {
    let text = format!("{}\n{}", env!("CARGO_PKG_VERSION"), lyrics_operators::image::backends());
    Box::leak(text.into_boxed_str())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job: read the input, decode and validate every image, write sharded Parquet. Resumes where a
    /// previous run with the same job spec stopped.
    Run(RunArgs),
    /// List the input and print its work units, without processing anything.
    Plan(PlanArgs),
    /// Print the progress of a job from its output: units done, rows, errors.
    Status(StatusArgs),
    /// Fetch, list or verify the files of a models file (cached with SHA-256 checks).
    Models(ModelsArgs),
    /// Write a finished job's instruct table as the JSON files LLaVA-style trainers read.
    Export(ExportArgs),
    /// Query a job's output with SQL (DataFusion): tables samples, errors, pretrain, instruct.
    Sql(SqlArgs),
    /// Write the manifest and _SUCCESS of a job whose units are all committed (what the last worker does; run it
    /// after an array job in case that worker was lost). Exit status 1, naming the unfinished workers, otherwise.
    Finalize(FinalizeArgs),
    /// Draw a static HTML gallery of a job's output: annotated thumbnails, texts, conversations, error cards.
    Render(RenderArgs),
    /// The whole recipe on the bundled sample corpus, on the CPU: ingest, refine, grounded text, instructions,
    /// gallery.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct FinalizeArgs {
    /// The job's output URI or path.
    #[arg(long)]
    pub output: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the corpus, the models, the job's output and the gallery.
    #[arg(long, default_value = "demo")]
    pub to: String,
    /// ISNet weights (`scripts/fetch-isnet.sh` puts them here). When the file exists, the demo runs the recipe a
    /// second time with the `salient_crop` segmenter on them, masking each box with the real model instead of
    /// the fixture SAM, into its own output and gallery.
    #[arg(long, default_value = ".models/isnet_medium.onnx")]
    pub isnet: String,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The job's output URI or path.
    #[arg(long)]
    pub output: String,
    /// A SQL predicate over `samples` choosing the samples shown (then error cards are left out), e.g.
    /// "array_length(objects) >= 3".
    #[arg(long = "where")]
    pub r#where: Option<String>,
    /// Show at most this many samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Cards per page.
    #[arg(long, default_value_t = 100)]
    pub page_size: usize,
    /// Folder to write the gallery into (index.html, page-N.html, thumbs/).
    #[arg(long)]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The job's output URI or path.
    #[arg(long)]
    pub output: String,
    /// How to print the result: an aligned table, CSV (scalar columns only), or one JSON object per line.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SqlFormat,
    /// Write the result as Parquet to this URI or path instead of printing it (a `.parquet` file, or a folder
    /// that gets `part-000000.parquet`); `run --input` reads it as it is.
    #[arg(long)]
    pub to: Option<String>,
    /// Print each statement's time on standard error (`time: 12.3 ms`): planning, running and printing its
    /// result, the catalog and process start not included. Piped statements are timed one by one.
    #[arg(long)]
    pub timing: bool,
    /// The query, e.g. "SELECT label, count(*) FROM objects GROUP BY 1". Without one, an interactive prompt
    /// (statements end with `;`; history kept), which also reads statements piped into standard input.
    pub query: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SqlFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The job's output URI or path.
    #[arg(long)]
    output: String,
    /// llava-json: one JSON array (llava.json); jsonl: one conversation per line (instruct.jsonl); swift:
    /// ms-swift's grounding format (swift.jsonl); internvl: InternVL's fine-tuning JSONL (internvl.jsonl).
    #[arg(long, value_enum, default_value = "llava-json")]
    format: ExportFormat,
    /// Folder to write into.
    #[arg(long)]
    to: String,
    /// write: the images go to TO/images/; none: the JSON names them only.
    #[arg(long, value_enum, default_value = "write")]
    images: ExportImages,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    LlavaJson,
    Jsonl,
    Swift,
    Internvl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportImages {
    Write,
    None,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    action: ModelsAction,
    /// The models file (path or URI), e.g. examples/models/public.toml. Required: it decides what is downloaded,
    /// so none is assumed.
    #[arg(long, global = true)]
    models: Option<String>,
    /// Cache folder for downloaded files (default: LYRICS_CACHE, else ~/.cache/lyrics-prep/models).
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// Download every file the cache lacks and check its SHA-256.
    Pull,
    /// List the files, their sources and whether they are local or cached.
    List,
    /// Recompute the SHA-256 of every file and compare with the expected one.
    Verify,
}

/// The job's input and spec, shared by `run` and `plan`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Input: a URI (s3://, az://, gs://, http(s)://, file://) or a path, naming a file or a prefix.
    #[arg(long)]
    input: Option<String>,
    /// Input format: webdataset, parquet, jsonl, csv, coco or images; inferred from file extensions when absent.
    #[arg(long, value_parser = parse_format)]
    format: Option<InputFormat>,
    /// Job spec (TOML). Flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Output: a URI or a path (a folder or prefix).
    #[arg(long)]
    output: Option<String>,
    /// This worker's share of the units, as INDEX/COUNT (takes units u with u mod COUNT == INDEX).
    #[arg(long)]
    worker: Option<String>,
    /// Worker count, for schedulers that export only the index (Kubernetes Indexed Jobs' JOB_COMPLETION_INDEX).
    #[arg(long)]
    workers: Option<u64>,
    /// Share the units with any number of other workers by claiming them (no index): a worker claims an
    /// uncommitted unit with a lease it renews while it works, and takes over a unit whose lease ran out.
    #[arg(long, conflicts_with_all = ["worker", "workers"])]
    claim: bool,
    /// Process only these units (repeatable; ids as `plan` prints them), e.g. one task per unit on Ray.
    #[arg(long, conflicts_with_all = ["worker", "workers", "claim"])]
    unit: Vec<u64>,
    /// Seconds a claim's lease lasts without renewal (renewed every third of it).
    #[arg(long, default_value_t = 60.0, requires = "claim")]
    lease_s: f64,
    /// Delete an output written by a different job spec or input instead of refusing to resume it.
    #[arg(long)]
    force: bool,
    /// Read again the items of committed units whose error rows are of these kinds (comma-separated, e.g.
    /// timeout,connect,http_5xx,http_429; http_5xx is any 5xx status), and rewrite only those units.
    #[arg(long, value_delimiter = ',', value_name = "KINDS", conflicts_with_all = ["claim", "force"])]
    retry_errors: Vec<String>,
    /// Decode threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the visual refiner with this models file (path or URI), e.g. examples/models/fixtures.toml.
    #[arg(long)]
    models: Option<String>,
    /// Device of the refiner's sessions: cpu or cuda:N. CUDA that cannot be used is an error, never a CPU fallback.
    #[arg(long)]
    device: Option<String>,
    /// Progress display: a bar on a terminal, periodic log lines otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::ProgressMode,
    /// Seconds between progress log lines when there is no terminal.
    #[arg(long, default_value_t = 10.0)]
    log_every: f64,
    /// The summary when the run ends: text on standard error, or also one JSON object on standard output (units,
    /// items, rows per table, errors and warnings by kind, bytes, seconds), for the programs that launch runs.
    #[arg(long, value_enum, default_value = "text")]
    summary: SummaryFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Print the whole plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The job's output URI or path.
    #[arg(long)]
    output: String,
    /// Print only the indices of the workers that still own uncommitted units, comma-separated, as
    /// `sbatch --array=` takes them (nothing when every unit is committed).
    #[arg(long)]
    unfinished: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_format(text: &str) -> Result<InputFormat, String> {
    InputFormat::from_name(text).ok_or_else(|| {
        format!("unknown format `{text}`; allowed: {}", InputFormat::ALL.map(InputFormat::name).join(", "))
    })
}

/// Keeps peak memory independent of corpus size under glibc. Buffers here are allocated on one thread and freed on
/// another (decode threads, I/O threads, the writer moving between runtime workers), and glibc's per-thread arenas
/// (eight a core) plus its self-raising mmap threshold let that fragment the heap: peak RSS grew 3.4x from 1,000
/// to 10,000 images. Two arenas and a fixed 1 MiB mmap threshold (so row groups and upload buffers go back to the
/// system when freed) keep it flat: 125 MiB at 2,000 images, 127 at 20,000 in the ingest benchmark. One arena was
/// flatter still (96 and 98 MiB), but it serialised the two decode threads on its lock: in alternating runs two
/// gave 0.92-0.95x the wall time at the medians and fewer context switches, though one full benchmark run at
/// 20,000 images did not show the gain (BENCHMARKS.md). The per-image buffers stay
/// below the threshold. A setting given to glibc in the environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
/// or `GLIBC_TUNABLES`) is kept.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value, env, tunable) in [
        (libc::M_ARENA_MAX, 2, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
        (libc::M_MMAP_THRESHOLD, 1 << 20, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
    ] {
        if !glibc_setting_given(env, tunable) {
            // SAFETY: mallopt only sets allocator parameters; it runs before any other thread exists.
            unsafe { libc::mallopt(param, value) };
        }
    }
}

/// Whether the environment sets this glibc malloc parameter, by its own variable or in `GLIBC_TUNABLES`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_setting_given(env: &str, tunable: &str) -> bool {
    std::env::var_os(env).is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|list| lists_tunable(&list, tunable))
}

/// Whether a `GLIBC_TUNABLES` value (`name=value:name=value`) names `tunable`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn lists_tunable(list: &str, tunable: &str) -> bool {
    list.split(':').any(|item| item.split('=').next() == Some(tunable))
}

/// Switches ONNX Runtime's telemetry off before the library is loaded. Microsoft's builds open an event database
/// under `~/.cache/Microsoft` when the environment is created, before the API's `DisableTelemetryEvents` can be
/// called, so only the library's own `ORT_DISABLE_TELEMETRY` keeps a run from writing outside its output and cache.
/// A value already set is left as it is.
fn disable_onnxruntime_telemetry() {
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        // SAFETY: called first thing in `main`, before any thread is started, so nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    }
}

fn main() -> ExitCode {
    disable_onnxruntime_telemetry();
    tune_malloc();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Plan(args) => commands::plan::plan(args),
        Command::Status(args) => commands::status::status(args),
        Command::Models(args) => models::command(&args.action, args.models.as_deref(), args.cache.as_deref()),
        Command::Export(args) => commands::export::export(args),
        Command::Sql(args) => commands::sql::sql(args),
        Command::Render(args) => commands::render::render(args),
        Command::Demo(args) => commands::demo::demo(args),
        Command::Finalize(args) => commands::status::finalize(args),
    };
    match result {
        Ok(code) => code,
        // The reader of standard output left (`| head`): what it did not read was not wanted.
        Err(_) if stdout::closed() => ExitCode::SUCCESS,
        Err(error) => {
            let text = lyrics_pipeline::store::redact_secrets(&format!("{error:#}"));
            eprintln!("error: {text}");
            ExitCode::from(2)
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::lists_tunable;

    #[test]
    fn a_tunable_counts_only_by_its_whole_name() {
        let list = "glibc.malloc.tcache_count=4096:glibc.malloc.arena_max=4";
        assert!(lists_tunable(list, "glibc.malloc.arena_max"));
        assert!(lists_tunable(list, "glibc.malloc.tcache_count"));
        assert!(!lists_tunable(list, "glibc.malloc.mmap_threshold"));
        assert!(!lists_tunable("glibc.malloc.arena_max_x=1", "glibc.malloc.arena_max"));
        assert!(!lists_tunable("", "glibc.malloc.arena_max"));
    }
}

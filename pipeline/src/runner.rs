//! The stage runner: read (async) → stages (one thread each) → write (async), joined by bounded channels.
//!
//! Execution model: the read task walks this worker's uncommitted units in order and pushes batches of records;
//! each [`Stage`] runs on a thread of its own, taking batches in order and handing them on; the write task turns
//! records into shards and commits each unit when its end arrives. Because every channel is bounded, a slow stage
//! stalls the ones before it, and memory is Σ capacity × batch size whatever the corpus size. Order is kept end to
//! end, which is what makes a unit's output deterministic.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use lyrics_schemas::ErrorRow;
use tokio::sync::mpsc;

use crate::PipelineError;
use crate::commit::{self, PlanRecord, UnitMarker};
use crate::item::{Record, Sample};
use crate::metrics::Metrics;
use crate::partition::Worker;
use crate::plan::{self, InputFormat, WorkUnit};
use crate::sink::{SinkOptions, UnitWriter};
use crate::source::{self, Emitter, ReadContext, SourceOptions};
use crate::store::{Location, StoreRegistry, redact};

/// A transformation between read and write, run on a thread of its own.
///
/// `process` is called once per batch, in input order, and must return exactly one record per input record, in
/// the same order (a record it cannot handle becomes an error record naming the item). It may block (CPU work on
/// a thread pool, a model call on a device); it must not panic on bad input. Records of several units never share
/// a batch.
pub trait Stage: Send + 'static {
    /// Name in logs and in the busy-time summary.
    fn name(&self) -> &str;
    fn process(&mut self, batch: Vec<Record>) -> Vec<Record>;
}

/// What flows through the channels.
pub(crate) enum Msg {
    Batch {
        unit: u64,
        records: Vec<Record>,
    },
    /// The unit's last record has been sent; `result` says whether the source read it whole.
    UnitEnd {
        unit: u64,
        items: u64,
        result: Result<(), String>,
    },
    /// A stage lost a batch of the unit (it panicked): the unit must not be committed.
    UnitFailed {
        unit: u64,
        message: String,
    },
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub input: String,
    pub output: String,
    pub format: Option<InputFormat>,
    pub source: SourceOptions,
    pub sink: SinkOptions,
    /// Records per batch.
    pub batch_size: usize,
    /// Batches each channel holds.
    pub channel_capacity: usize,
    pub worker: Worker,
    /// Digest of the job spec (everything that shapes the output).
    pub spec_hash: String,
    /// Delete an output written by another job spec instead of refusing.
    pub force: bool,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    pub format: InputFormat,
    pub units_in_plan: u64,
    pub units_mine: u64,
    pub units_skipped: u64,
    pub units_done: u64,
    /// Units that failed (unit id, error). They have no marker; a rerun retries them.
    pub failed: Vec<(u64, String)>,
    /// Whether this run found every unit committed and wrote the manifest and `_SUCCESS`.
    pub finalized: bool,
}

/// Plans the input, then processes this worker's uncommitted units through `stages`.
pub async fn run(
    config: RunConfig,
    registry: Arc<StoreRegistry>,
    stages: Vec<Box<dyn Stage>>,
    metrics: Arc<Metrics>,
) -> Result<RunReport, PipelineError> {
    let plan = plan::plan(&registry, &config.input, config.format, &config.source).await?;
    let output = registry.locate(&config.output)?;
    let record = PlanRecord {
        created_by: commit::created_by(),
        spec_hash: config.spec_hash.clone(),
        plan_hash: plan.fingerprint(),
        input: redact(&config.input),
        plan: plan.clone(),
    };
    commit::open_output(&output, &record, config.force).await?;
    let committed = commit::committed_units(&output).await?;
    let mine: Vec<&WorkUnit> = plan.units.iter().filter(|u| config.worker.owns(u.id)).collect();
    let todo: Vec<WorkUnit> = mine.iter().filter(|u| !committed.contains(&u.id)).map(|u| (*u).clone()).collect();
    let skipped = (mine.len() - todo.len()) as u64;
    Metrics::add(&metrics.units_total, mine.len() as u64);
    Metrics::add(&metrics.units_skipped, skipped);
    tracing::info!(
        format = plan.format.name(),
        units = plan.units.len(),
        mine = mine.len(),
        committed = skipped,
        worker = %format!("{}/{}", config.worker.index, config.worker.count),
        "planned"
    );

    let capacity = config.channel_capacity.max(1);
    let (read_tx, mut rx) = mpsc::channel::<Msg>(capacity);
    let input = registry.locate(&config.input)?;
    let ctx = Arc::new(ReadContext {
        registry: registry.clone(),
        input,
        format: plan.format,
        options: config.source.clone(),
        coco: Default::default(),
    });
    let reader = tokio::spawn(read_all(ctx, todo, read_tx, config.batch_size, metrics.clone()));
    let mut threads = Vec::new();
    for mut stage in stages {
        let (tx, next_rx) = mpsc::channel::<Msg>(capacity);
        let mut stage_rx = std::mem::replace(&mut rx, next_rx);
        let metrics = metrics.clone();
        let name = stage.name().to_string();
        let thread = std::thread::Builder::new()
            .name(format!("stage-{name}"))
            .spawn(move || {
                while let Some(msg) = stage_rx.blocking_recv() {
                    let out = match msg {
                        Msg::Batch { unit, records } => {
                            let started = Instant::now();
                            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| stage.process(records)));
                            metrics.add_busy(&name, started.elapsed());
                            match outcome {
                                Ok(records) => Msg::Batch { unit, records },
                                Err(_) => {
                                    Msg::UnitFailed { unit, message: format!("stage {name} panicked on a batch") }
                                }
                            }
                        }
                        other => other,
                    };
                    if tx.blocking_send(out).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| PipelineError::Internal(format!("cannot start a stage thread: {e}")))?;
        threads.push(thread);
    }
    let part_bytes = registry.options().upload_part_bytes;
    let (done, failed) = write_all(rx, &output, config.sink, part_bytes, &metrics).await;
    reader.await.map_err(|e| PipelineError::Internal(format!("read task failed: {e}")))?;
    for thread in threads {
        thread.join().map_err(|_| PipelineError::Internal("a stage thread panicked".into()))?;
    }
    let finalized = if failed.is_empty() { commit::finalize(&output, &record).await? } else { false };
    Ok(RunReport {
        format: plan.format,
        units_in_plan: plan.units.len() as u64,
        units_mine: mine.len() as u64,
        units_skipped: skipped,
        units_done: done,
        failed,
        finalized,
    })
}

async fn read_all(
    ctx: Arc<ReadContext>,
    units: Vec<WorkUnit>,
    tx: mpsc::Sender<Msg>,
    batch_size: usize,
    metrics: Arc<Metrics>,
) {
    let started = Instant::now();
    for unit in units {
        let mut emitter = Emitter::new(unit.id, tx.clone(), batch_size, metrics.clone());
        let mut result = source::read_unit(&ctx, &unit, &mut emitter).await;
        if result.is_ok() {
            result = emitter.flush().await.map_err(PipelineError::from);
        }
        let end = Msg::UnitEnd { unit: unit.id, items: emitter.items, result: result.map_err(|e| e.to_string()) };
        if tx.send(end).await.is_err() {
            break;
        }
    }
    metrics.add_busy("read", started.elapsed().saturating_sub(metrics.read_blocked_total()));
}

/// The unit being written.
struct OpenUnit {
    unit: u64,
    writer: UnitWriter,
    rows: u64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    /// Set when writing failed: the unit's remaining records are dropped and it ends failed.
    failure: Option<String>,
}

impl OpenUnit {
    async fn push(&mut self, record: Record) -> Result<(), PipelineError> {
        match record {
            Record::Sample(sample) => {
                self.rows += 1;
                let Sample { row, pretrain, instruct, .. } = *sample;
                self.writer.samples.push(row).await?;
                if let Some(pretrain) = pretrain {
                    self.writer.pretrain.push(pretrain).await?;
                }
                for conversation in instruct {
                    self.writer.instruct.push(conversation).await?;
                }
                Ok(())
            }
            Record::Error(row) => self.push_error(row).await,
            Record::Raw(raw) => {
                // A record no stage turned into a sample: say so rather than drop it.
                let row = ErrorRow {
                    error: format!("{}: no stage processed this item", raw.source),
                    key: raw.key,
                    source: raw.source,
                    stage: "write".into(),
                    kind: "unprocessed".into(),
                };
                self.push_error(row).await
            }
        }
    }

    async fn push_error(&mut self, row: ErrorRow) -> Result<(), PipelineError> {
        self.errors += 1;
        *self.errors_by_kind.entry(row.kind.clone()).or_default() += 1;
        self.writer.errors.push(row).await
    }
}

/// Writes every unit that arrives; returns the count committed and the failures.
async fn write_all(
    mut rx: mpsc::Receiver<Msg>,
    output: &Location,
    sink: SinkOptions,
    part_bytes: usize,
    metrics: &Metrics,
) -> (u64, Vec<(u64, String)>) {
    let mut open: Option<OpenUnit> = None;
    let mut failed = Vec::new();
    let mut done = 0;
    let mut busy = std::time::Duration::ZERO;
    while let Some(msg) = rx.recv().await {
        let started = Instant::now();
        match msg {
            Msg::Batch { unit, records } => {
                let current = match open.take() {
                    Some(current) if current.unit == unit => current,
                    stale => {
                        if let Some(stale) = stale {
                            stale.writer.abort().await;
                        }
                        match UnitWriter::new(output, sink, part_bytes, unit) {
                            Ok(writer) => OpenUnit {
                                unit,
                                writer,
                                rows: 0,
                                errors: 0,
                                errors_by_kind: BTreeMap::new(),
                                failure: None,
                            },
                            Err(e) => {
                                failed.push((unit, e.to_string()));
                                continue;
                            }
                        }
                    }
                };
                let mut current = current;
                if current.failure.is_none() {
                    for record in records {
                        if let Err(e) = current.push(record).await {
                            current.failure = Some(e.to_string());
                            break;
                        }
                    }
                }
                open = Some(current);
            }
            Msg::UnitFailed { unit, message } => {
                if let Some(current) = open.as_mut().filter(|c| c.unit == unit) {
                    current.failure.get_or_insert(message);
                } else if let Ok(writer) = UnitWriter::new(output, sink, part_bytes, unit) {
                    open = Some(OpenUnit {
                        unit,
                        writer,
                        rows: 0,
                        errors: 0,
                        errors_by_kind: BTreeMap::new(),
                        failure: Some(message),
                    });
                }
            }
            Msg::UnitEnd { unit, items, result } => {
                let current = match open.take().filter(|c| c.unit == unit) {
                    Some(current) => Some(current),
                    None => UnitWriter::new(output, sink, part_bytes, unit)
                        .map(|writer| OpenUnit {
                            unit,
                            writer,
                            rows: 0,
                            errors: 0,
                            errors_by_kind: BTreeMap::new(),
                            failure: None,
                        })
                        .ok(),
                };
                let Some(current) = current else {
                    failed.push((unit, "cannot open the unit's writer".into()));
                    continue;
                };
                match commit_unit(current, items, result, output).await {
                    Ok(marker) => {
                        done += 1;
                        Metrics::add(&metrics.units_done, 1);
                        Metrics::add(&metrics.samples, marker.rows);
                        Metrics::add(&metrics.errors, marker.errors);
                        Metrics::add(&metrics.bytes_written, marker.shards.iter().map(|s| s.bytes).sum());
                        for (kind, n) in &marker.errors_by_kind {
                            for _ in 0..*n {
                                metrics.add_error_kind(kind);
                            }
                        }
                        tracing::debug!(unit, rows = marker.rows, errors = marker.errors, "unit committed");
                    }
                    Err(message) => {
                        Metrics::add(&metrics.units_failed, 1);
                        tracing::error!(unit, error = %message, "unit failed; a rerun retries it");
                        failed.push((unit, message));
                    }
                }
            }
        }
        busy += started.elapsed();
    }
    if let Some(stale) = open {
        stale.writer.abort().await;
    }
    metrics.add_busy("write", busy);
    (done, failed)
}

/// Completes the unit's shards and writes its marker, or removes all of it.
async fn commit_unit(
    current: OpenUnit,
    items: u64,
    read: Result<(), String>,
    output: &Location,
) -> Result<UnitMarker, String> {
    let failure = match (read, &current.failure) {
        (Err(e), _) => Some(e),
        (Ok(()), Some(e)) => Some(e.clone()),
        (Ok(()), None) if current.rows + current.errors != items => Some(format!(
            "internal accounting error: {items} items read but {} rows and {} error rows written",
            current.rows, current.errors
        )),
        _ => None,
    };
    if let Some(failure) = failure {
        current.writer.abort().await;
        return Err(failure);
    }
    let OpenUnit { unit, writer, rows, errors, errors_by_kind, .. } = current;
    let shards = writer.finish().await.map_err(|e| e.to_string())?;
    let marker = UnitMarker { unit, items, rows, errors, errors_by_kind, shards };
    crate::failpoint::hit("before-marker", unit);
    commit::write_marker(output, &marker).await.map_err(|e| e.to_string())?;
    Ok(marker)
}

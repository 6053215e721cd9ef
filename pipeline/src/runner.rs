//! The stage runner: read (async) → stages (one thread each) → write (async), joined by bounded channels.
//!
//! Execution model: the read task walks this worker's uncommitted units in order and pushes batches of records;
//! each [`Stage`] runs on a thread of its own, taking batches in order and handing them on; the write task turns
//! records into shards and commits each unit when its end arrives. Because every channel is bounded, a slow stage
//! stalls the ones before it, and memory is Σ capacity × batch size whatever the corpus size. Order is kept end to
//! end, which is what makes a unit's output deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use lyrics_schemas::ErrorRow;
use tokio::sync::mpsc;

use crate::PipelineError;
use crate::claims::{self, Attempt, Claim, Lease};
use crate::commit::{self, PlanRecord, UnitMarker};
use crate::item::{ItemError, Msg, Record, SourceRecord};
use crate::metrics::Metrics;
use crate::partition::Worker;
use crate::plan::{self, InputFormat, WorkUnit};
use crate::retry::{RetryKinds, RetryUnit};
use crate::sink::{SinkOptions, UnitWriter};
use crate::source::{Emitter, ReadAhead, Source, SourceOptions};
use crate::store::{Location, StoreRegistry, redact};
use crate::table::{ERRORS, SAMPLES, Tables};

/// A transformation between read and write, run on a thread of its own; `S` is the state its samples carry.
///
/// `process` is called once per batch, in input order, and returns exactly one record per input record, in the
/// same order: a record it cannot handle becomes an error record naming the item ([`Record::error`]). It may
/// block (CPU work on a thread pool, a model call on a device). Records of several units never share a batch.
///
/// A stage never ends the process. When the job as a whole cannot go on (a model that does not load, a device
/// that is refused), it returns a [`StageError`]: the runner stops reading, leaves the unit in progress
/// uncommitted, and [`run`] returns [`PipelineError::Stage`] (the binary's exit status 2); units committed before
/// stay committed. A panic inside `process` costs the items of that batch, each becoming an error row of kind
/// `panic`, never the unit: a unit that panicked would fail on every rerun. Stages that handle items one at a
/// time should catch panics per item (`catch_unwind`), so a panic costs one item only.
pub trait Stage<S>: Send + 'static {
    /// Name in logs, in error rows and in the busy-time summary.
    fn name(&self) -> &str;

    /// Called once, after planning and before the run writes anything (not even `_lyrics/plan.json`): a stage
    /// that cannot work at all (models that do not load) returns the reason here, so that a job that cannot start
    /// leaves no output behind to refuse a corrected rerun. It may block, waiting for what it loads in the
    /// background. The default is ready at once.
    fn ready(&mut self) -> Result<(), StageError> {
        Ok(())
    }

    fn process(&mut self, batch: Vec<Record<S>>) -> Result<Vec<Record<S>>, StageError>;
}

/// A failure that ends the job: nothing more can be processed (see [`Stage`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StageError(pub String);

/// The error row of an item that a panic cost.
pub fn panic_row(stage: &str, key: &str, source: &str, payload: &(dyn std::any::Any + Send)) -> ErrorRow {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    let mut row = ItemError::new("process", "panic", format!("stage {stage} crashed on this item: {what}"))
        .into_row(key, source);
    row.stage = stage.to_string();
    row
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
    /// The digest an output written by an earlier version carries for this same job (one that hashed the input
    /// as typed): such an output is resumed, and keeps its digest.
    pub earlier_spec_hash: Option<String>,
    /// Delete an output written by another job spec instead of refusing.
    pub force: bool,
    /// Share units by claims with a lease of this length, instead of by worker index (see [`crate::claims`]).
    pub claim: Option<std::time::Duration>,
    /// Process only these units (a task per unit on an engine such as Ray), instead of a worker's share.
    pub units: Option<Vec<u64>>,
    /// Read again the items of this worker's committed units whose error rows are of these kinds, and amend those
    /// units (see [`crate::retry`]).
    pub retry_errors: Option<RetryKinds>,
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
    /// Set when this run found every unit committed and wrote the manifest and `_SUCCESS`.
    pub finalized: Option<commit::Finalized>,
    /// Claimed units another worker took over (its lease had run out): left to that worker, nothing written.
    pub taken: Vec<u64>,
    /// Uncommitted units this claiming worker left because another worker held a live lease on them, with that
    /// lease (`None` when it could not be read): if that worker is gone, a rerun after the lease runs out takes
    /// them over.
    pub held: Vec<(u64, Option<Lease>)>,
    /// What `retry_errors` did, when it was asked for.
    pub retried: Option<Retried>,
}

/// What a run with `retry_errors` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retried {
    /// Committed units that held error rows of the kinds retried.
    pub units: u64,
    /// Of them, those amended.
    pub units_done: u64,
    /// Items read again.
    pub items: u64,
    /// Of them, those that are samples now.
    pub recovered: u64,
}

/// The units this worker claimed and has not ended yet, with the tasks renewing their leases.
type Claims = Arc<Mutex<HashMap<u64, (Arc<Claim>, tokio::task::JoinHandle<()>)>>>;

/// How this worker claims units: where, as whom, with what lease.
struct Claiming {
    output: Location,
    owner: String,
    lease: std::time::Duration,
    held: Claims,
    /// The units left to another worker's live lease, with that lease.
    others: Arc<Mutex<BTreeMap<u64, Option<Lease>>>>,
}

/// Plans the input, then processes this worker's uncommitted units through `stages`, writing the `tables`.
pub async fn run<S: Send + 'static>(
    config: RunConfig,
    registry: Arc<StoreRegistry>,
    stages: Vec<Box<dyn Stage<S>>>,
    tables: Tables,
    metrics: Arc<Metrics>,
) -> Result<RunReport, PipelineError> {
    let planned = plan::plan(&registry, &config.input, config.format, &config.source).await?;
    let stages = ready(stages).await?;
    let plan = planned.plan;
    let output = registry.locate(&config.output)?;
    let mut record = PlanRecord {
        created_by: commit::created_by(),
        spec_hash: config.spec_hash.clone(),
        plan_hash: plan.fingerprint(),
        input: redact(&config.input),
        tables: tables.names(),
        workers: if config.claim.is_some() || config.units.is_some() { None } else { Some(config.worker.count) },
        sink: Some(config.sink),
        schema_version: Some(lyrics_schemas::SCHEMA_VERSION.to_string()),
        plan: plan.clone(),
    };
    commit::open_output(&output, &mut record, config.earlier_spec_hash.as_deref(), config.force).await?;
    let owned = |id: u64| match &config.units {
        Some(chosen) => chosen.contains(&id),
        None => config.claim.is_some() || config.worker.owns(id),
    };
    // What a killed retry of this worker's units left is completed or undone before anything else.
    crate::retry::recover(&output, &config.sink, owned).await?;
    let committed = commit::committed_units(&output).await?;
    if let Some(missing) = config.units.iter().flatten().find(|id| **id >= plan.units.len() as u64) {
        return Err(PipelineError::Config(format!(
            "--unit {missing}: the plan has units 0 to {}",
            plan.units.len().saturating_sub(1)
        )));
    }
    let mine: Vec<&WorkUnit> = plan.units.iter().filter(|u| owned(u.id)).collect();
    let mut todo: Vec<WorkUnit> =
        mine.iter().filter(|u| !committed.contains(&u.id)).map(|u| (*u).clone()).collect();
    let skipped = (mine.len() - todo.len()) as u64;
    let mut retried = None;
    let mut retrying: BTreeMap<u64, RetryUnit> = BTreeMap::new();
    if let Some(kinds) = &config.retry_errors {
        let done: Vec<u64> = mine.iter().map(|u| u.id).filter(|id| committed.contains(id)).collect();
        let chosen = crate::retry::select(&output, &done, kinds).await?;
        if !chosen.is_empty() {
            crate::retry::unfinish(&output).await?;
        }
        for unit in chosen {
            crate::retry::begin(&output, &unit).await?;
            retrying.insert(unit.marker.unit, unit);
        }
        retried = Some(Retried {
            units: retrying.len() as u64,
            items: retrying.values().map(|u| u.keys.len() as u64).sum(),
            ..Retried::default()
        });
        tracing::info!(
            kinds = %kinds.names().join(","),
            units = retrying.len(),
            items = retried.map_or(0, |r| r.items),
            "reading again the items that failed so"
        );
        todo.extend(plan.units.iter().filter(|u| retrying.contains_key(&u.id)).cloned());
        todo.sort_by_key(|u| u.id);
    }
    let only: HashMap<u64, Arc<HashSet<String>>> = retrying
        .iter()
        .map(|(id, unit)| (*id, Arc::new(unit.keys.iter().cloned().collect::<HashSet<String>>())))
        .collect();
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
    let (read_tx, read_rx) = mpsc::channel::<Msg<SourceRecord>>(capacity);
    let held: Claims = Arc::default();
    let others: Arc<Mutex<BTreeMap<u64, Option<Lease>>>> = Arc::default();
    let claiming = config.claim.map(|lease| Claiming {
        output: output.clone(),
        owner: format!("pid {} started {}", std::process::id(), chrono_free_now()),
        lease,
        held: held.clone(),
        others: others.clone(),
    });
    let download = registry.download_options();
    let reader = tokio::spawn(read_all(
        planned.source,
        todo,
        only,
        read_tx,
        config.batch_size,
        metrics.clone(),
        claiming,
        (download.units_ahead, download.max_bytes_in_flight),
    ));
    let fatal: Arc<Mutex<Option<PipelineError>>> = Arc::default();
    let mut threads = Vec::new();
    let part_bytes = registry.options().upload_part_bytes;
    // Staging files a killed writer left, by unit: each is removed when its unit is written again. Taken before
    // any unit starts, so no staging file of this run is among them.
    let mut stale: BTreeMap<u64, Vec<std::path::PathBuf>> = BTreeMap::new();
    for (name, path) in commit::staging_files(&output, &record.tables)? {
        if let Some(unit) = crate::sink::unit_of_shard(&name) {
            stale.entry(unit).or_default().push(path);
        }
    }
    let writer = Writer {
        output: &output,
        tables: &tables,
        sink: config.sink,
        part_bytes,
        metrics: &metrics,
        claims: held,
        stale: Mutex::new(stale),
        retrying: &retrying,
        recovered: std::sync::atomic::AtomicU64::new(0),
        amended: std::sync::atomic::AtomicU64::new(0),
    };
    let outcome = match stages.len() {
        0 => writer.write_all::<SourceRecord, S>(read_rx).await,
        _ => {
            let mut stages = stages.into_iter();
            let mut rx = match stages.next() {
                Some(first) => spawn_stage(first, read_rx, capacity, &metrics, &fatal, &mut threads)?,
                None => return Err(PipelineError::Internal("no first stage".into())),
            };
            for stage in stages {
                rx = spawn_stage(stage, rx, capacity, &metrics, &fatal, &mut threads)?;
            }
            writer.write_all::<Record<S>, S>(rx).await
        }
    };
    let (done, failed, taken) = outcome;
    if let Some(retried) = &mut retried {
        retried.units_done = writer.amended.load(std::sync::atomic::Ordering::Relaxed);
        retried.recovered = writer.recovered.load(std::sync::atomic::Ordering::Relaxed);
    }
    reader.await.map_err(|e| PipelineError::Internal(format!("read task failed: {e}")))?;
    for thread in threads {
        thread.join().map_err(|_| PipelineError::Internal("a stage thread panicked".into()))?;
    }
    if let Some(error) = fatal.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(error);
    }
    let finalized = if failed.is_empty() { commit::finalize(&output, &record).await? } else { None };
    let others =
        std::mem::take(&mut *others.lock().map_err(|_| PipelineError::Internal("claims poisoned".into()))?);
    let mut held_by_others = Vec::new();
    for (unit, lease) in others {
        // Committed by its holder while this worker ran: nothing is left to wait for.
        if !matches!(commit::read_marker(&output, unit).await, Ok(Some(_))) {
            held_by_others.push((unit, lease));
        }
    }
    Ok(RunReport {
        format: plan.format,
        units_in_plan: plan.units.len() as u64,
        units_mine: mine.len() as u64,
        units_skipped: skipped,
        units_done: done,
        failed,
        finalized,
        taken,
        held: held_by_others,
        retried,
    })
}

/// Asks every stage whether it can work ([`Stage::ready`]), on a blocking thread, before anything is written.
async fn ready<S: Send + 'static>(stages: Vec<Box<dyn Stage<S>>>) -> Result<Vec<Box<dyn Stage<S>>>, PipelineError> {
    tokio::task::spawn_blocking(move || {
        let mut stages = stages;
        for stage in &mut stages {
            if let Err(error) = stage.ready() {
                return Err(PipelineError::Stage { stage: stage.name().to_string(), message: error.0 });
            }
        }
        Ok(stages)
    })
    .await
    .map_err(|e| PipelineError::Internal(format!("a stage failed while getting ready: {e}")))?
}

/// Starts `stage` on a thread of its own, reading `rx`; returns the channel of its output.
fn spawn_stage<I, S>(
    mut stage: Box<dyn Stage<S>>,
    mut rx: mpsc::Receiver<Msg<I>>,
    capacity: usize,
    metrics: &Arc<Metrics>,
    fatal: &Arc<Mutex<Option<PipelineError>>>,
    threads: &mut Vec<std::thread::JoinHandle<()>>,
) -> Result<mpsc::Receiver<Msg<Record<S>>>, PipelineError>
where
    I: Into<Record<S>> + Send + 'static,
    S: Send + 'static,
{
    let (tx, next_rx) = mpsc::channel::<Msg<Record<S>>>(capacity);
    let metrics = metrics.clone();
    let fatal = fatal.clone();
    let name = stage.name().to_string();
    let thread = std::thread::Builder::new()
        .name(format!("stage-{name}"))
        .spawn(move || {
            while let Some(msg) = rx.blocking_recv() {
                let out = match msg {
                    Msg::Batch { unit, records } => {
                        let records: Vec<Record<S>> = records.into_iter().map(Into::into).collect();
                        let identities: Vec<(String, String)> =
                            records.iter().map(|r| (r.identity().0.to_string(), r.identity().1.to_string())).collect();
                        let started = Instant::now();
                        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| stage.process(records)));
                        metrics.add_busy(&name, started.elapsed());
                        match outcome {
                            Ok(Ok(records)) => Msg::Batch { unit, records },
                            Ok(Err(error)) => {
                                let message = format!("stage {name}: {error}");
                                tracing::error!(unit, "{}", crate::store::redact_secrets(&message));
                                if let Ok(mut slot) = fatal.lock() {
                                    slot.get_or_insert(PipelineError::Stage { stage: name.clone(), message: error.0 });
                                }
                                let _ = tx.blocking_send(Msg::UnitFailed { unit, message });
                                // Dropping the channels stops the stages before and after this one.
                                break;
                            }
                            Err(payload) => {
                                tracing::error!(unit, stage = %name, "a stage panicked; the batch's items become error rows");
                                let records = identities
                                    .iter()
                                    .map(|(key, source)| Record::Error(panic_row(&name, key, source, payload.as_ref())))
                                    .collect();
                                Msg::Batch { unit, records }
                            }
                        }
                    }
                    Msg::UnitEnd { unit, items, warnings, result } => Msg::UnitEnd { unit, items, warnings, result },
                    Msg::UnitFailed { unit, message } => Msg::UnitFailed { unit, message },
                };
                if tx.blocking_send(out).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| PipelineError::Internal(format!("cannot start a stage thread: {e}")))?;
    threads.push(thread);
    Ok(next_rx)
}

/// Seconds since the epoch, to tell this worker's claims from an earlier process with the same pid.
fn chrono_free_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether this worker should read `unit`: always, unless it shares units by claims and cannot claim this one.
async fn claim_unit(claiming: &Claiming, unit: u64) -> bool {
    // Committed since the plan was read: nothing to do.
    if matches!(commit::read_marker(&claiming.output, unit).await, Ok(Some(_))) {
        return false;
    }
    match claims::acquire(&claiming.output, unit, &claiming.owner, claiming.lease).await {
        Ok(Attempt::Claimed(claim)) => {
            let renewal = claim.keep_alive();
            if let Ok(mut held) = claiming.held.lock() {
                held.insert(unit, (claim, renewal));
            }
            true
        }
        Ok(Attempt::Held(lease)) => {
            if let Ok(mut others) = claiming.others.lock() {
                others.insert(unit, lease);
            }
            false
        }
        Err(e) => {
            tracing::warn!(unit, error = %e, "cannot claim the unit; leaving it to another worker or a rerun");
            false
        }
    }
}

/// Reads `units` in order and hands their records on. Sources that fetch each item's image ([`Source::reads_ahead`])
/// read up to `ahead.0` units at once, within `ahead.1` bytes read ahead (see [`ReadAhead`]): a unit is as slow
/// as its slowest fetch (a host that never answers costs its URLs their timeouts), and the next units' fetches
/// go on meanwhile. Units are still handed on one after the other, each whole, in order.
#[allow(clippy::too_many_arguments)]
async fn read_all(
    source: Box<dyn Source>,
    units: Vec<WorkUnit>,
    only: HashMap<u64, Arc<HashSet<String>>>,
    tx: mpsc::Sender<Msg<SourceRecord>>,
    batch_size: usize,
    metrics: Arc<Metrics>,
    claiming: Option<Claiming>,
    ahead: (usize, u64),
) {
    let started = Instant::now();
    let emitter_of = |unit: &WorkUnit, tx: &mpsc::Sender<Msg<SourceRecord>>| {
        Emitter::new(unit.id, tx.clone(), batch_size, metrics.clone()).only(only.get(&unit.id).cloned())
    };
    let claimed = |unit: u64| {
        let claiming = claiming.as_ref();
        let metrics = &metrics;
        async move {
            if let Some(claiming) = claiming
                && !claim_unit(claiming, unit).await
            {
                Metrics::add(&metrics.units_skipped, 1);
                return false;
            }
            true
        }
    };
    let (units_ahead, limit) = ahead;
    if units_ahead <= 1 || !source.reads_ahead() {
        for unit in units {
            if claimed(unit.id).await && !read_unit(&*source, &unit, emitter_of(&unit, &tx), &tx).await {
                break;
            }
        }
    } else {
        let budget = Arc::new(ReadAhead::new(limit));
        let mut readers = Vec::with_capacity(units.len());
        let mut handed = Vec::with_capacity(units.len());
        for unit in units {
            // Counted in bytes by the budget, not in batches: a unit's batches always fit.
            let (unit_tx, unit_rx) = mpsc::channel::<Msg<SourceRecord>>(1 << 16);
            let head = Arc::new(std::sync::atomic::AtomicBool::new(false));
            handed.push((unit_rx, head.clone()));
            readers.push((unit, unit_tx, head));
        }
        let source = &*source;
        let budget = &budget;
        let read = futures::stream::iter(readers)
            .map(|(unit, unit_tx, head)| async move {
                if claimed(unit.id).await {
                    let emitter = emitter_of(&unit, &unit_tx).ahead(budget.clone(), head);
                    read_unit(source, &unit, emitter, &unit_tx).await;
                }
            })
            .buffered(units_ahead)
            .for_each(|_| async {});
        let forward = async {
            for (mut unit_rx, head) in handed {
                budget.promote(&head);
                while let Some(msg) = unit_rx.recv().await {
                    let bytes = match &msg {
                        Msg::Batch { records, .. } => records.iter().map(crate::source::record_bytes).sum(),
                        _ => 0,
                    };
                    let sent = tx.send(msg).await;
                    budget.release(bytes);
                    if sent.is_err() {
                        budget.close();
                        return;
                    }
                }
            }
        };
        futures::future::join(read, forward).await;
    }
    metrics.add_busy("read", started.elapsed().saturating_sub(metrics.read_blocked_total()));
}

/// Reads one unit through `emitter`, then sends its end on `tx`; `false` when nothing takes records any more.
async fn read_unit(
    source: &dyn Source,
    unit: &WorkUnit,
    mut emitter: Emitter,
    tx: &mpsc::Sender<Msg<SourceRecord>>,
) -> bool {
    let mut result = source.read(unit, &mut emitter).await;
    if result.is_ok() {
        result = emitter.flush().await.map_err(PipelineError::from);
    }
    let end = Msg::UnitEnd {
        unit: unit.id,
        items: emitter.items,
        warnings: std::mem::take(&mut emitter.warnings),
        result: result.map_err(|e| e.to_string()),
    };
    tx.send(end).await.is_ok()
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
    /// Set when another worker took the claimed unit over: it ends without writing or deleting anything.
    taken: bool,
    /// When the unit is amended (see [`crate::retry`]): the keys of the items read again.
    retried: Option<BTreeSet<String>>,
}

impl OpenUnit {
    async fn push<S>(&mut self, record: Record<S>) -> Result<(), PipelineError> {
        if let Some(keys) = &mut self.retried {
            keys.insert(record.identity().0.to_string());
        }
        match record {
            Record::Sample(sample) => {
                self.rows += 1;
                let sample = *sample;
                self.writer.push(SAMPLES, Box::new(sample.row)).await?;
                for (table, row, _) in sample.products.entries {
                    self.writer.push(table, row).await?;
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
        self.writer.push(ERRORS, Box::new(row)).await
    }
}

/// The write end of a run: turns records into shards, and commits each unit when its end arrives.
struct Writer<'a> {
    output: &'a crate::store::Location,
    tables: &'a Tables,
    sink: SinkOptions,
    part_bytes: usize,
    metrics: &'a Metrics,
    claims: Claims,
    /// Staging files killed writers left, by unit, removed when the unit is opened.
    stale: Mutex<BTreeMap<u64, Vec<std::path::PathBuf>>>,
    /// The committed units being amended.
    retrying: &'a BTreeMap<u64, RetryUnit>,
    /// Items read again that are samples now.
    recovered: std::sync::atomic::AtomicU64,
    /// Units amended.
    amended: std::sync::atomic::AtomicU64,
}

impl Writer<'_> {
    fn open(&self, unit: u64, failure: Option<String>) -> Result<OpenUnit, PipelineError> {
        let stale = self.stale.lock().ok().and_then(|mut stale| stale.remove(&unit)).unwrap_or_default();
        crate::direct::remove_stale(&stale).map_err(|e| PipelineError::sink(self.output.uri(), e))?;
        let claim = self.claims.lock().ok().and_then(|held| held.get(&unit).map(|(claim, _)| claim.clone()));
        let mut writer = UnitWriter::new(self.output, self.tables, self.sink, self.part_bytes, unit, claim)?;
        let retry = self.retrying.get(&unit);
        if let Some(retry) = retry {
            writer = writer.numbered_from(&retry.first_seq());
        }
        Ok(OpenUnit {
            unit,
            writer,
            rows: 0,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            failure,
            taken: false,
            retried: retry.map(|_| BTreeSet::new()),
        })
    }

    /// Ends the claim of `unit`, if it was claimed: its lease is no longer renewed.
    fn release(&self, unit: u64) {
        if let Some((_, renewal)) = self.claims.lock().ok().and_then(|mut held| held.remove(&unit)) {
            renewal.abort();
        }
    }

    /// Writes every unit that arrives; returns the count committed, the failures, and the units taken over.
    async fn write_all<I: Into<Record<S>>, S>(
        &self,
        mut rx: mpsc::Receiver<Msg<I>>,
    ) -> (u64, Vec<(u64, String)>, Vec<u64>) {
        let mut open: Option<OpenUnit> = None;
        let mut failed = Vec::new();
        let mut taken = Vec::new();
        let mut done = 0;
        let mut busy = std::time::Duration::ZERO;
        while let Some(msg) = rx.recv().await {
            let started = Instant::now();
            match msg {
                Msg::Batch { unit, records } => {
                    let mut current = match open.take() {
                        Some(current) if current.unit == unit => current,
                        stale => {
                            if let Some(stale) = stale {
                                stale.writer.abort().await;
                            }
                            match self.open(unit, None) {
                                Ok(current) => current,
                                Err(e) => {
                                    failed.push((unit, e.to_string()));
                                    continue;
                                }
                            }
                        }
                    };
                    if current.failure.is_none() {
                        for record in records {
                            if let Err(e) = current.push(record.into()).await {
                                current.taken = matches!(e, PipelineError::Taken { .. });
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
                    } else {
                        if let Some(stale) = open.take() {
                            stale.writer.abort().await;
                        }
                        open = self.open(unit, Some(message)).ok();
                    }
                }
                Msg::UnitEnd { unit, items, warnings, result } => {
                    let current = match open.take().filter(|c| c.unit == unit) {
                        Some(current) => Ok(current),
                        None => self.open(unit, None),
                    };
                    let current = match current {
                        Ok(current) => current,
                        Err(e) => {
                            failed.push((unit, format!("cannot open the unit's writer: {e}")));
                            continue;
                        }
                    };
                    let retry = self.retrying.get(&unit).map(|retry| (retry, self.sink));
                    let outcome = commit_unit(current, items, warnings, result, self.output, retry).await;
                    self.release(unit);
                    match outcome {
                        Err(message) if message == TAKEN => {
                            tracing::warn!(unit, "another worker took the unit over: left to it, nothing written");
                            taken.push(unit);
                        }
                        Ok(marker) => {
                            done += 1;
                            if self.retrying.contains_key(&unit) {
                                self.amended.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                self.recovered.fetch_add(marker.rows, std::sync::atomic::Ordering::Relaxed);
                            }
                            self.metrics.record_unit(&marker);
                            tracing::debug!(unit, rows = marker.rows, errors = marker.errors, "unit committed");
                        }
                        Err(message) => {
                            Metrics::add(&self.metrics.units_failed, 1);
                            tracing::error!(unit, error = %message, "unit failed; a rerun retries it");
                            failed.push((unit, message));
                        }
                    }
                }
            }
            busy += started.elapsed();
        }
        if let Some(stale) = open {
            failed.push((
                stale.unit,
                stale.failure.clone().unwrap_or_else(|| "the job stopped before the unit ended".into()),
            ));
            stale.writer.abort().await;
        }
        self.metrics.add_busy("write", busy);
        (done, failed, taken)
    }
}

/// Completes the unit's shards and writes its marker, or removes all of it.
async fn commit_unit(
    current: OpenUnit,
    items: u64,
    warnings: BTreeMap<String, u64>,
    read: Result<(), String>,
    output: &crate::store::Location,
    retry: Option<(&RetryUnit, SinkOptions)>,
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
    if current.taken {
        current.writer.abort_with(true).await;
        return Err(TAKEN.into());
    }
    if let Some(failure) = failure {
        current.writer.abort().await;
        return Err(failure);
    }
    let OpenUnit { unit, writer, rows, errors, errors_by_kind, retried, .. } = current;
    let claim = writer.claim();
    let shards = match writer.finish().await {
        Ok(shards) => shards,
        Err(PipelineError::Taken { .. }) => return Err(TAKEN.into()),
        Err(e) => return Err(e.to_string()),
    };
    let marker =
        UnitMarker { unit, items, rows, errors, errors_by_kind, warnings_by_kind: warnings, shards, duplicates: 0 };
    if let Some((retry, sink)) = retry {
        // An amended unit: its marker is rebuilt from its old shards and these (see `crate::retry`); what this
        // run counts is what it wrote.
        crate::retry::commit(output, &sink, retry, retried.unwrap_or_default(), marker.shards.clone())
            .await
            .map_err(|e| e.to_string())?;
        return Ok(marker);
    }
    crate::failpoint::hit("before-marker", unit);
    crate::failpoint::pause("before-marker", unit);
    if let Some(claim) = claim
        && claim.ensure().await.is_err()
    {
        // Its shards stay: the new owner writes the same bytes to the same paths.
        return Err(TAKEN.into());
    }
    commit::write_marker(output, &marker).await.map_err(|e| e.to_string())?;
    Ok(marker)
}

/// What [`commit_unit`] says of a unit another worker took over.
const TAKEN: &str = "taken over by another worker";

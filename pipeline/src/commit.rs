//! The commit and resume protocol, all under `<output>/_lyrics/`:
//!
//! - `plan.json`: the job's spec hash and its numbered units, created once (a conditional create, so concurrent
//!   workers agree on one). A rerun with another spec or another input refuses to resume unless forced.
//! - `done/UUUUUU.json`: written after a unit's shards are complete; its presence is what "committed" means. A
//!   unit killed between its shards and its marker is simply redone, rewriting identical bytes.
//! - `manifest.json` and `<output>/_SUCCESS`: written by whichever worker finds every unit committed. Their content
//!   depends only on the markers, so two workers finishing together write the same bytes.
//!
//! Everything that reads an output (`status`, `sql`, `export`, `render`) reads it through [`OutputView`]: the
//! plan, and either the manifest (a finished job) or the committed units' markers (a job still running), so no
//! reader ever sees a shard of a unit that has not committed, and the sums are made in one place.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::plan::Plan;
use crate::sink::{ShardInfo, SinkOptions};
use crate::store::Location;

pub const STATE_DIR: &str = "_lyrics";
pub const PLAN_FILE: &str = "_lyrics/plan.json";
pub const DONE_DIR: &str = "_lyrics/done";
pub const MANIFEST_FILE: &str = "_lyrics/manifest.json";
pub const SUCCESS_FILE: &str = "_SUCCESS";

/// `_lyrics/plan.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub created_by: String,
    /// Digest of everything in the job spec that shapes the output.
    pub spec_hash: String,
    /// Digest of the units (see [`Plan::fingerprint`]).
    pub plan_hash: String,
    /// The input, credentials redacted.
    pub input: String,
    /// The tables the job writes, in order (`samples`, `errors`, then those its stages declared).
    #[serde(default = "default_tables")]
    pub tables: Vec<String>,
    /// The worker count the job was started with: units are split `u mod workers`, so every worker of the job must
    /// use it (a retried array task with another count would split them differently). Absent in older outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u64>,
    /// The shard settings, so that finalizing (see [`crate::dedup`]) rewrites a shard as the job wrote it. Absent
    /// in older outputs (the defaults are used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkOptions>,
    /// The layout version of the tables the output's shards are written in ([`lyrics_schemas::SCHEMA_VERSION`]):
    /// a run resumes only an output of its own layout, so that no table mixes two. Absent in outputs written
    /// before version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    #[serde(flatten)]
    pub plan: Plan,
}

/// The tables of outputs written before plans recorded them.
fn default_tables() -> Vec<String> {
    lyrics_schemas::Table::ALL.iter().map(|t| t.name().to_string()).collect()
}

/// `_lyrics/done/UUUUUU.json`: what a committed unit wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitMarker {
    pub unit: u64,
    pub items: u64,
    pub rows: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Problems that cost no item (a second image member under one key), by kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub warnings_by_kind: BTreeMap<String, u64>,
    pub shards: Vec<ShardInfo>,
    /// Samples of this unit whose key an earlier unit had used, made `duplicate_key` errors when the job
    /// finalized (see [`crate::dedup`]); counted in `errors` and `errors_by_kind` already.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicates: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `_lyrics/manifest.json`: every shard of the finished output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub created_by: String,
    pub schema_version: String,
    pub spec_hash: String,
    pub units: u64,
    pub items: u64,
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub warnings_by_kind: BTreeMap<String, u64>,
    pub shards: Vec<ShardInfo>,
}

pub fn created_by() -> String {
    format!("lyrics-prep {}", env!("CARGO_PKG_VERSION"))
}

fn marker_path(unit: u64) -> String {
    format!("{DONE_DIR}/{unit:06}.json")
}

pub(crate) async fn get_json<T: for<'de> Deserialize<'de>>(
    output: &Location,
    relative: &str,
) -> Result<Option<T>, PipelineError> {
    let path = output.child(relative);
    let uri = output.uri_of(&path);
    match output.store.get(&path).await {
        Ok(result) => {
            let bytes = result.bytes().await.map_err(|e| PipelineError::store(&uri, e))?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| PipelineError::input(&uri, format!("unreadable: {e}")))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(PipelineError::store(&uri, e)),
    }
}

pub(crate) async fn put_json<T: Serialize>(
    output: &Location,
    relative: &str,
    value: &T,
) -> Result<(), PipelineError> {
    let path = output.child(relative);
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| PipelineError::Internal(e.to_string()))?;
    bytes.push(b'\n');
    output
        .store
        .put(&path, PutPayload::from(bytes))
        .await
        .map_err(|e| PipelineError::sink(output.uri_of(&path), e))?;
    Ok(())
}

/// Whether `existing` is the plan of the job `record` describes: the same plan, and its spec hash or the
/// `earlier` spelling of it.
fn same_job(existing: &PlanRecord, record: &PlanRecord, earlier: Option<&str>) -> bool {
    let spec = existing.spec_hash == record.spec_hash || Some(existing.spec_hash.as_str()) == earlier;
    spec && existing.plan_hash == record.plan_hash
}

/// Records the plan under `output`, or checks it against the one already there; `earlier` is another spec hash
/// of the same job (see [`crate::RunConfig::earlier_spec_hash`]), and an output found with it keeps it, in
/// `record` too. With `force`, an existing output of another job is deleted first.
pub async fn open_output(
    output: &Location,
    record: &mut PlanRecord,
    earlier: Option<&str>,
    force: bool,
) -> Result<(), PipelineError> {
    let refuse = |message: String| PipelineError::Resume { output: output.uri(), message };
    if let Some(existing) = get_json::<PlanRecord>(output, PLAN_FILE).await? {
        let same_layout = existing.schema_version == record.schema_version;
        if same_job(&existing, record, earlier) && same_layout {
            record.spec_hash = existing.spec_hash.clone();
            return same_workers(output, &existing, record);
        }
        if !force {
            let what = if !same_layout && same_job(&existing, record, earlier) {
                format!(
                    "its tables were written in schema version {}, and this lyrics-prep writes version {}: a \
                     table must not mix the two",
                    existing.schema_version.as_deref().unwrap_or("2 or earlier"),
                    record.schema_version.as_deref().unwrap_or("?"),
                )
            } else if existing.spec_hash != record.spec_hash {
                format!(
                    "it was written with a different job spec (spec hash {} there, {} now)",
                    short(&existing.spec_hash),
                    short(&record.spec_hash)
                )
            } else if objects_of(&existing.plan) == objects_of(&record.plan) {
                format!(
                    "its input files are the ones it was planned with, but they are cut into units differently now \
                     ({} units then, {} now): an earlier version of lyrics-prep planned it (one that read each \
                     Parquet file as one unit), or a file changed in place; finish it with the version that \
                     started it",
                    existing.plan.units.len(),
                    record.plan.units.len()
                )
            } else {
                format!(
                    "the input changed since it was planned ({} units then, {} now)",
                    existing.plan.units.len(),
                    record.plan.units.len()
                )
            };
            return Err(refuse(format!(
                "{what}; pass --force to delete that output and start over, or choose another --output"
            )));
        }
        tracing::warn!(output = %output.uri(), "--force: deleting the previous job's output");
        clear(output, &existing.tables).await?;
    }
    let path = output.child(PLAN_FILE);
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| PipelineError::Internal(e.to_string()))?;
    let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    match output.store.put_opts(&path, PutPayload::from(bytes), create).await {
        Ok(_) => Ok(()),
        // Another worker created it first: it must describe the same job.
        Err(object_store::Error::AlreadyExists { .. }) => match get_json::<PlanRecord>(output, PLAN_FILE).await? {
            Some(existing)
                if same_job(&existing, record, earlier) && existing.schema_version == record.schema_version =>
            {
                record.spec_hash = existing.spec_hash.clone();
                same_workers(output, &existing, record)
            }
            _ => Err(refuse("another worker started this output with a different job spec or input".into())),
        },
        Err(e) => Err(PipelineError::sink(output.uri_of(&path), e)),
    }
}

/// The input objects a plan reads, in order, each once: equal for two cuts of the same files.
fn objects_of(plan: &Plan) -> Vec<&str> {
    let mut objects: Vec<&str> = Vec::new();
    for unit in &plan.units {
        let names = std::iter::once(unit.object.as_str()).filter(|o| !o.is_empty());
        for name in names.chain(unit.files.iter().map(String::as_str)) {
            if objects.last() != Some(&name) {
                objects.push(name);
            }
        }
    }
    objects
}

/// Refuses a worker whose count differs from the one the job was started with.
fn same_workers(output: &Location, existing: &PlanRecord, record: &PlanRecord) -> Result<(), PipelineError> {
    match (existing.workers, record.workers) {
        (Some(started), Some(now)) if started != now => Err(PipelineError::Resume {
            output: output.uri(),
            message: format!(
                "it was started by {started} workers and this worker is one of {now}: units are split by the count \
                 fixed at the first start, so run every worker with {started} (e.g. --workers {started}), or pass \
                 --force to start over"
            ),
        }),
        _ => Ok(()),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Deletes what lyrics-prep writes under `output` (its tables, state and success marker), nothing else.
async fn clear(output: &Location, tables: &[String]) -> Result<(), PipelineError> {
    let mut doomed: Vec<Path> = Vec::new();
    let mut dirs: BTreeSet<&str> = lyrics_schemas::Table::ALL.map(|t| t.name()).into_iter().collect();
    dirs.extend(tables.iter().map(String::as_str));
    for dir in dirs.into_iter().chain([STATE_DIR]) {
        doomed.extend(list_dir(output, dir).await?.into_iter().map(|m| m.location));
    }
    doomed.push(output.child(SUCCESS_FILE));
    for path in doomed {
        match output.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(PipelineError::sink(output.uri_of(&path), e)),
        }
    }
    Ok(())
}

/// Every object under `dir` of the output.
pub(crate) async fn list_dir(output: &Location, dir: &str) -> Result<Vec<ObjectMeta>, PipelineError> {
    let prefix = output.child(dir);
    output
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| PipelineError::store(output.uri_of(&prefix), e))
}

/// The units with a commit marker.
pub async fn committed_units(output: &Location) -> Result<BTreeSet<u64>, PipelineError> {
    let listed = list_dir(output, DONE_DIR).await?;
    Ok(listed.iter().filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok()).collect())
}

pub async fn write_marker(output: &Location, marker: &UnitMarker) -> Result<(), PipelineError> {
    put_json(output, &marker_path(marker.unit), marker).await
}

pub async fn read_plan(output: &Location) -> Result<Option<PlanRecord>, PipelineError> {
    get_json(output, PLAN_FILE).await
}

pub async fn read_marker(output: &Location, unit: u64) -> Result<Option<UnitMarker>, PipelineError> {
    get_json(output, &marker_path(unit)).await
}

pub async fn read_manifest(output: &Location) -> Result<Option<Manifest>, PipelineError> {
    get_json(output, MANIFEST_FILE).await
}

/// The markers of `units`, in order, read a few at a time; a missing one is an error (it was listed as committed).
async fn read_markers(output: &Location, units: &[u64]) -> Result<Vec<UnitMarker>, PipelineError> {
    futures::stream::iter(units.iter().map(|&unit| async move {
        read_marker(output, unit).await?.ok_or_else(|| PipelineError::Resume {
            output: output.uri(),
            message: format!("the marker of unit {unit} vanished while it was read"),
        })
    }))
    .buffered(16)
    .try_collect()
    .await
}

/// What finalizing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Finalized {
    /// Samples whose key an earlier unit had used, now `duplicate_key` errors (see [`crate::dedup`]).
    pub duplicates: u64,
}

impl Finalized {
    /// What a user should hear of it, when anything.
    pub fn notice(&self) -> Option<String> {
        (self.duplicates > 0).then(|| {
            format!(
                "{} samples repeated a key that an earlier unit used: they are duplicate_key errors now",
                self.duplicates
            )
        })
    }
}

/// The staging files that killed writers left in a local output's table folders (and `_lyrics/`), with the file
/// each stands for (`samples/part-000028-001.parquet`). Object stores have none: their uploads are invisible
/// until whole.
pub(crate) fn staging_files(
    output: &Location,
    tables: &[String],
) -> Result<Vec<(String, std::path::PathBuf)>, PipelineError> {
    let mut found = Vec::new();
    for dir in tables.iter().map(String::as_str).chain([STATE_DIR, DONE_DIR]) {
        let Some(local) = output.local_path(&output.child(dir)) else { return Ok(Vec::new()) };
        let files = crate::direct::staging_files(&local)
            .map_err(|e| PipelineError::sink(output.uri_of(&output.child(dir)), e))?;
        found.extend(files.into_iter().map(|(name, path)| (format!("{dir}/{name}"), path)));
    }
    Ok(found)
}

/// Removes the staging files left in a local output: every one once the job is complete (`units` `None`: no
/// writer should be at work), else those of the committed `units` only (a unit still to do may be in a writer's
/// hands; its next writer removes them). A writer still at work on a committed unit (one whose lease was taken
/// over) fails its rename and leaves the unit to the other. Returns how many were removed.
pub async fn sweep_staging(
    output: &Location,
    tables: &[String],
    units: Option<&BTreeSet<u64>>,
) -> Result<u64, PipelineError> {
    let output = output.clone();
    let tables = tables.to_vec();
    let units = units.cloned();
    tokio::task::spawn_blocking(move || {
        let paths: Vec<_> = staging_files(&output, &tables)?
            .into_iter()
            .filter(|(name, _)| match &units {
                None => true,
                Some(units) => crate::sink::unit_of_shard(name).is_some_and(|u| units.contains(&u)),
            })
            .map(|(_, path)| path)
            .collect();
        crate::direct::remove_stale(&paths).map_err(|e| PipelineError::sink(output.uri(), e))
    })
    .await
    .map_err(|e| PipelineError::Internal(format!("the staging sweep failed: {e}")))?
}

/// When every unit of the plan is committed: makes keys unique across units, then writes the manifest and
/// `_SUCCESS`. `None` while units remain.
pub async fn finalize(output: &Location, record: &PlanRecord) -> Result<Option<Finalized>, PipelineError> {
    let committed = committed_units(output).await?;
    let all: Vec<u64> = record.plan.units.iter().map(|u| u.id).collect();
    if !all.iter().all(|u| committed.contains(u)) {
        return Ok(None);
    }
    // A unit being amended (`--retry-errors`) is not final yet.
    if crate::retry::pending(output).await? {
        return Ok(None);
    }
    let mut markers = read_markers(output, &all).await?;
    // A manifest is written only after the keys were made unique: a rerun of a finished job need not read every
    // key column again.
    let duplicates = if read_manifest(output).await?.is_some() {
        markers.iter().map(|m| m.duplicates).sum()
    } else {
        crate::dedup::resolve(output, &record.sink.unwrap_or_default(), &mut markers).await?
    };
    let mut manifest = Manifest {
        created_by: created_by(),
        schema_version: lyrics_schemas::SCHEMA_VERSION.to_string(),
        spec_hash: record.spec_hash.clone(),
        units: all.len() as u64,
        items: 0,
        rows: record.tables.iter().map(|t| (t.clone(), 0)).collect(),
        errors_by_kind: BTreeMap::new(),
        warnings_by_kind: BTreeMap::new(),
        shards: Vec::new(),
    };
    for marker in markers {
        manifest.items += marker.items;
        for (kind, n) in marker.errors_by_kind {
            *manifest.errors_by_kind.entry(kind).or_default() += n;
        }
        for (kind, n) in marker.warnings_by_kind {
            *manifest.warnings_by_kind.entry(kind).or_default() += n;
        }
        for shard in marker.shards {
            *manifest.rows.entry(shard.table.clone()).or_default() += shard.rows;
            manifest.shards.push(shard);
        }
    }
    manifest.shards.sort_by(|a, b| a.path.cmp(&b.path));
    let swept = sweep_staging(output, &record.tables, None).await?;
    if swept > 0 {
        tracing::info!(files = swept, "removed staging files that killed writers left behind");
    }
    put_json(output, MANIFEST_FILE, &manifest).await?;
    let success = output.child(SUCCESS_FILE);
    output
        .store
        .put(&success, PutPayload::from_static(b""))
        .await
        .map_err(|e| PipelineError::sink(output.uri_of(&success), e))?;
    Ok(Some(Finalized { duplicates }))
}

/// What readers of an output may see: its plan, and the shards of committed units only, with their sums. Read
/// once, at [`OutputView::open`]; a job still running shows what had committed by then.
#[derive(Debug, Clone)]
pub struct OutputView {
    pub plan: PlanRecord,
    /// The manifest, when the job is finished.
    pub manifest: Option<Manifest>,
    /// Units committed.
    pub units_done: u64,
    /// The ids of the committed units.
    pub committed: BTreeSet<u64>,
    /// Items read by the committed units.
    pub items: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub warnings_by_kind: BTreeMap<String, u64>,
    /// The visible shards, by path.
    pub shards: Vec<ShardInfo>,
}

impl OutputView {
    /// The view of `output`, or `None` when it holds no lyrics-prep job (no plan).
    pub async fn open(output: &Location) -> Result<Option<OutputView>, PipelineError> {
        let Some(plan) = read_plan(output).await? else { return Ok(None) };
        if let Some(manifest) = read_manifest(output).await? {
            return Ok(Some(OutputView {
                units_done: manifest.units,
                committed: plan.plan.units.iter().map(|u| u.id).collect(),
                items: manifest.items,
                errors_by_kind: manifest.errors_by_kind.clone(),
                warnings_by_kind: manifest.warnings_by_kind.clone(),
                shards: manifest.shards.clone(),
                manifest: Some(manifest),
                plan,
            }));
        }
        let committed = committed_units(output).await?;
        let units: Vec<u64> = plan.plan.units.iter().map(|u| u.id).filter(|id| committed.contains(id)).collect();
        let mut view = OutputView {
            plan,
            manifest: None,
            units_done: units.len() as u64,
            committed: units.iter().copied().collect(),
            items: 0,
            errors_by_kind: BTreeMap::new(),
            warnings_by_kind: BTreeMap::new(),
            shards: Vec::new(),
        };
        for marker in read_markers(output, &units).await? {
            view.items += marker.items;
            for (kind, n) in marker.errors_by_kind {
                *view.errors_by_kind.entry(kind).or_default() += n;
            }
            for (kind, n) in marker.warnings_by_kind {
                *view.warnings_by_kind.entry(kind).or_default() += n;
            }
            view.shards.extend(marker.shards);
        }
        view.shards.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Some(view))
    }

    /// Whether every unit committed and the manifest was written.
    pub fn complete(&self) -> bool {
        self.manifest.is_some()
    }

    pub fn units_total(&self) -> u64 {
        self.plan.plan.units.len() as u64
    }

    /// The indices of the workers that still own uncommitted units, under the worker count the job was started
    /// with (one worker for outputs that did not record it).
    pub fn unfinished_workers(&self) -> Vec<u64> {
        let workers = self.plan.workers.unwrap_or(1).max(1);
        let owners: BTreeSet<u64> = self
            .plan
            .plan
            .units
            .iter()
            .filter(|u| !self.committed.contains(&u.id))
            .map(|u| u.id % workers)
            .collect();
        owners.into_iter().collect()
    }

    /// The tables of the job: those its plan names, then any other a shard belongs to.
    pub fn tables(&self) -> Vec<String> {
        let mut tables = self.plan.tables.clone();
        for shard in &self.shards {
            if !tables.contains(&shard.table) {
                tables.push(shard.table.clone());
            }
        }
        tables
    }

    /// The visible shards of `table`, in path order.
    pub fn shards_of<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a ShardInfo> + 'a {
        self.shards.iter().filter(move |s| s.table == table)
    }

    /// Rows visible in `table`.
    pub fn rows(&self, table: &str) -> u64 {
        self.shards_of(table).map(|s| s.rows).sum()
    }

    /// Bytes of the visible shards.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreRegistry;
    use crate::plan::{Plan, WorkUnit};

    fn record(spec_hash: &str) -> PlanRecord {
        let plan = Plan { format: crate::InputFormat::Webdataset, units: Vec::new() };
        PlanRecord {
            created_by: created_by(),
            spec_hash: spec_hash.to_string(),
            plan_hash: plan.fingerprint(),
            input: "corpus".into(),
            tables: vec!["samples".into()],
            workers: Some(1),
            sink: None,
            schema_version: Some(lyrics_schemas::SCHEMA_VERSION.to_string()),
            plan,
        }
    }

    /// An output of an older table layout is not resumed (its tables would mix two), and --force starts it over.
    #[tokio::test]
    async fn an_output_of_another_schema_version_is_refused_and_forced_over() {
        let dir = tempfile::tempdir().unwrap();
        let registry = StoreRegistry::new(crate::StorageOptions::default());
        let output = registry.locate(dir.path().to_str().unwrap()).unwrap();
        open_output(&output, &mut PlanRecord { schema_version: None, ..record("spec") }, None, false)
            .await
            .unwrap();
        let refused = open_output(&output, &mut record("spec"), None, false).await.unwrap_err().to_string();
        assert!(refused.contains("schema version 2 or earlier") && refused.contains("--force"), "{refused}");
        open_output(&output, &mut record("spec"), None, true).await.unwrap();
        let written: PlanRecord = get_json(&output, PLAN_FILE).await.unwrap().unwrap();
        assert_eq!(written.schema_version.as_deref(), Some(lyrics_schemas::SCHEMA_VERSION));
        open_output(&output, &mut record("spec"), None, false).await.unwrap();
    }

    #[tokio::test]
    async fn an_output_with_the_earlier_spelling_of_the_spec_hash_is_resumed_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let registry = StoreRegistry::new(crate::StorageOptions::default());
        let output = registry.locate(dir.path().to_str().unwrap()).unwrap();
        open_output(&output, &mut record("typed"), None, false).await.unwrap();

        let mut resumed = record("resolved");
        open_output(&output, &mut resumed, Some("typed"), false).await.unwrap();
        assert_eq!(resumed.spec_hash, "typed", "the finalized manifest must carry the hash the plan holds");

        let refused = open_output(&output, &mut record("resolved"), Some("other"), false).await;
        assert!(matches!(refused, Err(PipelineError::Resume { .. })), "{refused:?}");
        let refused = open_output(&output, &mut record("resolved"), None, false).await;
        assert!(matches!(refused, Err(PipelineError::Resume { .. })), "{refused:?}");
    }

    /// An output planned with each Parquet file as one unit, resumed by a version that cuts files by row groups:
    /// refused, saying so, rather than mixing units of two plans.
    #[tokio::test]
    async fn an_output_whose_files_are_cut_differently_now_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let registry = StoreRegistry::new(crate::StorageOptions::default());
        let output = registry.locate(dir.path().to_str().unwrap()).unwrap();
        let unit = |id, range: [u64; 2], first_row| WorkUnit {
            id,
            object: "corpus/part-0.parquet".into(),
            range,
            first_row,
            files: vec![],
        };
        let with_units = |units: Vec<WorkUnit>| {
            let plan = Plan { format: crate::InputFormat::Parquet, units };
            PlanRecord { plan_hash: plan.fingerprint(), plan, ..record("spec") }
        };
        open_output(&output, &mut with_units(vec![unit(0, [0, 0], 0)]), None, false).await.unwrap();

        let cut = with_units(vec![unit(0, [0, 2], 0), unit(1, [2, 4], 10)]);
        let refused = open_output(&output, &mut cut.clone(), None, false).await.unwrap_err().to_string();
        assert!(refused.contains("cut into units differently now (1 units then, 2 now)"), "{refused}");
        assert!(refused.contains("--force"), "{refused}");

        let mut other = cut.clone();
        other.plan.units[1].object = "corpus/part-1.parquet".into();
        other.plan_hash = other.plan.fingerprint();
        let refused = open_output(&output, &mut other, None, false).await.unwrap_err().to_string();
        assert!(refused.contains("the input changed since it was planned"), "{refused}");

        open_output(&output, &mut cut.clone(), None, true).await.unwrap();
    }
}

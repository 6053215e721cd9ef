//! A second pass over what failed: `run --retry-errors KINDS` reads again the items of committed units whose error
//! rows are of those kinds (a web that timed out, refused, or answered 5xx or 429), and rewrites only those units.
//!
//! A unit is amended, never redone: its samples and product rows stay as they are, its retried items go through
//! the stages again, and what they became is written as more shards of the unit (numbered after its last ones).
//! Then the retried keys' old error rows are removed from the unit's errors shards and the marker is replaced.
//! So the work and the bytes rewritten are those of the failures, and a unit with nothing to retry is not touched.
//!
//! Each amended unit has an intent record, `_lyrics/retry/UUUUUU.json`, from before its first new shard until its
//! new marker is written, so that a worker killed at any point leaves a state its next run completes or undoes:
//!
//! - `writing` (new shards may be partly written): undone. The new shards, numbered from the recorded first
//!   number on, are deleted; the unit is as it was, its error rows still there to be retried again.
//! - `commit` (the new shards are whole, and listed): completed. The retried keys' old error rows are removed
//!   (idempotent: a shard that holds none is left as it is), the marker is rebuilt from the shards, the intent
//!   deleted.
//!
//! While any intent is present the job is not finished: the run that amends a unit first removes `_SUCCESS` and
//! the manifest (readers then see committed units through their markers), and finalizing waits until no intent
//! is left. Intents are completed or undone by the worker the unit belongs to, as it starts.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures::StreamExt;
use lyrics_schemas::{Table, col};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::commit::{MANIFEST_FILE, SUCCESS_FILE, UnitMarker, get_json, list_dir};
use crate::dedup::text_column;
use crate::sink::{ShardInfo, SinkOptions, shard_path};
use crate::store::Location;

/// Where intents are kept.
pub const RETRY_DIR: &str = "_lyrics/retry";

/// Error kinds to retry, as `--retry-errors` names them: exact kinds (`timeout`, `http_429`) or a class of HTTP
/// statuses (`http_5xx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryKinds(Vec<String>);

impl RetryKinds {
    /// Parses the kinds; an empty list, or a kind that is no word, is refused.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(kinds: I) -> Result<RetryKinds, PipelineError> {
        let mut parsed = Vec::new();
        for kind in kinds {
            let kind = kind.as_ref().trim();
            if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(PipelineError::Config(format!(
                    "--retry-errors: `{kind}` is not an error kind (kinds are words such as timeout, connect, \
                     http_503, or a class of statuses such as http_5xx)"
                )));
            }
            parsed.push(kind.to_ascii_lowercase());
        }
        if parsed.is_empty() {
            return Err(PipelineError::Config("--retry-errors: name at least one error kind".into()));
        }
        Ok(RetryKinds(parsed))
    }

    /// Whether an error row of `kind` is retried.
    pub fn matches(&self, kind: &str) -> bool {
        self.0.iter().any(|wanted| wanted == kind || class_matches(wanted, kind))
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// `http_5xx` matches `http_500` … `http_599`.
fn class_matches(class: &str, kind: &str) -> bool {
    let (Some(class), Some(status)) = (class.strip_prefix("http_"), kind.strip_prefix("http_")) else {
        return false;
    };
    let (class, status) = (class.as_bytes(), status.as_bytes());
    class.len() == 3
        && status.len() == 3
        && class[1..] == *b"xx"
        && class[0] == status[0]
        && status.iter().all(u8::is_ascii_digit)
}

/// How far an amendment got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Writing,
    Commit,
}

/// `_lyrics/retry/UUUUUU.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Intent {
    unit: u64,
    state: State,
    /// The number of the first new shard of each table.
    first_seq: BTreeMap<String, u32>,
    /// `commit`: the keys read again, whose old error rows go.
    #[serde(default)]
    keys: Vec<String>,
    /// `commit`: the new shards.
    #[serde(default)]
    shards: Vec<ShardInfo>,
}

fn intent_path(unit: u64) -> String {
    format!("{RETRY_DIR}/{unit:06}.json")
}

/// A committed unit to amend: its marker, and the keys of its error rows of the kinds retried.
#[derive(Debug, Clone)]
pub struct RetryUnit {
    pub marker: UnitMarker,
    pub keys: BTreeSet<String>,
}

impl RetryUnit {
    /// The number each table's first new shard gets: after the unit's last shard of that table.
    pub fn first_seq(&self) -> BTreeMap<String, u32> {
        let mut next: BTreeMap<String, u32> = BTreeMap::new();
        for shard in &self.marker.shards {
            if let Some(seq) = crate::dedup::seq_of(&shard.path) {
                let entry = next.entry(shard.table.clone()).or_default();
                *entry = (*entry).max(seq + 1);
            }
        }
        next
    }
}

/// The units among `committed` (with their markers read) that hold error rows of `kinds`, with those rows' keys.
/// Only the `key` and `kind` columns of their errors shards are read.
pub async fn select(
    output: &Location,
    committed: &[u64],
    kinds: &RetryKinds,
) -> Result<Vec<RetryUnit>, PipelineError> {
    let markers: Vec<Option<UnitMarker>> = futures::stream::iter(
        committed.iter().map(|&unit| async move { crate::commit::read_marker(output, unit).await }),
    )
    .buffered(16)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<_, _>>()?;
    let mut chosen = Vec::new();
    for marker in markers.into_iter().flatten() {
        if !marker.errors_by_kind.iter().any(|(kind, n)| *n > 0 && kinds.matches(kind)) {
            continue;
        }
        let mut keys = BTreeSet::new();
        for shard in marker.shards.iter().filter(|s| s.table == Table::Errors.name()) {
            for (key, kind) in error_keys(output, shard).await? {
                if kinds.matches(&kind) {
                    keys.insert(key);
                }
            }
        }
        // A key the unit holds a sample of stays as it is: its failed row was another occurrence of that key.
        for shard in marker.shards.iter().filter(|s| s.table == Table::Samples.name()) {
            for key in sample_keys(output, shard).await? {
                keys.remove(&key);
            }
        }
        if !keys.is_empty() {
            chosen.push(RetryUnit { marker, keys });
        }
    }
    Ok(chosen)
}

/// The `(key, kind)` of every row of an errors shard.
async fn error_keys(output: &Location, shard: &ShardInfo) -> Result<Vec<(String, String)>, PipelineError> {
    let uri = output.uri_of(&output.child(&shard.path));
    let mut stream = crate::dedup::open(output, shard, Some(&[col::KEY, col::KIND])).await?;
    let mut found = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| PipelineError::input(&uri, e))?;
        let (keys, kinds) = (text_column(&batch, col::KEY, &uri)?, text_column(&batch, col::KIND, &uri)?);
        for row in 0..batch.num_rows() {
            found.push((keys.value(row).to_string(), kinds.value(row).to_string()));
        }
    }
    Ok(found)
}

/// The `key` of every row of a samples shard.
async fn sample_keys(output: &Location, shard: &ShardInfo) -> Result<Vec<String>, PipelineError> {
    let uri = output.uri_of(&output.child(&shard.path));
    let mut stream = crate::dedup::open(output, shard, Some(&[col::KEY])).await?;
    let mut found = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| PipelineError::input(&uri, e))?;
        let keys = text_column(&batch, col::KEY, &uri)?;
        found.extend(keys.iter().flatten().map(str::to_string));
    }
    Ok(found)
}

/// Makes the output unfinished before a unit of it is amended: `_SUCCESS` first (what readers wait for), then the
/// manifest, so that readers go by the markers, and the run's end finalizes the job again.
pub async fn unfinish(output: &Location) -> Result<(), PipelineError> {
    for relative in [SUCCESS_FILE, MANIFEST_FILE] {
        let path = output.child(relative);
        match output.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(PipelineError::sink(output.uri_of(&path), e)),
        }
    }
    Ok(())
}

/// Records that `unit` is about to get new shards from `first_seq` on.
pub async fn begin(output: &Location, unit: &RetryUnit) -> Result<(), PipelineError> {
    let intent = Intent {
        unit: unit.marker.unit,
        state: State::Writing,
        first_seq: unit.first_seq(),
        keys: Vec::new(),
        shards: Vec::new(),
    };
    crate::commit::put_json(output, &intent_path(intent.unit), &intent).await
}

/// Commits an amended unit whose new `shards` are whole: the `keys` read again lose their old error rows, the
/// marker is rebuilt, the intent removed. Returns the new marker.
pub async fn commit(
    output: &Location,
    sink: &SinkOptions,
    unit: &RetryUnit,
    keys: BTreeSet<String>,
    shards: Vec<ShardInfo>,
) -> Result<UnitMarker, PipelineError> {
    let intent = Intent {
        unit: unit.marker.unit,
        state: State::Commit,
        first_seq: unit.first_seq(),
        keys: keys.into_iter().collect(),
        shards,
    };
    crate::commit::put_json(output, &intent_path(intent.unit), &intent).await?;
    crate::failpoint::hit("before-retry-marker", intent.unit);
    complete(output, sink, &unit.marker, &intent).await
}

/// Completes or undoes the intents of the units `mine` says belong to this worker; returns how many.
pub async fn recover(
    output: &Location,
    sink: &SinkOptions,
    mine: impl Fn(u64) -> bool,
) -> Result<usize, PipelineError> {
    let listed = list_dir(output, RETRY_DIR).await?;
    let units: Vec<u64> = listed
        .iter()
        .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok())
        .filter(|unit| mine(*unit))
        .collect();
    for &unit in &units {
        let Some(intent) = get_json::<Intent>(output, &intent_path(unit)).await? else { continue };
        let marker = crate::commit::read_marker(output, unit).await?.ok_or_else(|| PipelineError::Resume {
            output: output.uri(),
            message: format!("unit {unit} has a retry record but no marker"),
        })?;
        match intent.state {
            State::Writing => undo(output, &marker, &intent).await?,
            State::Commit => {
                complete(output, sink, &marker, &intent).await?;
            }
        }
        tracing::info!(unit, state = ?intent.state, "finished what a killed retry of the unit left");
    }
    Ok(units.len())
}

/// Whether any unit of the output is being amended (finalizing waits for none).
pub async fn pending(output: &Location) -> Result<bool, PipelineError> {
    Ok(!list_dir(output, RETRY_DIR).await?.is_empty())
}

/// Deletes the new shards a `writing` amendment may have left (numbered from `first_seq` on, one after the
/// other; from 0 in a table the unit had no shard of), then the intent.
async fn undo(output: &Location, marker: &UnitMarker, intent: &Intent) -> Result<(), PipelineError> {
    let listed: HashSet<&str> = marker.shards.iter().map(|s| s.path.as_str()).collect();
    for table in Table::ALL {
        let first = intent.first_seq.get(table.name()).copied().unwrap_or(0);
        for seq in first.. {
            let relative = shard_path(table, marker.unit, seq);
            if listed.contains(relative.as_str()) {
                continue;
            }
            let path = output.child(&relative);
            match output.store.head(&path).await {
                Ok(_) => {
                    output.store.delete(&path).await.map_err(|e| PipelineError::sink(output.uri_of(&path), e))?
                }
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(PipelineError::store(output.uri_of(&path), e)),
            }
        }
    }
    delete_intent(output, marker.unit).await
}

/// Removes the retried keys' old error rows, writes the marker of the old shards (rewritten) and the new ones,
/// and deletes the intent. Every step may be repeated: a marker that already lists the new shards is final.
async fn complete(
    output: &Location,
    sink: &SinkOptions,
    old: &UnitMarker,
    intent: &Intent,
) -> Result<UnitMarker, PipelineError> {
    let new: HashSet<&str> = intent.shards.iter().map(|s| s.path.as_str()).collect();
    if old.shards.iter().any(|s| new.contains(s.path.as_str())) {
        delete_intent(output, old.unit).await?;
        return Ok(old.clone());
    }
    let keys: HashSet<&str> = intent.keys.iter().map(String::as_str).collect();
    let mut shards = Vec::with_capacity(old.shards.len() + intent.shards.len());
    for shard in &old.shards {
        if shard.table == Table::Errors.name() {
            shards.push(crate::dedup::rewrite_without(output, sink, shard, &keys).await?);
        } else {
            shards.push(shard.clone());
        }
    }
    shards.extend(intent.shards.iter().cloned());
    let mut errors_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for shard in shards.iter().filter(|s| s.table == Table::Errors.name()) {
        for (_, kind) in error_keys(output, shard).await? {
            *errors_by_kind.entry(kind).or_default() += 1;
        }
    }
    let marker = UnitMarker {
        rows: shards.iter().filter(|s| s.table == Table::Samples.name()).map(|s| s.rows).sum(),
        errors: errors_by_kind.values().sum(),
        errors_by_kind,
        shards,
        ..old.clone()
    };
    crate::commit::write_marker(output, &marker).await?;
    delete_intent(output, old.unit).await?;
    Ok(marker)
}

async fn delete_intent(output: &Location, unit: u64) -> Result<(), PipelineError> {
    let path = output.child(&intent_path(unit));
    match output.store.delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(PipelineError::sink(output.uri_of(&path), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_exactly_or_by_status_class() {
        let kinds = RetryKinds::new(["timeout", "connect", "http_5xx", "HTTP_429"]).unwrap();
        for kind in ["timeout", "connect", "http_500", "http_503", "http_599", "http_429"] {
            assert!(kinds.matches(kind), "{kind}");
        }
        for kind in ["http_404", "http_430", "not_an_image", "opted_out", "http_5", "http_5000", "http_5x0", "dns"]
        {
            assert!(!kinds.matches(kind), "{kind}");
        }
        assert!(RetryKinds::new(Vec::<String>::new()).is_err());
        assert!(RetryKinds::new(["timeout", ""]).is_err());
        assert!(RetryKinds::new(["time out"]).is_err());
    }

    #[test]
    fn new_shards_are_numbered_after_the_last_of_each_table() {
        let shard = |path: &str, table: &str| ShardInfo {
            path: path.into(),
            table: table.into(),
            rows: 1,
            bytes: 1,
            schema_version: "1".into(),
        };
        let marker = UnitMarker {
            unit: 3,
            items: 2,
            rows: 1,
            errors: 1,
            errors_by_kind: BTreeMap::new(),
            warnings_by_kind: BTreeMap::new(),
            shards: vec![
                shard("samples/part-000003-000.parquet", "samples"),
                shard("samples/part-000003-001.parquet", "samples"),
                shard("errors/part-000003-000.parquet", "errors"),
            ],
            duplicates: 0,
        };
        let unit = RetryUnit { marker, keys: BTreeSet::new() };
        let first = unit.first_seq();
        assert_eq!(first.get("samples"), Some(&2));
        assert_eq!(first.get("errors"), Some(&1));
        assert_eq!(first.get("pretrain"), None);
    }
}

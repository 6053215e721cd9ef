//! Claims: any number of workers with no index share a job's units (`run --claim`), so a straggler or a lost
//! machine never holds the job up.
//!
//! A worker claims an uncommitted unit by creating `_lyrics/claims/UUUUUU-GGGGGG.json` with a conditional create
//! (object_store's `PutMode::Create`: If-None-Match on S3 and Azure, an exclusive create on local disks), holding
//! its name and a lease's expiry; `G` is the claim's generation. It renews the lease (rewriting its own file) while
//! it works. A claim whose lease expired may be taken over by creating the next generation, again conditionally,
//! so of two workers taking over at once exactly one wins. The unit's owner is the highest generation.
//!
//! Before anything of the unit becomes visible (each shard's completion, the commit marker), the owner makes sure
//! it still owns the unit ([`Claim::ensure`]): within its lease nobody can have taken over, so that costs nothing;
//! past it (the worker was frozen, or cut off), it looks, and a worker that finds its unit taken stops without
//! writing and without deleting anything (the new owner writes the same bytes, perhaps to the same paths).
//! Units are deterministic, so whoever commits a unit commits the same output.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::commit::{get_json, list_dir};
use crate::store::Location;

/// Where claims live, under the output.
pub const CLAIMS_DIR: &str = "_lyrics/claims";

/// The content of a claim file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    owner: String,
    /// Milliseconds since the Unix epoch.
    expires_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn claim_path(unit: u64, generation: u64) -> String {
    format!("{CLAIMS_DIR}/{unit:06}-{generation:06}.json")
}

/// A unit this worker claimed.
#[derive(Debug)]
pub struct Claim {
    output: Location,
    unit: u64,
    generation: u64,
    owner: String,
    lease: Duration,
    /// When the lease this worker last wrote runs out, in ms since the epoch.
    expires_ms: Mutex<u64>,
}

/// What became of an attempt to claim a unit.
pub enum Attempt {
    Claimed(Arc<Claim>),
    /// Another worker holds a live lease on it.
    Taken,
}

/// The generations of `unit`'s claims and the highest one's lease.
async fn latest(output: &Location, unit: u64) -> Result<Option<(u64, Lease)>, PipelineError> {
    let listed = list_dir(output, CLAIMS_DIR).await?;
    let head = format!("{unit:06}-");
    let generation = listed
        .iter()
        .filter_map(|m| m.location.filename()?.strip_prefix(&head)?.strip_suffix(".json")?.parse::<u64>().ok())
        .max();
    let Some(generation) = generation else { return Ok(None) };
    let relative = claim_path(unit, generation);
    // Claims are never deleted: one listed a moment ago is there.
    let lease = get_json::<Lease>(output, &relative)
        .await?
        .ok_or_else(|| PipelineError::store(output.uri_of(&output.child(&relative)), "the claim vanished"))?;
    Ok(Some((generation, lease)))
}

/// Claims `unit` for `owner` with a lease of `lease`, taking over an expired claim.
pub async fn acquire(output: &Location, unit: u64, owner: &str, lease: Duration) -> Result<Attempt, PipelineError> {
    let generation = match latest(output, unit).await? {
        None => 0,
        Some((_, current)) if current.expires_ms > now_ms() => return Ok(Attempt::Taken),
        Some((generation, current)) => {
            tracing::warn!(unit, previous = %current.owner, "taking over a unit whose lease expired");
            generation + 1
        }
    };
    let expires_ms = now_ms() + lease.as_millis() as u64;
    let claim = Lease { owner: owner.to_string(), expires_ms };
    let path = output.child(&claim_path(unit, generation));
    let bytes = serde_json::to_vec(&claim).map_err(|e| PipelineError::Internal(e.to_string()))?;
    let create = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
    match output.store.put_opts(&path, PutPayload::from(bytes), create).await {
        Ok(_) => Ok(Attempt::Claimed(Arc::new(Claim {
            output: output.clone(),
            unit,
            generation,
            owner: owner.to_string(),
            lease,
            expires_ms: Mutex::new(expires_ms),
        }))),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(Attempt::Taken),
        Err(e) => Err(PipelineError::sink(output.uri_of(&path), e)),
    }
}

impl Claim {
    pub fn unit(&self) -> u64 {
        self.unit
    }

    fn path(&self) -> Path {
        self.output.child(&claim_path(self.unit, self.generation))
    }

    /// Extends the lease, when this worker still owns the unit; returns whether it does.
    pub async fn renew(&self) -> Result<bool, PipelineError> {
        if !self.owned().await? {
            return Ok(false);
        }
        let expires_ms = now_ms() + self.lease.as_millis() as u64;
        let lease = Lease { owner: self.owner.clone(), expires_ms };
        let bytes = serde_json::to_vec(&lease).map_err(|e| PipelineError::Internal(e.to_string()))?;
        let path = self.path();
        self.output
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| PipelineError::sink(self.output.uri_of(&path), e))?;
        if let Ok(mut slot) = self.expires_ms.lock() {
            *slot = expires_ms;
        }
        Ok(true)
    }

    /// Whether no later generation has taken the unit.
    async fn owned(&self) -> Result<bool, PipelineError> {
        Ok(latest(&self.output, self.unit).await?.is_some_and(|(generation, _)| generation == self.generation))
    }

    /// Succeeds when this worker may make the unit's output visible: at once within its lease (nobody can take
    /// over before it runs out), else after checking that no other worker took the unit, renewing the lease.
    pub async fn ensure(&self) -> Result<(), PipelineError> {
        let expires = self.expires_ms.lock().map_or(0, |slot| *slot);
        // A margin for clocks and for the time the write itself takes.
        let margin = (self.lease.as_millis() as u64) / 4;
        if now_ms() + margin < expires {
            return Ok(());
        }
        if self.renew().await? {
            return Ok(());
        }
        Err(PipelineError::Taken { unit: self.unit })
    }

    /// Renews the lease every third of it until the unit ends (the task is aborted then).
    pub fn keep_alive(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let claim = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(claim.lease / 3).await;
                match claim.renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(unit = claim.unit, "another worker took this unit over; leaving it");
                        return;
                    }
                    Err(e) => tracing::warn!(unit = claim.unit, error = %e, "cannot renew the unit's lease"),
                }
            }
        })
    }
}

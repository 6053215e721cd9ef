//! Claims: any number of workers with no index share a job's units (`run --claim`), so a straggler or a lost
//! machine never holds the job up.
//!
//! A worker claims an uncommitted unit by creating `_lyrics/claims/UUUUUU.json` with a conditional create
//! (object_store's `PutMode::Create`: If-None-Match on S3 and Azure, a generation precondition on GCS), holding
//! its name and a lease's expiry. It renews the lease while it works, and an expired lease may be taken over by
//! another worker; both are compare-and-swaps of that one file (`PutMode::Update`: If-Match on the ETag the worker
//! read), so of two workers taking over at once exactly one wins, and a frozen worker that wakes up cannot renew
//! a lease that is no longer its own. On a local disk, where object_store has no conditional update, the same
//! read-decide-write runs under an exclusive lock of `_lyrics/claims/.lock` and writes by rename, so readers never
//! see half a claim.
//!
//! Before anything of the unit becomes visible (each shard's completion, the commit marker), the owner makes sure
//! it still owns the unit ([`Claim::ensure`]): within its lease nobody can have taken over, so that costs nothing;
//! past it (the worker was frozen, or cut off), it renews, and a worker that finds its unit taken stops without
//! writing and without deleting anything (the new owner writes the same bytes, perhaps to the same paths).
//! Units are deterministic, so whoever commits a unit commits the same output.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::PipelineError;
use crate::store::Location;

/// Where claims live, under the output.
pub const CLAIMS_DIR: &str = "_lyrics/claims";

/// The content of a claim file: who holds the unit, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The worker (`pid 123 started 1764619385`).
    pub owner: String,
    /// When the lease runs out unless its owner renews it: milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn claim_path(unit: u64) -> String {
    format!("{CLAIMS_DIR}/{unit:06}.json")
}

/// A unit this worker claimed.
#[derive(Debug)]
pub struct Claim {
    output: Location,
    unit: u64,
    owner: String,
    lease: Duration,
    /// The lease this worker last wrote.
    written: Mutex<Lease>,
}

/// What became of an attempt to claim a unit.
pub enum Attempt {
    Claimed(Arc<Claim>),
    /// Another worker holds a live lease on it: its lease as read then (`None` when it could not be read back),
    /// so the user knows when a worker that is gone stops holding the unit.
    Held(Option<Lease>),
}

/// Replaces `unit`'s claim with what `decide` makes of the current one (`None`: no claim yet), atomically: returns
/// the lease written, or `None` when `decide` declined or another worker changed the claim in between.
async fn swap(
    output: &Location,
    unit: u64,
    decide: impl FnOnce(Option<&Lease>) -> Option<Lease> + Send + 'static,
) -> Result<Option<Lease>, PipelineError> {
    let relative = claim_path(unit);
    let path = output.child(&relative);
    let uri = output.uri_of(&path);
    if let Some(file) = output.local_path(&path) {
        return tokio::task::spawn_blocking(move || swap_local(&file, decide))
            .await
            .map_err(|e| PipelineError::Internal(format!("the claim update of {uri} panicked: {e}")))?
            .map_err(|e| PipelineError::sink(&uri, e));
    }

    let current = match output.store.get(&path).await {
        Ok(result) => {
            let version = UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
            let bytes = result.bytes().await.map_err(|e| PipelineError::store(&uri, e))?;
            let lease: Lease = serde_json::from_slice(&bytes)
                .map_err(|e| PipelineError::input(&uri, format!("unreadable claim: {e}")))?;
            Some((lease, version))
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(PipelineError::store(&uri, e)),
    };
    let Some(next) = decide(current.as_ref().map(|(lease, _)| lease)) else { return Ok(None) };
    let mode = match current {
        None => PutMode::Create,
        Some((_, version)) => PutMode::Update(version),
    };
    let bytes = serde_json::to_vec(&next).map_err(|e| PipelineError::Internal(e.to_string()))?;
    match output.store.put_opts(&path, PutPayload::from(bytes), PutOptions { mode, ..PutOptions::default() }).await
    {
        Ok(_) => Ok(Some(next)),
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(None),
        Err(e) => Err(PipelineError::sink(&uri, e)),
    }
}

/// [`swap`] on a local disk: the read, the decision and the write under an exclusive lock of the claims folder's
/// lock file, the write by rename.
fn swap_local(
    file: &std::path::Path,
    decide: impl FnOnce(Option<&Lease>) -> Option<Lease>,
) -> std::io::Result<Option<Lease>> {
    let dir = file.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".lock"))?;
    lock.lock()?;
    let current =
        match std::fs::read(file) {
            Ok(bytes) => Some(serde_json::from_slice::<Lease>(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unreadable claim: {e}"))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
    let Some(next) = decide(current.as_ref()) else { return Ok(None) };
    let bytes = serde_json::to_vec(&next).map_err(std::io::Error::other)?;
    let staged = dir.join(format!(
        ".{}.{}",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("claim"),
        std::process::id()
    ));
    std::fs::write(&staged, bytes)?;
    std::fs::rename(&staged, file)?;
    // The lock is released when `lock` closes.
    Ok(Some(next))
}

/// Claims `unit` for `owner` with a lease of `lease`, taking over an expired claim.
pub async fn acquire(output: &Location, unit: u64, owner: &str, lease: Duration) -> Result<Attempt, PipelineError> {
    let wanted = Lease { owner: owner.to_string(), expires_ms: now_ms() + lease.as_millis() as u64 };
    let seen: Arc<Mutex<Option<Lease>>> = Arc::default();
    let keep = seen.clone();
    let written = swap(output, unit, move |current| match current {
        None => Some(wanted),
        Some(current) if current.expires_ms > now_ms() => {
            if let Ok(mut keep) = keep.lock() {
                *keep = Some(current.clone());
            }
            None
        }
        Some(current) => {
            tracing::warn!(unit, previous = %current.owner, "taking over a unit whose lease expired");
            Some(wanted)
        }
    })
    .await?;
    if let Some(written) = written {
        return Ok(Attempt::Claimed(Arc::new(Claim {
            output: output.clone(),
            unit,
            owner: owner.to_string(),
            lease,
            written: Mutex::new(written),
        })));
    }
    let seen = seen.lock().ok().and_then(|mut seen| seen.take());
    // Another worker won the race to a claim that was free or had run out: read what it wrote.
    let holder = match seen {
        Some(lease) => Some(lease),
        None => holder(output, unit).await?,
    };
    Ok(Attempt::Held(holder))
}

/// The lease on `unit` as it stands, if the unit was ever claimed; nothing is written.
pub async fn holder(output: &Location, unit: u64) -> Result<Option<Lease>, PipelineError> {
    let seen: Arc<Mutex<Option<Lease>>> = Arc::default();
    let keep = seen.clone();
    swap(output, unit, move |current| {
        if let Ok(mut keep) = keep.lock() {
            *keep = current.cloned();
        }
        None
    })
    .await?;
    Ok(seen.lock().ok().and_then(|mut seen| seen.take()))
}

impl Claim {
    pub fn unit(&self) -> u64 {
        self.unit
    }

    /// Extends the lease, when this worker still owns the unit; returns whether it does.
    pub async fn renew(&self) -> Result<bool, PipelineError> {
        let next = Lease { owner: self.owner.clone(), expires_ms: now_ms() + self.lease.as_millis() as u64 };
        let owner = next.owner.clone();
        // The owner's name, not the whole lease, tells whose the claim is: a renewal whose write went through but
        // whose reply was lost must not make the next renewal think the unit was taken.
        let written = swap(&self.output, self.unit, move |current| {
            current.is_some_and(|current| current.owner == owner).then_some(next)
        })
        .await?;
        let Some(written) = written else { return Ok(false) };
        if let Ok(mut held) = self.written.lock() {
            *held = written;
        }
        Ok(true)
    }

    /// Succeeds when this worker may make the unit's output visible: at once within its lease (nobody can take
    /// over before it runs out), else after checking that no other worker took the unit, renewing the lease.
    pub async fn ensure(&self) -> Result<(), PipelineError> {
        let expires = self.written.lock().map_or(0, |held| held.expires_ms);
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

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use url::Url;

    fn local(dir: &std::path::Path) -> Location {
        let path = Path::from_filesystem_path(dir).unwrap();
        Location::new(Arc::new(object_store::local::LocalFileSystem::new()), path, Url::parse("file:///").unwrap())
    }

    fn memory() -> Location {
        Location::new(Arc::new(InMemory::new()), Path::from("out"), Url::parse("memory:///").unwrap())
    }

    fn claimed(attempt: Attempt) -> Option<Arc<Claim>> {
        match attempt {
            Attempt::Claimed(claim) => Some(claim),
            Attempt::Held(_) => None,
        }
    }

    async fn the_claim_protocol(output: Location) {
        let minute = Duration::from_secs(60);
        let first = claimed(acquire(&output, 3, "a", minute).await.unwrap()).unwrap();
        let Attempt::Held(Some(held)) = acquire(&output, 3, "b", minute).await.unwrap() else {
            panic!("a live lease is not taken over")
        };
        assert_eq!(held.owner, "a", "the holder is named");
        let left = held.expires_ms.saturating_sub(now_ms());
        assert!((50_000..=60_000).contains(&left), "and when its lease ends: in {left} ms");
        assert!(first.renew().await.unwrap());
        first.ensure().await.unwrap();

        // A lease that has run out is taken over by exactly one of the workers that try at once.
        let short = claimed(acquire(&output, 4, "c", Duration::ZERO).await.unwrap()).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let tries = (0..6).map(|i| {
            let output = output.clone();
            tokio::spawn(async move { acquire(&output, 4, &format!("w{i}"), minute).await.map(claimed) })
        });
        let mut winners = Vec::new();
        for attempt in futures::future::join_all(tries).await {
            winners.extend(attempt.unwrap().unwrap());
        }
        assert_eq!(winners.len(), 1, "one takeover wins");
        // The worker that lost its lease cannot renew it, and may not make anything visible.
        assert!(!short.renew().await.unwrap());
        assert!(matches!(short.ensure().await, Err(PipelineError::Taken { unit: 4 })));
        assert!(winners[0].renew().await.unwrap());

        let names: Vec<String> =
            futures::TryStreamExt::try_collect::<Vec<_>>(output.store.list(Some(&output.child(CLAIMS_DIR))))
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| m.location.filename().map(str::to_string))
                .filter(|name| name != ".lock")
                .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["000003.json", "000004.json"], "one claim file per unit");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_on_a_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        the_claim_protocol(local(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_on_an_object_store_with_conditional_updates() {
        the_claim_protocol(memory()).await;
    }
}

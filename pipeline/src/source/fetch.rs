//! Items whose image is a separate object (manifest rows, Parquet path columns, COCO images, loose files):
//! resolving the reference against the store (or the web, for `http(s)` URLs: see [`crate::web`]) and fetching
//! many at once, handing the items on in order.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::GetOptions;
use object_store::path::Path;

use super::{Emitter, SourceContext};
use crate::PipelineError;
use crate::item::{ItemError, RawItem, SourceRecord};
use crate::store::{Location, StorageOptions, redact, redact_secrets};
use crate::web::{Fetched, is_web_url};

/// An item that names its image instead of holding it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageRefItem {
    pub key: String,
    /// Where the item is described (`manifest.jsonl#row=12`).
    pub source: String,
    /// Path (relative to the image prefix, or absolute) or URL of the image.
    pub reference: Option<String>,
    /// The image bytes, when the row holds them inline.
    pub inline: Option<Vec<u8>>,
    pub captions: Vec<String>,
    pub meta: Option<String>,
    /// Set when the row itself is bad: the item becomes this error row.
    pub error: Option<ItemError>,
}

/// The folder holding `path`.
pub(crate) fn parent(path: &Path) -> Path {
    let parts: Vec<_> = path.parts().collect();
    Path::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned())
}

/// Resolves each item's image and pushes the items, in order. Fetches complete in any order: up to the configured
/// concurrency are in flight at once (`[download] concurrency` when the items name web URLs, else `[storage]`), and
/// a slow or hanging URL holds one of them while the others go on. Items fetched ahead of a slow one wait for it,
/// up to `[download] max_bytes_in_flight` bytes of them (shared by the units read at once: see
/// [`super::ReadAhead`]), so that the unit's records still go out in input order:
/// what a shard holds, and where it is cut, then never depends on which answer came first.
/// `base` is the folder relative references are resolved against, unless `image_prefix` is set.
pub(crate) async fn fetch_all(
    ctx: &SourceContext,
    base: &Location,
    items: Vec<ImageRefItem>,
    emitter: &mut Emitter,
) -> Result<(), PipelineError> {
    let prefix = match &ctx.options.image_prefix {
        Some(prefix) => ctx.registry.locate(prefix)?,
        None => base.clone(),
    };
    let download = ctx.registry.download_options();
    let web = matches!(prefix.base().scheme(), "http" | "https")
        || items.iter().any(|item| item.reference.as_deref().is_some_and(is_web_url));
    let concurrency = if web { download.concurrency.max(1) } else { ctx.registry.options().concurrency.max(1) };
    let budget = download.max_bytes_in_flight.max(1);
    // Items launched ahead of the first unfinished one. Object stores keep their old window (what `buffered` held);
    // the web's is wider, so a hanging URL lets many others by, and bounded, as error rows weigh no bytes.
    let window = if web { concurrency.saturating_mul(64) } else { concurrency };
    let record_bytes = |record: &SourceRecord| match record {
        SourceRecord::Raw(raw) => raw.bytes.len() as u64,
        SourceRecord::Error(_) => 0,
    };
    // Read again for some keys only (`--retry-errors`): the others' images are not fetched at all.
    let items: Vec<ImageRefItem> = items.into_iter().filter(|item| emitter.wants(&item.key)).collect();
    let mut pending = items.into_iter().enumerate();
    // Each fetch is a task of its own, so that it goes on while this unit waits to push (a unit read ahead waits
    // for the bytes held to fall): a request left unpolled would keep its slot of `concurrency` and its
    // connection's unread answer, and the unit being handed on could then wait for slots that never come free.
    // Dropping the set (an error, a run that stops) cancels what is still running.
    let shared = Arc::new((ctx.clone(), prefix));
    let mut running = tokio::task::JoinSet::new();
    // Fetched records waiting for those before them, by their index in the unit.
    let mut done: BTreeMap<usize, SourceRecord> = BTreeMap::new();
    let mut waiting_bytes = 0u64;
    let (mut launched, mut next) = (0usize, 0usize);
    loop {
        // Items fetched out of order are counted in the bytes the units read at once may hold, so that a unit read
        // ahead stops fetching when those are at the limit (the head's never stops).
        let room = emitter.has_room();
        while room && running.len() < concurrency && waiting_bytes < budget && launched - next < window {
            let Some((index, item)) = pending.next() else { break };
            launched += 1;
            let shared = shared.clone();
            running.spawn(async move { (index, fetch_one(&shared.0, &shared.1, item).await) });
        }
        // The item `next` is always running or done: with nothing running, every launched item was pushed.
        if running.is_empty() {
            if pending.len() == 0 {
                break;
            }
            emitter.wait_room().await;
            continue;
        }
        let Some(joined) = running.join_next().await else { break };
        let (index, record) =
            joined.map_err(|e| PipelineError::Internal(format!("an image fetch ended without an answer: {e}")))?;
        let record = record?;
        let bytes = record_bytes(&record);
        waiting_bytes += bytes;
        emitter.hold(bytes);
        done.insert(index, record);
        while let Some(record) = done.remove(&next) {
            let bytes = record_bytes(&record);
            waiting_bytes -= bytes;
            emitter.unhold(bytes);
            emitter.push(record).await?;
            next += 1;
        }
    }
    Ok(())
}

async fn fetch_one(
    ctx: &SourceContext,
    prefix: &Location,
    item: ImageRefItem,
) -> Result<SourceRecord, PipelineError> {
    let ImageRefItem { key, source, reference, inline, captions, meta, error } = item;
    if let Some(error) = error {
        return Ok(SourceRecord::error(&key, &source, error));
    }
    let raw = |bytes: Vec<u8>, image_path: Option<String>| {
        SourceRecord::Raw(RawItem {
            key: key.clone(),
            source: source.clone(),
            image_path,
            bytes,
            captions: captions.clone(),
            meta: meta.clone(),
        })
    };
    if let Some(bytes) = inline {
        return Ok(raw(bytes, reference));
    }
    let Some(reference) = reference.filter(|r| !r.trim().is_empty()) else {
        return Ok(SourceRecord::error(
            &key,
            &source,
            ItemError::new("read", "missing_image", "the row names no image"),
        ));
    };
    let limit = ctx.options.max_image_bytes;
    // A web URL is fetched as written, query string and all (a signed URL needs its signature).
    let web_url = if is_web_url(&reference) {
        reference.trim().to_string()
    } else {
        let location = match resolve(ctx, prefix, &reference) {
            Ok(location) => location,
            Err(error) => return Ok(SourceRecord::error(&key, &source, error)),
        };
        if !matches!(location.base().scheme(), "http" | "https") {
            return match get_limited(&location, limit, ctx.registry.options()).await {
                Ok(Ok(bytes)) => Ok(raw(bytes, Some(reference))),
                Ok(Err(error)) => Ok(SourceRecord::error(&key, &source, error)),
                Err(error) => Err(error),
            };
        }
        location.uri()
    };
    match ctx.registry.web()?.get(&web_url, limit).await {
        Ok(fetched) => {
            let meta = with_provenance(meta.clone(), &fetched);
            Ok(SourceRecord::Raw(RawItem {
                key: key.clone(),
                source: source.clone(),
                image_path: Some(reference),
                captions: captions.clone(),
                meta,
                bytes: fetched.bytes,
            }))
        }
        Err(error) => Ok(SourceRecord::error(&key, &source, error)),
    }
}

/// `meta` with where a web image came from, under `download`: the URL it was served from after redirects
/// (credentials are removed from it as from every URL kept), the HTTP status and the content type. A `meta` that
/// is not a JSON object, or already has a `download` field, is left as it is.
fn with_provenance(meta: Option<String>, fetched: &Fetched) -> Option<String> {
    use serde_json::{Map, Value, json};
    let mut fields = match meta.as_deref().map(serde_json::from_str::<Value>) {
        None => Map::new(),
        Some(Ok(Value::Object(fields))) if !fields.contains_key("download") => fields,
        Some(_) => return meta,
    };
    let provenance =
        json!({"url": fetched.final_url, "status": fetched.status, "content_type": fetched.content_type});
    fields.insert("download".into(), provenance);
    Some(Value::Object(fields).to_string())
}

/// The location an image reference names: a URL of its own, or a path under `prefix`.
fn resolve(ctx: &SourceContext, prefix: &Location, reference: &str) -> Result<Location, ItemError> {
    let reference = reference.trim();
    if reference.contains("://") {
        return ctx.registry.locate(reference).map_err(|e| ItemError::new("read", "bad_reference", e.to_string()));
    }
    if reference.split(['/', '\\']).any(|part| part == "..") {
        return Err(ItemError::new(
            "read",
            "unsafe_path",
            format!("image path {reference} leaves the image folder"),
        ));
    }
    let path = if let Some(absolute) = reference.strip_prefix('/') {
        Path::parse(absolute)
    } else {
        Path::parse(prefix.child(reference).as_ref())
    };
    path.map(|p| prefix.at(p))
        .map_err(|e| ItemError::new("read", "bad_reference", format!("image path {reference}: {e}")))
}

/// The object's bytes, refusing objects above `limit` before reading them. The outer error fails the unit (the
/// store is unavailable past its retries); the inner one is the item's (missing, forbidden, too large, or a
/// download that failed past its retries).
///
/// object_store retries a request that fails (5xx, a reset, a timeout), and resumes a body that breaks off only
/// when the server sent an ETag (with a ranged GET, which plain web servers may not honour). A body that breaks
/// off (a connection closed before `Content-Length` bytes came) is fetched again here, whole, within the same
/// budget (`storage.max_retries`, `backoff_s` doubling, `retry_timeout_s`).
pub(crate) async fn get_limited(
    location: &Location,
    limit: u64,
    storage: &StorageOptions,
) -> Result<Result<Vec<u8>, ItemError>, PipelineError> {
    let uri = location.uri();
    let started = Instant::now();
    let budget = Duration::from_secs_f64(storage.retry_timeout_s.max(0.0));
    let mut backoff = Duration::from_secs_f64(storage.backoff_s.max(0.0));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match location.store.get_opts(&location.path, GetOptions::default()).await {
            Ok(result) => result,
            Err(e) => return item_or_unit_error(&uri, e, attempt),
        };
        let size = result.meta.size;
        if size > limit {
            return Ok(Err(ItemError::new(
                "read",
                "too_large",
                format!("{}: {size} bytes exceeds the limit of {limit} bytes", redact(&uri)),
            )));
        }
        match result.bytes().await {
            Ok(bytes) => return Ok(Ok(bytes.to_vec())),
            Err(e) if attempt <= storage.max_retries && started.elapsed() + backoff < budget => {
                tracing::info!(
                    uri = %redact(&uri),
                    attempt,
                    error = %redact_secrets(&e.to_string()),
                    "the body broke off; fetching it again"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return item_or_unit_error(&uri, e, attempt),
        }
    }
}

/// The longest wait between two attempts at one object (object_store's own cap).
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Missing and forbidden objects are the item's problem; anything else (the store is down past its retries) is
/// the unit's, so a rerun retries it. Plain web URLs are the exception: the web is flaky, so their failures are
/// the item's, as in img2dataset. Every message names the object (redacted).
fn item_or_unit_error<T>(
    uri: &str,
    e: object_store::Error,
    attempts: usize,
) -> Result<Result<T, ItemError>, PipelineError> {
    let message = redact_secrets(&e.to_string());
    let named = redact(uri);
    match e {
        object_store::Error::NotFound { .. } => {
            Ok(Err(ItemError::new("read", "missing_file", format!("not found: {named}"))))
        }
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            Ok(Err(ItemError::new("read", "forbidden", format!("{named}: {message}"))))
        }
        _ if uri.starts_with("http://") || uri.starts_with("https://") => {
            let tries = if attempts == 1 { "1 attempt".to_string() } else { format!("{attempts} attempts") };
            Ok(Err(ItemError::new("read", "download", format!("GET {named} failed ({tries}): {message}"))))
        }
        _ => Err(PipelineError::store(uri, message)),
    }
}

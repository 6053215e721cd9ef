//! The web fetcher: image URLs (`http`, `https`) of manifests and Parquet URL columns, fetched apart from object
//! storage. The web is not a bucket: a host may hang, throttle, cut a body, serve a page instead of an image or
//! ask not to be used for AI training, and one such host must cost its own items and nothing else. So:
//!
//! - one shared client per process (connections kept alive and reused, DNS answers cached for a minute), with a
//!   process-wide cap on requests in flight, a per-host cap and an optional per-host rate;
//! - a time limit for connecting and one for the whole answer (`timeout_s`), and a few retries (`retries`) for
//!   what is transient only: a reset or refused connection, a body cut short, 429/503 (waiting as `Retry-After`
//!   says, up to `retry_after_max_s`) and other 5xx. A 404, a page or an opt-out is final; so is a timeout unless
//!   `retry_timeouts` is set: a host that did not answer within `timeout_s` seldom answers a moment later, and each
//!   retry would hold the item's whole unit another `timeout_s` (`run --retry-errors timeout` fetches them again
//!   once the run is done);
//! - bytes in flight bounded (`max_bytes_in_flight`): a body reserves its declared length (else the size limit)
//!   before it is read, so memory stays flat however many requests are open;
//! - redirects followed, at most [`MAX_REDIRECTS`], and only to `http`/`https`;
//! - `X-Robots-Tag` opt-outs (`noai`, `noimageai`, `noindex`, `noimageindex` by default) respected, read as
//!   img2dataset reads them: comma-separated directives, optionally after a user-agent name and a colon;
//! - every failure an [`ItemError`] whose kind says what a rerun may fix: `http_<status>`, `timeout`, `connect`,
//!   `dns`, `redirect`, `download` (a body cut short), `too_large`, `not_an_image`, `opted_out`, naming the URL
//!   with its credentials redacted. The URL is fetched as given, query string included (signed URLs need it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use url::Url;

use crate::PipelineError;
use crate::item::ItemError;
use crate::store::{redact, redact_secrets};

/// Redirects followed before a URL is given up (`redirect`).
pub const MAX_REDIRECTS: usize = 5;

/// The `X-Robots-Tag` directives that opt an image out, by default.
pub const DEFAULT_OPT_OUT: [&str; 4] = ["noai", "noimageai", "noindex", "noimageindex"];

/// `[download]`: how image URLs are fetched from the web. None of it changes what a fetched image becomes;
/// `opt_out` decides which images are fetched at all, so it is part of a job's identity (see the spec hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloadOptions {
    /// Seconds to connect, and seconds for the whole answer (headers and body) of one attempt.
    pub timeout_s: f64,
    /// Retries of a transient failure (reset, body cut short, 429, 5xx; a timeout with `retry_timeouts`).
    pub retries: usize,
    /// Whether a timeout is retried at once, as a reset is. Off: it is final (kind `timeout`), for
    /// `run --retry-errors timeout` to fetch again after the run.
    pub retry_timeouts: bool,
    /// Requests in flight in this process.
    pub concurrency: usize,
    /// Requests in flight to one host (name and port).
    pub per_host: usize,
    /// Requests started per second to one host; unset: no limit.
    pub per_host_rate: Option<f64>,
    /// Bytes of image bodies being received, and of fetched images waiting for their turn, at once.
    pub max_bytes_in_flight: u64,
    /// Work units whose images are fetched at once (manifests, Parquet, COCO and loose files; a tar is read one
    /// unit at a time): a unit's slowest URL then holds up its own unit only, while the next ones are fetched.
    pub units_ahead: usize,
    /// The longest `Retry-After` waited for; a longer one makes the item's error final.
    pub retry_after_max_s: f64,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// `X-Robots-Tag` directives that make an image an `opted_out` error row (compared without case); empty
    /// turns opt-outs off.
    pub opt_out: Vec<String>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            timeout_s: 10.0,
            retries: 2,
            retry_timeouts: false,
            concurrency: 256,
            per_host: 16,
            per_host_rate: None,
            max_bytes_in_flight: 512 << 20,
            units_ahead: 8,
            retry_after_max_s: 60.0,
            user_agent: default_user_agent(),
            opt_out: DEFAULT_OPT_OUT.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// `lyrics-prep/<version>`.
pub fn default_user_agent() -> String {
    format!("lyrics-prep/{}", env!("CARGO_PKG_VERSION"))
}

/// Whether `reference` is a URL the web fetcher fetches (`http`, `https`).
pub fn is_web_url(reference: &str) -> bool {
    let lower = reference.trim_start().get(..8).unwrap_or(reference).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// An image the web served.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// Where the image came from after redirects (credentials still in it: scrub before storing).
    pub final_url: String,
    pub status: u16,
    pub content_type: Option<String>,
}

/// The process's web client and its limits. Cheap to share; one per [`crate::StoreRegistry`].
#[derive(Debug)]
pub struct WebFetcher {
    client: reqwest::Client,
    options: DownloadOptions,
    /// Requests in flight in the process.
    requests: Arc<Semaphore>,
    /// Bytes being received, in KiB.
    bytes: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Host>>,
    /// The first word of the user agent (`lyrics-prep`), which an `X-Robots-Tag` may name.
    agent_token: String,
}

#[derive(Debug, Clone)]
struct Host {
    slots: Arc<Semaphore>,
    /// When the next request to the host may start (with `per_host_rate`).
    next_start: Arc<Mutex<Instant>>,
}

/// Why one attempt failed, and whether (after how long) it may be tried again.
struct Failure {
    kind: &'static str,
    message: String,
    retry_after: Option<Duration>,
    transient: bool,
}

impl Failure {
    fn last(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into(), retry_after: None, transient: false }
    }

    fn transient(kind: &'static str, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into(), retry_after: None, transient: true }
    }
}

/// The first wait between two attempts at one URL (doubling).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

impl WebFetcher {
    pub fn new(options: DownloadOptions) -> Result<WebFetcher, PipelineError> {
        let timeout = Duration::from_secs_f64(options.timeout_s.max(0.001));
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let scheme = attempt.url().scheme().to_string();
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if scheme != "http" && scheme != "https" {
                attempt.error(format!("a redirect to a {scheme}: URL is refused"))
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .user_agent(options.user_agent.clone())
            .connect_timeout(timeout)
            .redirect(policy)
            .pool_max_idle_per_host(options.per_host.max(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(CachedDns::default()))
            .build()
            .map_err(|e| PipelineError::Config(format!("cannot start the web client: {e}")))?;
        let kib = (options.max_bytes_in_flight.div_ceil(1024)).clamp(1, Semaphore::MAX_PERMITS as u64 / 2);
        let agent_token =
            options.user_agent.split(['/', ' ']).next().unwrap_or_default().trim().to_ascii_lowercase();
        Ok(WebFetcher {
            client,
            requests: Arc::new(Semaphore::new(options.concurrency.max(1))),
            bytes: Arc::new(Semaphore::new(kib as usize)),
            hosts: Mutex::new(HashMap::new()),
            agent_token,
            options,
        })
    }

    pub fn options(&self) -> &DownloadOptions {
        &self.options
    }

    /// The image at `url`, of at most `limit` bytes, fetched with up to `retries` retries of transient failures.
    pub async fn get(&self, url: &str, limit: u64) -> Result<Fetched, ItemError> {
        let named = redact(url);
        let parsed = Url::parse(url.trim())
            .map_err(|e| ItemError::new("read", "bad_reference", format!("invalid URL {named}: {e}")))?;
        let host = self.host(&parsed);
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.attempt(&parsed, &host, limit).await {
                Ok(fetched) => return Ok(fetched),
                Err(failure) => failure,
            };
            let cap = Duration::from_secs_f64(self.options.retry_after_max_s.max(0.0));
            let wait = match failure.retry_after {
                Some(wait) if wait > cap => None,
                Some(wait) => Some(wait),
                None => Some(backoff),
            };
            match wait {
                Some(wait) if self.retried(&failure) && attempt <= self.options.retries => {
                    tracing::info!(uri = %named, attempt, kind = failure.kind, error = %failure.message, "retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(8));
                }
                _ => {
                    let tries = if attempt == 1 { "1 attempt".to_string() } else { format!("{attempt} attempts") };
                    let too_long = match (failure.retry_after, failure.transient) {
                        (Some(wait), true) if wait > cap => {
                            format!("; Retry-After {} s is longer than retry_after_max_s", wait.as_secs())
                        }
                        _ => String::new(),
                    };
                    return Err(ItemError::new(
                        "read",
                        failure.kind,
                        format!("GET {named} failed ({tries}): {}{too_long}", failure.message),
                    ));
                }
            }
        }
    }

    /// Whether `failure` is worth another attempt.
    fn retried(&self, failure: &Failure) -> bool {
        failure.transient && (failure.kind != "timeout" || self.options.retry_timeouts)
    }

    fn host(&self, url: &Url) -> Host {
        let key = format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0));
        let mut hosts = self.hosts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        hosts
            .entry(key)
            .or_insert_with(|| Host {
                slots: Arc::new(Semaphore::new(self.options.per_host.max(1))),
                next_start: Arc::new(Mutex::new(Instant::now())),
            })
            .clone()
    }

    async fn attempt(&self, url: &Url, host: &Host, limit: u64) -> Result<Fetched, Failure> {
        let closed = || Failure::last("download", "the web client was shut down");
        let _request = self.requests.clone().acquire_owned().await.map_err(|_| closed())?;
        let _slot = host.slots.clone().acquire_owned().await.map_err(|_| closed())?;
        if let Some(rate) = self.options.per_host_rate.filter(|r| *r > 0.0) {
            let start = {
                let mut next = host.next_start.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let start = (*next).max(Instant::now());
                *next = start + Duration::from_secs_f64(1.0 / rate);
                start
            };
            tokio::time::sleep_until(start.into()).await;
        }
        let timeout = Duration::from_secs_f64(self.options.timeout_s.max(0.001));
        let started = Instant::now();
        let timed_out =
            || Failure::transient("timeout", format!("no whole answer within {} s", self.options.timeout_s));
        let response = match tokio::time::timeout(timeout, self.client.get(url.clone()).send()).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            return Err(status_failure(status, response.headers()));
        }
        let headers = response.headers();
        if let Some(directive) = self.opted_out(headers) {
            return Err(Failure::last("opted_out", format!("X-Robots-Tag: {directive}")));
        }
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(kind) = content_type.as_deref().filter(|t| not_image_type(t)) {
            return Err(Failure::last("not_an_image", format!("served {kind}, not an image")));
        }
        if let Some(length) = response.content_length().filter(|l| *l > limit) {
            return Err(Failure::last("too_large", format!("{length} bytes exceeds the limit of {limit} bytes")));
        }
        let final_url = response.url().to_string();
        // The reservation for the body comes before it is read, and its wait is not the server's time.
        let reserve = response.content_length().unwrap_or(limit).min(limit).min(self.options.max_bytes_in_flight);
        let kib = reserve.div_ceil(1024).clamp(1, Semaphore::MAX_PERMITS as u64 / 2) as u32;
        let spent = started.elapsed();
        let _bytes = self.bytes.clone().acquire_many_owned(kib).await.map_err(|_| closed())?;
        let left = timeout.saturating_sub(spent);
        let bytes = match tokio::time::timeout(left, read_body(response, limit)).await {
            Err(_) => return Err(timed_out()),
            Ok(result) => result?,
        };
        if !looks_like_an_image(&bytes) {
            return Err(Failure::last("not_an_image", "the bytes are no image format's"));
        }
        Ok(Fetched { bytes, final_url, status: status.as_u16(), content_type })
    }

    /// The opt-out directive among the answer's `X-Robots-Tag` headers that applies to this client, if any.
    fn opted_out(&self, headers: &HeaderMap) -> Option<String> {
        if self.options.opt_out.is_empty() {
            return None;
        }
        for value in headers.get_all("x-robots-tag") {
            let Ok(value) = value.to_str() else { continue };
            let (agent, directives) = match value.split_once(':') {
                Some((agent, directives)) => (Some(agent.trim().to_ascii_lowercase()), directives),
                None => (None, value),
            };
            if agent.is_some_and(|a| a != self.agent_token) {
                continue;
            }
            for directive in directives.split(',').map(|d| d.trim().to_ascii_lowercase()) {
                if self.options.opt_out.iter().any(|o| o.eq_ignore_ascii_case(&directive)) {
                    return Some(directive);
                }
            }
        }
        None
    }
}

async fn read_body(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::with_capacity(response.content_length().unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(Failure::last("too_large", format!("the body exceeds the limit of {limit} bytes")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `http_<status>`, as a kind (kinds are static names).
pub fn http_kind(status: u16) -> &'static str {
    static KINDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    let kinds =
        KINDS.get_or_init(|| (0..1000u16).map(|s| &*Box::leak(format!("http_{s}").into_boxed_str())).collect());
    kinds.get(status as usize).copied().unwrap_or("http_error")
}

fn status_failure(status: StatusCode, headers: &HeaderMap) -> Failure {
    let message = format!("HTTP {status}");
    let kind = http_kind(status.as_u16());
    if status.is_redirection() {
        // A redirect the client did not follow: to another scheme than http/https (reqwest hands those back).
        let to = headers.get(LOCATION).and_then(|v| v.to_str().ok()).map(redact).unwrap_or_default();
        return Failure::last("redirect", format!("{message}: a redirect to {to} is not followed"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Failure { kind, message, retry_after, transient: true };
    }
    Failure::last(kind, message)
}

/// The kind of a failed request: a refused redirect and an unknown host are final, the rest transient.
fn classify(e: &reqwest::Error) -> Failure {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    let message = redact_secrets(&chain);
    if e.is_timeout() {
        Failure::transient("timeout", message)
    } else if e.is_redirect() {
        Failure::last("redirect", message)
    } else if e.is_connect() && (chain.contains("dns error") || chain.contains(DNS_FAILED)) {
        Failure::last("dns", message)
    } else if e.is_connect() {
        Failure::transient("connect", message)
    } else {
        Failure::transient("download", message)
    }
}

/// Content types that are never an image (a page, a script, data).
fn not_image_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some((top, sub)) = essence.split_once('/') else { return false };
    top == "text"
        || (top == "application"
            && matches!(sub, "json" | "xml" | "xhtml+xml" | "javascript" | "x-javascript" | "pdf" | "zip"))
}

/// Whether `bytes` start as an image format does (those the decoder reads, and the other common ones, which it
/// refuses by name): what is none of them (an error page served as `image/jpeg`, an empty body) is no image.
pub fn looks_like_an_image(bytes: &[u8]) -> bool {
    const MAGIC: [&[u8]; 12] = [
        b"\xFF\xD8\xFF",             // JPEG
        b"\x89PNG\r\n\x1a\n",        // PNG
        b"GIF87a",                   // GIF
        b"GIF89a",                   // GIF
        b"BM",                       // BMP
        b"II*\0",                    // TIFF
        b"MM\0*",                    // TIFF
        b"\0\0\x01\0",               // ICO
        b"\xFF\x0A",                 // JPEG XL
        b"\0\0\0\x0CJXL \r\n\x87\n", // JPEG XL (container)
        b"qoif",                     // QOI
        b"\0\0\0\x0CjP  \r\n\x87\n", // JPEG 2000
    ];
    if MAGIC.iter().any(|m| bytes.starts_with(m)) {
        return true;
    }
    // WebP; AVIF and HEIF (an ISO box `ftyp`).
    (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP")
        || (bytes.len() >= 12 && &bytes[4..8] == b"ftyp")
}

const DNS_FAILED: &str = "no address for host";

/// A resolver that keeps each answer for a minute, so thousands of URLs on one host cost one lookup.
#[derive(Debug, Default)]
struct CachedDns {
    answers: Arc<DnsAnswers>,
}

const DNS_TTL: Duration = Duration::from_secs(60);

impl reqwest::dns::Resolve for CachedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let answers = self.answers.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = lookup(&answers, host).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

type DnsAnswers = Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>;

async fn lookup(
    answers: &DnsAnswers,
    host: String,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let cached = {
        let answers = answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        answers.get(&host).filter(|(at, _)| at.elapsed() < DNS_TTL).map(|(_, addrs)| addrs.clone())
    };
    if let Some(addrs) = cached {
        return Ok(addrs);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
    if addrs.is_empty() {
        return Err(format!("dns error: {DNS_FAILED} {host}").into());
    }
    let mut answers = answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    answers.insert(host, (Instant::now(), addrs.clone()));
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-robots-tag", v.parse().unwrap());
        }
        map
    }

    #[test]
    fn opt_outs_are_read_as_img2dataset_reads_them() {
        let fetcher = WebFetcher::new(DownloadOptions::default()).unwrap();
        let cases: [(&[&str], Option<&str>); 8] = [
            (&["noai"], Some("noai")),
            (&["noindex, nofollow"], Some("noindex")),
            (&["NoImageAI"], Some("noimageai")),
            (&["all", "noimageindex"], Some("noimageindex")),
            (&["otherbot: noai"], None),
            (&["lyrics-prep: noai"], Some("noai")),
            (&["nofollow, noarchive"], None),
            (&[], None),
        ];
        for (values, expected) in cases {
            assert_eq!(fetcher.opted_out(&headers(values)).as_deref(), expected, "{values:?}");
        }
        let off = WebFetcher::new(DownloadOptions { opt_out: vec![], ..Default::default() }).unwrap();
        assert_eq!(off.opted_out(&headers(&["noai"])), None);
    }

    #[test]
    fn pages_and_non_images_are_told_apart_from_images() {
        for t in ["text/html; charset=utf-8", "application/json", "TEXT/PLAIN"] {
            assert!(not_image_type(t), "{t}");
        }
        for t in ["image/jpeg", "application/octet-stream", "binary/octet-stream", "image/svg+xml"] {
            assert!(!not_image_type(t), "{t}");
        }
        assert!(looks_like_an_image(b"\xFF\xD8\xFF\xE0rest"));
        assert!(looks_like_an_image(b"RIFF\0\0\0\0WEBPVP8 "));
        assert!(looks_like_an_image(b"\0\0\0\x1cftypavif"));
        assert!(!looks_like_an_image(b"<!doctype html><html>"));
        assert!(!looks_like_an_image(b""));
    }

    #[test]
    fn status_kinds_are_named_by_code() {
        assert_eq!(http_kind(404), "http_404");
        assert_eq!(http_kind(503), "http_503");
        assert!(is_web_url("HTTPS://h/x.jpg") && is_web_url("http://h") && !is_web_url("s3://b/x"));
        assert!(!is_web_url("file:///x") && !is_web_url("images/a.jpg"));
    }
}

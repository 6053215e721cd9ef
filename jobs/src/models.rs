//! Model files: resolving the sources a models file names into local files, through a cache, with SHA-256 checks
//! and a progress bar; and the `models pull|list|verify` subcommands.
//!
//! A source is a path (relative to the models file), an object-store URI (`s3://`, `gs://`, `az://`, `http(s)://`,
//! `file://`), or the Hugging Face hub as `hf://org/repo/path/in/repo@revision` (revision `main` when absent).
//! Hub files go through the `hf-hub` crate into the Hugging Face cache that Python's `huggingface_hub` shares
//! (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`: `models--org--repo/{refs,blobs,snapshots}`),
//! so a model Python already downloaded is not fetched again; `HF_ENDPOINT` and `HF_TOKEN` (sent as a bearer
//! header, never printed) are honoured. Other remote files are cached under `<cache>/<digest of the source>/<name>`
//! with a `<name>.sha256` beside. A file with an expected `sha256` that differs is refused and not kept.
//!
//! Many workers may share one cache: every file is written to a temporary file of its own in the target's folder
//! and renamed into place when whole, so no worker ever writes into a file another one writes or reads. Hashing and
//! file I/O run on tokio's blocking threads, off the async workers that drive the downloads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lyrics_operators::models::{FileRef, ModelPaths, ModelsConfig};
use lyrics_pipeline::{StorageOptions, StoreRegistry, redact};
use object_store::ObjectStoreExt;

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Runs blocking work (file I/O, hashing gigabytes) on tokio's blocking threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.context("a file task of the model cache crashed")?
}

/// Writes `data` to `path` through a temporary file of its own in the same folder, renamed over `path` when whole:
/// a concurrent reader sees the old file or the new one, never a part, and two writers never share a file.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("a cache file without a folder")?;
    let mut file = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    file.write_all(data).with_context(|| format!("cannot write {}", file.path().display()))?;
    file.persist(path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Where downloaded model files are kept: `--cache`, else `LYRICS_CACHE`, else `$XDG_CACHE_HOME/lyrics-prep/models`,
/// else `~/.cache/lyrics-prep/models`.
pub fn cache_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("LYRICS_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("lyrics-prep").join("models")
}

/// A models file, read and parsed, with the location its relative sources resolve against.
pub struct ModelsFile {
    pub config: ModelsConfig,
    /// Folder of the models file: a local directory, or a URI prefix.
    base: String,
}

/// Reads a models file from a path or URI.
pub async fn read_models_file(uri: &str, registry: &StoreRegistry) -> Result<ModelsFile> {
    let text = if is_remote(uri) {
        let location = registry.locate(uri)?;
        let bytes = location
            .store
            .get(&location.path)
            .await
            .with_context(|| format!("cannot read the models file {}", redact(uri)))?
            .bytes()
            .await
            .with_context(|| format!("cannot read the models file {}", redact(uri)))?;
        String::from_utf8(bytes.to_vec())
            .with_context(|| format!("the models file {} is not UTF-8", redact(uri)))?
    } else {
        tokio::fs::read_to_string(uri).await.with_context(|| format!("cannot read the models file {uri}"))?
    };
    let config = ModelsConfig::parse(&text).with_context(|| format!("invalid models file {}", redact(uri)))?;
    let base = match uri.rsplit_once('/') {
        Some((dir, _)) => dir.to_string(),
        None => ".".to_string(),
    };
    Ok(ModelsFile { config, base })
}

fn is_remote(source: &str) -> bool {
    source.contains("://") && !source.starts_with("file://")
}

/// Where a source lives: a local file, something to download (with its URL for messages), or a hub file.
enum Resolved {
    Local(PathBuf),
    Remote { url: String, name: String },
    Hub(HubFile),
}

/// A file of a Hugging Face hub model repository at a revision.
struct HubFile {
    repo: String,
    revision: String,
    file: String,
}

impl HubFile {
    fn repo(&self) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(self.repo.clone(), hf_hub::RepoType::Model, self.revision.clone())
    }

    /// The file in the Hugging Face cache, when an earlier download (ours or Python's) put it there.
    fn cached(&self) -> Option<PathBuf> {
        hf_hub::Cache::new(hf_cache_dir()).repo(self.repo()).get(&self.file)
    }

    fn describe(&self) -> String {
        format!("hf://{}/{}@{}", self.repo, self.file, self.revision)
    }
}

/// The Hugging Face hub cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub` (as Python's
/// `huggingface_hub` finds it).
pub fn hf_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// Downloads a hub file into the Hugging Face cache (or finds it there) through `hf-hub`: the hub's redirects,
/// resumable chunked downloads, and the cache layout Python shares.
async fn hub_get(file: &HubFile, show: bool) -> Result<PathBuf> {
    let mut builder =
        hf_hub::api::tokio::ApiBuilder::from_cache(hf_hub::Cache::new(hf_cache_dir())).with_progress(show);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT")
        && !endpoint.is_empty()
    {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if let Ok(token) = std::env::var("HF_TOKEN")
        && !token.is_empty()
    {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().context("cannot start the Hugging Face hub client")?;
    // The library's errors carry URLs, not the token; they are redacted all the same.
    api.repo(file.repo()).get(&file.file).await.map_err(|e| anyhow::anyhow!("{}", redact(&e.to_string())))
}

fn resolve(models: &ModelsFile, source: &str) -> Result<Resolved> {
    if let Some(rest) = source.strip_prefix("hf://") {
        let (path, revision) = rest.rsplit_once('@').unwrap_or((rest, "main"));
        let mut parts = path.splitn(3, '/');
        let (Some(org), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("hub source {source}: expected hf://org/repo/path/in/repo@revision");
        };
        return Ok(Resolved::Hub(HubFile {
            repo: format!("{org}/{repo}"),
            revision: revision.to_string(),
            file: file.to_string(),
        }));
    }
    if let Some(path) = source.strip_prefix("file://") {
        return Ok(Resolved::Local(PathBuf::from(path)));
    }
    if is_remote(source) {
        let name = source.rsplit('/').next().unwrap_or(source).split('?').next().unwrap_or_default().to_string();
        return Ok(Resolved::Remote { url: source.to_string(), name });
    }
    if Path::new(source).is_absolute() {
        return Ok(Resolved::Local(PathBuf::from(source)));
    }
    // Relative to the models file: a local folder, or a remote prefix.
    let joined = format!("{}/{source}", models.base);
    if is_remote(&joined) {
        let name = source.rsplit('/').next().unwrap_or(source).to_string();
        Ok(Resolved::Remote { url: joined, name })
    } else {
        Ok(Resolved::Local(PathBuf::from(joined.strip_prefix("file://").unwrap_or(&joined))))
    }
}

fn cache_path(cache: &Path, url: &str, name: &str) -> PathBuf {
    let digest = sha256_hex(url.as_bytes());
    cache.join(&digest[..16]).join(if name.is_empty() { "file" } else { name })
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
    }
    Ok(hex::encode(context.finish()))
}

/// [`sha256_file`], remembered in the cache by path, size and modification time: model files run to gigabytes, and
/// every run checksums them into its spec hash.
fn sha256_remembered(path: &Path, cache: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let modified =
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let id = sha256_hex(absolute.to_string_lossy().as_bytes());
    let record = cache.join("checksums").join(format!("{}.json", &id[..24]));
    let stamp = format!("{} {modified}", meta.len());
    if let Ok(text) = std::fs::read_to_string(&record)
        && let Some((recorded, sha)) = text.trim().rsplit_once(' ')
        && recorded == stamp
    {
        return Ok(sha.to_string());
    }
    let sha = sha256_file(path)?;
    // Only remembered: a record that cannot be written costs a rehash next time, nothing else.
    if std::fs::create_dir_all(cache.join("checksums")).is_ok() {
        let _ = write_atomic(&record, format!("{stamp} {sha}\n").as_bytes());
    }
    Ok(sha)
}

/// `<name>.sha256` beside a cached file.
fn sidecar_of(path: &Path) -> PathBuf {
    path.with_extension(format!(
        "{}.sha256",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ))
}

fn check(key: &str, file: &FileRef, actual: &str) -> Result<()> {
    match file.sha256() {
        Some(expected) if !expected.eq_ignore_ascii_case(actual) => {
            bail!("{key} ({}): SHA-256 {actual} does not match the expected {expected}", redact(file.source()))
        }
        _ => Ok(()),
    }
}

/// Downloads `url` to `target` with a progress bar on a terminal, through a temporary file of its own in the
/// target's folder (written on a blocking thread) that is renamed over `target` when whole.
async fn download(url: &str, target: &Path, registry: &StoreRegistry, show: bool) -> Result<()> {
    let dir = target.parent().context("cache path without a folder")?.to_path_buf();
    let bar = show.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        bar
    });
    let result: Result<()> = async {
        let location = registry.locate(url)?;
        let get =
            location.store.get(&location.path).await.with_context(|| format!("cannot fetch {}", redact(url)))?;
        if let Some(bar) = &bar {
            bar.set_length(get.meta.size);
        }
        let (chunks, mut received) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let writer = tokio::task::spawn_blocking(move || -> Result<tempfile::NamedTempFile> {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let mut file = tempfile::Builder::new()
                .prefix(".partial-")
                .tempfile_in(&dir)
                .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
            while let Some(chunk) = received.blocking_recv() {
                file.write_all(&chunk).with_context(|| format!("cannot write {}", file.path().display()))?;
            }
            file.as_file().sync_all().ok();
            Ok(file)
        });
        let mut stream = get.into_stream();
        let mut broken = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    broken = Some(anyhow::Error::new(e).context(format!("download of {} broke off", redact(url))));
                    break;
                }
            };
            let len = chunk.len() as u64;
            // A closed channel means the writer failed; its error is the one to report.
            if chunks.send(chunk).await.is_err() {
                break;
            }
            if let Some(bar) = &bar {
                bar.inc(len);
            }
        }
        drop(chunks);
        let file = writer.await.context("the download's writer crashed")??;
        if let Some(e) = broken {
            // Dropping the temporary file removes it.
            return Err(e);
        }
        let target = target.to_path_buf();
        blocking(move || {
            file.persist(&target)
                .map_err(|e| e.error)
                .with_context(|| format!("cannot move the download to {}", target.display()))?;
            Ok(())
        })
        .await
    }
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// Makes every file of `models` local (downloading what the cache lacks) and checks the SHA-256s given.
pub async fn pull(
    models: &ModelsFile,
    cache: &Path,
    registry: &StoreRegistry,
    show_progress: bool,
) -> Result<ModelPaths> {
    let mut paths = ModelPaths::default();
    for (key, file) in models.config.files() {
        let local = match resolve(models, file.source())? {
            Resolved::Local(path) => {
                if !path.exists() {
                    bail!("{key}: {} does not exist", path.display());
                }
                path
            }
            Resolved::Remote { url, name } => {
                let target = cache_path(cache, &url, &name);
                if !target.exists() {
                    tracing::info!(file = %key, source = %redact(&url), "downloading");
                    download(&url, &target, registry, show_progress)
                        .await
                        .with_context(|| format!("{key}: cannot download {}", redact(&url)))?;
                }
                target
            }
            Resolved::Hub(hub) => match hub.cached() {
                Some(path) => path,
                None => {
                    tracing::info!(file = %key, source = %hub.describe(), "downloading");
                    hub_get(&hub, show_progress)
                        .await
                        .with_context(|| format!("{key}: cannot download {}", hub.describe()))?
                }
            },
        };
        let in_cache = local.starts_with(cache);
        let in_hub_cache = local.starts_with(hf_cache_dir());
        let sha = {
            let (local, cache) = (local.clone(), cache.to_path_buf());
            blocking(move || sha256_remembered(&local, &cache)).await?
        };
        if let Err(e) = check(&key, &file, &sha) {
            if in_cache {
                let _ = tokio::fs::remove_file(&local).await;
            }
            if in_hub_cache {
                // The snapshot entry goes; the blob stays for Python's cache tools to judge.
                let _ = tokio::fs::remove_file(&local).await;
            }
            return Err(e);
        }
        if in_cache {
            let (sidecar, sha) = (sidecar_of(&local), sha.clone());
            // Only a record for `models verify`; the pull itself has succeeded either way.
            let _ = blocking(move || write_atomic(&sidecar, sha.as_bytes())).await;
        }
        paths.paths.insert(key.clone(), local);
        paths.sha256.insert(key, sha);
    }
    Ok(paths)
}

/// `lyrics-prep models pull|list|verify`.
pub fn command(action: &crate::ModelsAction, models_uri: Option<&str>, cache: Option<&Path>) -> Result<ExitCode> {
    crate::logging::init("info");
    let Some(models_uri) = models_uri else {
        bail!(
            "no models file: pass --models FILE (a path or URI), e.g. --models examples/models/public.toml for the \
             public models, or the file given to run --models"
        );
    };
    let registry = StoreRegistry::new(StorageOptions::default());
    let cache = cache_dir(cache);
    let runtime = crate::commands::runtime()?;
    runtime.block_on(async {
        let models = read_models_file(models_uri, &registry).await?;
        match action {
            crate::ModelsAction::Pull => {
                let paths =
                    pull(&models, &cache, &registry, std::io::IsTerminal::is_terminal(&std::io::stderr())).await?;
                for (key, path) in &paths.paths {
                    writeln!(crate::stdout::lock(), "{key:<20} {}  {}", paths.sha256[key], path.display())?;
                }
                Ok(ExitCode::SUCCESS)
            }
            crate::ModelsAction::List => {
                for (key, file) in models.config.files() {
                    let (state, where_) = match resolve(&models, file.source())? {
                        Resolved::Local(path) => {
                            (if path.exists() { "local" } else { "missing" }, path.display().to_string())
                        }
                        Resolved::Remote { url, name } => {
                            let target = cache_path(&cache, &url, &name);
                            (if target.exists() { "cached" } else { "not cached" }, target.display().to_string())
                        }
                        Resolved::Hub(hub) => match hub.cached() {
                            Some(path) => ("cached", path.display().to_string()),
                            None => ("not cached", hf_cache_dir().display().to_string()),
                        },
                    };
                    writeln!(
                        crate::stdout::lock(),
                        "{key:<20} {state:<10} {:<48} {where_}",
                        redact(file.source())
                    )?;
                }
                Ok(ExitCode::SUCCESS)
            }
            crate::ModelsAction::Verify => {
                let mut bad = 0;
                for (key, file) in models.config.files() {
                    let (path, hub_blob) = match resolve(&models, file.source())? {
                        Resolved::Local(path) => (path, None),
                        Resolved::Remote { url, name } => (cache_path(&cache, &url, &name), None),
                        Resolved::Hub(hub) => match hub.cached() {
                            // The hub names an LFS blob by its SHA-256.
                            Some(path) => {
                                let blob = std::fs::canonicalize(&path)
                                    .ok()
                                    .and_then(|b| b.file_name().map(|n| n.to_string_lossy().into_owned()));
                                (path, blob.filter(|n| n.len() == 64 && n.bytes().all(|c| c.is_ascii_hexdigit())))
                            }
                            None => (hf_cache_dir().join(hub.describe()), None),
                        },
                    };
                    if !path.exists() {
                        writeln!(crate::stdout::lock(), "{key:<20} MISSING  {}", path.display())?;
                        bad += 1;
                        continue;
                    }
                    let sha = {
                        let path = path.clone();
                        blocking(move || sha256_file(&path)).await?
                    };
                    let recorded = tokio::fs::read_to_string(sidecar_of(&path)).await.ok();
                    let expected = file.sha256().map(str::to_string).or(recorded).or(hub_blob);
                    match expected {
                        Some(e) if !e.trim().eq_ignore_ascii_case(&sha) => {
                            writeln!(crate::stdout::lock(), "{key:<20} CORRUPT  {sha} (expected {})", e.trim())?;
                            bad += 1;
                        }
                        Some(_) => writeln!(crate::stdout::lock(), "{key:<20} ok       {sha}")?,
                        None => writeln!(crate::stdout::lock(), "{key:<20} unchecked {sha} (no expected SHA-256)")?,
                    }
                }
                Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn source_file(dir: &Path) -> (PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let path = dir.join("model.onnx");
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    fn url_of(path: &Path) -> String {
        format!("file://{}", path.display())
    }

    #[test]
    fn cache_paths_keep_their_digest() {
        // The first 16 hex digits of SHA-256 of the URL (from Python's hashlib): files cached by earlier versions
        // stay where they are found.
        let path = cache_path(Path::new("/c"), "https://example.com/models/m.onnx", "m.onnx");
        assert_eq!(path, Path::new("/c/2206209c78f8bbc0/m.onnx"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_download_never_writes_into_another_writers_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let (source, data) = source_file(dir.path());
        let url = url_of(&source);
        let target = cache_path(&dir.path().join("cache"), &url, "model.onnx");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        // What another worker has written so far, under the name a shared partial file would have.
        let theirs = target.with_extension("partial");
        std::fs::write(&theirs, b"another worker's first bytes").unwrap();
        let registry = StoreRegistry::new(StorageOptions::default());
        download(&url, &target, &registry, false).await.unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), data);
        assert_eq!(std::fs::read(&theirs).unwrap(), b"another worker's first bytes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_downloads_into_one_cache_all_succeed_with_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let (source, data) = source_file(dir.path());
        let url = url_of(&source);
        let target = cache_path(&dir.path().join("cache"), &url, "model.onnx");
        let registry = Arc::new(StoreRegistry::new(StorageOptions::default()));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (url, target, registry) = (url.clone(), target.clone(), registry.clone());
                tokio::spawn(async move { download(&url, &target, &registry, false).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(std::fs::read(&target).unwrap(), data);
        // No temporary file is left behind.
        let names: Vec<_> =
            std::fs::read_dir(target.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("model.onnx")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_checksum_records_are_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (source, data) = source_file(dir.path());
        let cache = dir.path().join("cache");
        let expected = sha256_hex(&data);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (source, cache) = (source.clone(), cache.clone());
                tokio::spawn(blocking(move || sha256_remembered(&source, &cache)))
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), expected);
        }
        assert_eq!(sha256_remembered(&source, &cache).unwrap(), expected);
    }
}

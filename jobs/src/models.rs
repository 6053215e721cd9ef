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

    /// Committed models files with a segmenter whose files are in the repository, with their `refiner` column and
    /// the spec hash of the default job over them. Recorded before the segmenter families moved into a module each
    /// behind the segmenter role's trait; they must not change: a resume compares the output's spec hash with the
    /// job's, and refuses the output when they differ.
    const GOLDEN_LOCAL: &[(&str, &str, &str)] = &[
        (
            "fixtures.toml",
            r#"{"detector":{"box_threshold":0.25,"export":"idea","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"616842161dd8a143d0daaff277ec579e3be8acbfd4dfc4aaa0deaae1b2034d3d","source":"detector_idea.onnx"},"text_threshold":0.2,"tokenizer":{"sha256":"9f9d0a7085b3c09a9590cb7f71334686d7864421965eed480d55034bbe160da6","source":"tokenizer.json"}},"segmenter":{"decoder":{"sha256":"d1819d465b9a9099f2a646419e9e1ab62ea1f90dd24a3985f3c2d7e3957a5872","source":"sam_decoder.onnx"},"encoder":{"sha256":"23f5e2b32dfb64cdf153297aed4d0b24941f29c7ac211437a1f56f91bcf9a046","source":"sam_encoder.onnx"},"family":"sam"},"tagger":{"family":"ram","model":{"sha256":"317bb2753c52cf6dd88fa49ec30285d8a764d4cbac80ed8643b1bd45b81528e1","source":"tagger.onnx"},"tags":{"sha256":"b0b2c6ad16373a342f0f1db7b045842bf2545645b6c42c18dfc228cd981041d7","source":"tags.txt"},"threshold":0.68}}"#,
            "f9fc049fbf3069fac26c5d369a1a88bdbf8d8f370b89b13d1b8412c45381ac76",
        ),
        (
            "fixtures_hf.toml",
            r#"{"detector":{"box_threshold":0.25,"export":"hf","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"edeb2417386b9d170608e9508830da7d09b8d80f8808594eca5e1d601b506f61","source":"detector_hf.onnx"},"text_threshold":0.2,"tokenizer":{"sha256":"9f9d0a7085b3c09a9590cb7f71334686d7864421965eed480d55034bbe160da6","source":"tokenizer.json"}},"segmenter":{"decoder":{"sha256":"d1819d465b9a9099f2a646419e9e1ab62ea1f90dd24a3985f3c2d7e3957a5872","source":"sam_decoder.onnx"},"encoder":{"sha256":"23f5e2b32dfb64cdf153297aed4d0b24941f29c7ac211437a1f56f91bcf9a046","source":"sam_encoder.onnx"},"family":"sam"},"tagger":{"family":"ram","model":{"sha256":"317bb2753c52cf6dd88fa49ec30285d8a764d4cbac80ed8643b1bd45b81528e1","source":"tagger.onnx"},"tags":{"sha256":"b0b2c6ad16373a342f0f1db7b045842bf2545645b6c42c18dfc228cd981041d7","source":"tags.txt"},"threshold":0.68}}"#,
            "c904b124ccbb74274677d7da3f91f560e38c62ad5cff6216cc5ebf9f0b27aa72",
        ),
        (
            "real-tiny/hf.toml",
            r#"{"detector":{"box_threshold":0.25,"export":"hf","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"675244c23fb620710c79ca534449eaad7dd41bddc80942c21ab177e64e592e00","source":"gdino_hf.onnx"},"text_threshold":0.2,"tokenizer":{"sha256":"19a57dcc34c9491ae5049f69d49db9081ecf2556f728b31f24aafadfdc2025de","source":"tokenizer.json"}},"segmenter":{"decoder":{"sha256":"e1126a5706f0f9aecf000b832bb6e13322a6a06676f9751d8e6d8bb5e9256d06","source":"sam_decoder.onnx"},"encoder":{"sha256":"75d8efb5f0acd8b9d67ec177e7442975712fb6bf176759ed0452d0ed9a1ada65","source":"sam_encoder.onnx"},"family":"sam"},"tagger":{"family":"ram","model":{"sha256":"719b85f430ba9e62006f243ce1a739520d574508c485c8389c1b1a7b86e268b3","source":"ram_logits.onnx"},"tags":{"sha256":"5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b","source":"ram_tag_list.txt"},"threshold":0.68,"thresholds":{"sha256":"b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447","source":"ram_tag_list_threshold.txt"}}}"#,
            "1690c5adbe6c8814c5db22f9c44d61143dd50c350c6b0b5fa3d71b1c56c273ed",
        ),
        (
            "real-tiny/hf_800.toml",
            r#"{"detector":{"box_threshold":0.25,"export":"hf","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"5ee2a690c3f3f82e278ca61772feabed82e70f13597ef1968ee266eb8ff5548b","source":"gdino_hf_traced_800.onnx"},"text_threshold":0.2,"tokenizer":{"sha256":"19a57dcc34c9491ae5049f69d49db9081ecf2556f728b31f24aafadfdc2025de","source":"tokenizer.json"}},"segmenter":{"decoder":{"sha256":"c29e817b7936a6456da8d12cc11c6e3bd2e4bd726935becc95b46d7ad0b50ffc","source":"hf_sam_prompt_encoder_mask_decoder.onnx"},"encoder":{"sha256":"0cde49f4e4d779aa1259e300098b600be7cbeb68c093647ddd4005e9a23227fe","source":"hf_sam_vision_encoder.onnx"},"family":"hf_sam"},"tagger":{"family":"ram","model":{"sha256":"719b85f430ba9e62006f243ce1a739520d574508c485c8389c1b1a7b86e268b3","source":"ram_logits.onnx"},"tags":{"sha256":"5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b","source":"ram_tag_list.txt"},"threshold":0.68,"thresholds":{"sha256":"b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447","source":"ram_tag_list_threshold.txt"}}}"#,
            "2aafa2ac38c9fedaa86a39ae1e28f3c8904c48941e67acb7cfb438078ec522b8",
        ),
        (
            "real-tiny/hf_sam.toml",
            r#"{"detector":{"box_threshold":0.25,"export":"hf","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"675244c23fb620710c79ca534449eaad7dd41bddc80942c21ab177e64e592e00","source":"gdino_hf.onnx"},"text_threshold":0.2,"tokenizer":{"sha256":"19a57dcc34c9491ae5049f69d49db9081ecf2556f728b31f24aafadfdc2025de","source":"tokenizer.json"}},"segmenter":{"decoder":{"sha256":"c29e817b7936a6456da8d12cc11c6e3bd2e4bd726935becc95b46d7ad0b50ffc","source":"hf_sam_prompt_encoder_mask_decoder.onnx"},"encoder":{"sha256":"0cde49f4e4d779aa1259e300098b600be7cbeb68c093647ddd4005e9a23227fe","source":"hf_sam_vision_encoder.onnx"},"family":"hf_sam"},"tagger":{"family":"ram","model":{"sha256":"719b85f430ba9e62006f243ce1a739520d574508c485c8389c1b1a7b86e268b3","source":"ram_logits.onnx"},"tags":{"sha256":"5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b","source":"ram_tag_list.txt"},"threshold":0.68,"thresholds":{"sha256":"b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447","source":"ram_tag_list_threshold.txt"}}}"#,
            "957af62c1a27c02da644ebadb074b17a99747a00f40a27f6b6adfff33ef0f10f",
        ),
        (
            "real-tiny/hf_sam_boxes.toml",
            r#"{"detector":{"box_threshold":0.25,"export":"hf","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"675244c23fb620710c79ca534449eaad7dd41bddc80942c21ab177e64e592e00","source":"gdino_hf.onnx"},"text_threshold":0.2,"tokenizer":{"sha256":"19a57dcc34c9491ae5049f69d49db9081ecf2556f728b31f24aafadfdc2025de","source":"tokenizer.json"}},"segmenter":{"decoder":{"sha256":"30b8d1dc74c43177333dbdfc4ef6ddf648ecab7a4e0fab03df11c44cb5c5aac6","source":"hf_sam_prompt_encoder_mask_decoder_boxes.onnx"},"encoder":{"sha256":"0cde49f4e4d779aa1259e300098b600be7cbeb68c093647ddd4005e9a23227fe","source":"hf_sam_vision_encoder.onnx"},"family":"hf_sam"},"tagger":{"family":"ram","model":{"sha256":"719b85f430ba9e62006f243ce1a739520d574508c485c8389c1b1a7b86e268b3","source":"ram_logits.onnx"},"tags":{"sha256":"5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b","source":"ram_tag_list.txt"},"threshold":0.68,"thresholds":{"sha256":"b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447","source":"ram_tag_list_threshold.txt"}}}"#,
            "0ea540fc13f9c1f4921269c5321e2b84420a0e573b8eeb338b98fff6d80077d0",
        ),
        (
            "real-tiny/idea.toml",
            r#"{"detector":{"box_threshold":0.25,"export":"idea","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"dd01185bb79958da682bf7d0e5cd1c792007692cb3488187916ceac426c3e8cc","source":"gdino_idea.onnx"},"text_threshold":0.2,"tokenizer":{"sha256":"19a57dcc34c9491ae5049f69d49db9081ecf2556f728b31f24aafadfdc2025de","source":"tokenizer.json"}},"segmenter":{"decoder":{"sha256":"c8f9cdd29ea73a27d9117af240fdf81d17f079612745b6fdb48ad39dd9a9883f","source":"sam_decoder_single.onnx"},"encoder":{"sha256":"ecb4e0030c1e03f53ad20ee5a7e509ff6d4469158678558900d344fd4ef7b6ba","source":"sam_encoder_preprocess.onnx"},"family":"sam"},"tagger":{"family":"ram","model":{"sha256":"e8a298ef58bcd08a713b504cf0a0a1284fba2841a7901f777e108fbe1e4197bc","source":"ram_targets.onnx"},"tags":{"sha256":"5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b","source":"ram_tag_list.txt"},"threshold":0.68}}"#,
            "5de8b6c18d35ff772641846e72c8f23141764756c80e7922453278ce2ad6757a",
        ),
        (
            "real-tiny/sam2.toml",
            r#"{"detector":{"box_threshold":0.25,"export":"hf","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"675244c23fb620710c79ca534449eaad7dd41bddc80942c21ab177e64e592e00","source":"gdino_hf.onnx"},"text_threshold":0.2,"tokenizer":{"sha256":"19a57dcc34c9491ae5049f69d49db9081ecf2556f728b31f24aafadfdc2025de","source":"tokenizer.json"}},"segmenter":{"decoder":{"sha256":"6e195693ae6de648cb4799a655b78b6e25a98e47818ed068e1cc0e5c43bc09a4","source":"sam2_decoder.onnx"},"encoder":{"sha256":"5753df691e4d5177ee00c89357e7f37f53c9792063dceeeba508ea57ec9ba336","source":"sam2_encoder.onnx"},"family":"sam2"},"tagger":{"family":"ram","model":{"sha256":"719b85f430ba9e62006f243ce1a739520d574508c485c8389c1b1a7b86e268b3","source":"ram_logits.onnx"},"tags":{"sha256":"5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b","source":"ram_tag_list.txt"},"threshold":0.68,"thresholds":{"sha256":"b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447","source":"ram_tag_list_threshold.txt"}}}"#,
            "eed704f5ee1d93565a04c7304bbbb32676e4d6e11085bfdc59c95ce288e345d4",
        ),
    ];

    /// The same for models files whose files are downloaded (and a `salient_crop` one, which no committed file
    /// has), described with stand-in checksums (each key's own SHA-256): what is pinned is what the description
    /// says of each family and setting.
    const GOLDEN_REMOTE: &[(&str, &str, &str)] = &[
        (
            "public.toml",
            r#"{"detector":{"box_threshold":0.35,"export":"hf","family":"grounding_dino","iou_threshold":0.6,"max_detections":30,"model":{"sha256":"8d6b4f38eef9bba58ca595a5cd0fd3bf8cb8446df717b761c761b2f2d6f608af","source":"hf://onnx-community/grounding-dino-tiny-ONNX/onnx/model.onnx@ff690b0a8050566c290287545bd059350f3e9096"},"text_threshold":0.25,"tokenizer":{"sha256":"5535fe3e86a38c83cc61110c97a4b0c7644aba745e4dba83a10fc9419bdacdd5","source":"hf://onnx-community/grounding-dino-tiny-ONNX/tokenizer.json@ff690b0a8050566c290287545bd059350f3e9096"}},"segmenter":{"decoder":{"sha256":"d40dc48ed480a9780b005efaa09b5fa89b6564b6ee5b0a6b214c13bc068cb5fe","source":"hf://Xenova/slimsam-77-uniform/onnx/prompt_encoder_mask_decoder.onnx@5850ab45f587c112167512ffef949107115e26a0"},"encoder":{"sha256":"757d533486b7a025aef590ff4a35202b13fd701e5fc29947e9bd26cdf2df1c94","source":"hf://Xenova/slimsam-77-uniform/onnx/vision_encoder.onnx@5850ab45f587c112167512ffef949107115e26a0"},"family":"hf_sam"},"tagger":{"family":"ram_plus","model":{"sha256":"a526883bdf3fa0172853b4762b660090ce23304c33e4ddc18f3fa63c13db4eef","source":"https://github.com/CVHub520/X-AnyLabeling/releases/download/v2.4.0/ram_plus_swin_large_14m.onnx"},"tags":{"sha256":"f869835f56b23b524059cb2d5db1ace198ff579a0eddbe31e5cabbc971389588","source":"real-tiny/ram_tag_list.txt"},"threshold":0.5}}"#,
            "b9505ab652431c68d8d109e25bdda07adf63ef94b4032b895df5b55d0e1cacb9",
        ),
        (
            "public_sam_vit_b.toml",
            r#"{"detector":{"box_threshold":0.35,"export":"hf","family":"grounding_dino","iou_threshold":0.6,"max_detections":30,"model":{"sha256":"8d6b4f38eef9bba58ca595a5cd0fd3bf8cb8446df717b761c761b2f2d6f608af","source":"hf://onnx-community/grounding-dino-tiny-ONNX/onnx/model.onnx@ff690b0a8050566c290287545bd059350f3e9096"},"text_threshold":0.25,"tokenizer":{"sha256":"5535fe3e86a38c83cc61110c97a4b0c7644aba745e4dba83a10fc9419bdacdd5","source":"hf://onnx-community/grounding-dino-tiny-ONNX/tokenizer.json@ff690b0a8050566c290287545bd059350f3e9096"}},"segmenter":{"decoder":{"sha256":"d40dc48ed480a9780b005efaa09b5fa89b6564b6ee5b0a6b214c13bc068cb5fe","source":"https://github.com/CVHub520/X-AnyLabeling/releases/download/v0.2.0/sam_vit_b_01ec64.decoder.onnx"},"encoder":{"sha256":"757d533486b7a025aef590ff4a35202b13fd701e5fc29947e9bd26cdf2df1c94","source":"https://github.com/CVHub520/X-AnyLabeling/releases/download/v0.2.0/sam_vit_b_01ec64.encoder.onnx"},"family":"sam"},"tagger":{"family":"ram_plus","model":{"sha256":"a526883bdf3fa0172853b4762b660090ce23304c33e4ddc18f3fa63c13db4eef","source":"https://github.com/CVHub520/X-AnyLabeling/releases/download/v2.4.0/ram_plus_swin_large_14m.onnx"},"tags":{"sha256":"f869835f56b23b524059cb2d5db1ace198ff579a0eddbe31e5cabbc971389588","source":"real-tiny/ram_tag_list.txt"},"threshold":0.5}}"#,
            "7dc6c17e05fa9d1e72b77baefc4f792fc0da3bdce71aaaca17f7a17b0bc0953d",
        ),
        (
            "salient_crop",
            r#"{"detector":{"box_threshold":0.25,"export":"idea","family":"grounding_dino","iou_threshold":0.6,"model":{"sha256":"8d6b4f38eef9bba58ca595a5cd0fd3bf8cb8446df717b761c761b2f2d6f608af","source":"gdino.onnx"},"prompt":["dog"],"text_threshold":0.2,"tokenizer":{"sha256":"5535fe3e86a38c83cc61110c97a4b0c7644aba745e4dba83a10fc9419bdacdd5","source":"tokenizer.json"}},"segmenter":{"family":"salient_crop","margin":0.15,"mask_threshold":0.6,"model":{"sha256":"ab8ee5e4ef027a49eb50c07a2065bf785ff7eb9e883411291a3477cc5494e1eb","source":"isnet.onnx"}}}"#,
            "1290f9eaf05faf73641388a71b50df201f404ba07f5fb20b55c25a11b296d362",
        ),
    ];

    /// A models file with a `salient_crop` segmenter, its margin and threshold set apart from their defaults.
    const SALIENT_CROP: &str = "[detector]\nfamily = \"grounding_dino\"\nmodel = \"gdino.onnx\"\n\
                                tokenizer = \"tokenizer.json\"\nprompt = [\"dog\"]\n[segmenter]\n\
                                family = \"salient_crop\"\nmodel = \"isnet.onnx\"\nmargin = 0.15\n\
                                mask_threshold = 0.6\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refiner_descriptions_and_spec_hashes_of_the_example_models_are_golden() {
        use lyrics_operators::models::describe;
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
        let registry = StoreRegistry::new(StorageOptions::default());
        let cache = tempfile::tempdir().unwrap();
        let spec = crate::spec::JobSpec::default();
        let mut got = Vec::new();
        for (file, ..) in GOLDEN_LOCAL {
            let models = read_models_file(&examples.join(file).to_string_lossy(), &registry).await.unwrap();
            let paths = pull(&models, cache.path(), &registry, false).await.unwrap();
            got.push((*file, describe(&models.config, &paths)));
        }
        for (file, ..) in GOLDEN_REMOTE {
            let text = match *file {
                "salient_crop" => SALIENT_CROP.to_string(),
                _ => std::fs::read_to_string(examples.join(file)).unwrap(),
            };
            let config = ModelsConfig::parse(&text).unwrap();
            let mut paths = ModelPaths::default();
            for (key, source) in config.files() {
                paths.paths.insert(key.clone(), PathBuf::from(source.source()));
                paths.sha256.insert(key.clone(), sha256_hex(key.as_bytes()));
            }
            got.push((*file, describe(&config, &paths)));
        }
        // Every file's difference at once, written as the golden line it would take.
        let changed: Vec<String> = GOLDEN_LOCAL
            .iter()
            .chain(GOLDEN_REMOTE)
            .zip(&got)
            .filter(|((_, description, hash), (_, now))| now != description || spec.hash_with(now) != *hash)
            .map(|(_, (file, now))| format!("(\"{file}\", r#\"{now}\"#, \"{}\"),", spec.hash_with(now)))
            .collect();
        assert!(changed.is_empty(), "descriptions or spec hashes changed:\n{}", changed.join("\n"));
    }
}

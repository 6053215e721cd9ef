//! Model files: resolving the sources a models file names into local files, through a cache, with SHA-256 checks
//! and a progress bar; and the `models pull|list|verify` subcommands.
//!
//! A source is a path (relative to the models file), an object-store URI (`s3://`, `gs://`, `az://`, `http(s)://`,
//! `file://`), or the Hugging Face hub as `hf://org/repo/path/in/repo@revision` (revision `main` when absent),
//! fetched from `$HF_ENDPOINT/{org}/{repo}/resolve/{revision}/{path}` (`https://huggingface.co` by default, with
//! `HF_TOKEN` as a bearer token when set). Remote files are cached under `<cache>/<digest of the source>/<name>`
//! with a `<name>.sha256` beside; a file with an expected `sha256` that differs is refused and not kept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lyrics_operators::models::{FileRef, ModelPaths, ModelsConfig};
use lyrics_pipeline::{StorageOptions, StoreRegistry, redact};
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};

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
        std::fs::read_to_string(uri).with_context(|| format!("cannot read the models file {uri}"))?
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

/// Where a source lives: a local file, or something to download (with its URL for messages).
enum Resolved {
    Local(PathBuf),
    Remote { url: String, name: String, hub: bool },
}

fn resolve(models: &ModelsFile, source: &str) -> Result<Resolved> {
    if let Some(rest) = source.strip_prefix("hf://") {
        let (path, revision) = rest.rsplit_once('@').unwrap_or((rest, "main"));
        let mut parts = path.splitn(3, '/');
        let (Some(org), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("hub source {source}: expected hf://org/repo/path/in/repo@revision");
        };
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
        let url = format!("{}/{org}/{repo}/resolve/{revision}/{file}", endpoint.trim_end_matches('/'));
        let name = file.rsplit('/').next().unwrap_or(file).to_string();
        return Ok(Resolved::Remote { url, name, hub: true });
    }
    if let Some(path) = source.strip_prefix("file://") {
        return Ok(Resolved::Local(PathBuf::from(path)));
    }
    if is_remote(source) {
        let name = source.rsplit('/').next().unwrap_or(source).split('?').next().unwrap_or_default().to_string();
        return Ok(Resolved::Remote { url: source.to_string(), name, hub: false });
    }
    if Path::new(source).is_absolute() {
        return Ok(Resolved::Local(PathBuf::from(source)));
    }
    // Relative to the models file: a local folder, or a remote prefix.
    let joined = format!("{}/{source}", models.base);
    if is_remote(&joined) {
        let name = source.rsplit('/').next().unwrap_or(source).to_string();
        Ok(Resolved::Remote { url: joined, name, hub: false })
    } else {
        Ok(Resolved::Local(PathBuf::from(joined.strip_prefix("file://").unwrap_or(&joined))))
    }
}

fn cache_path(cache: &Path, url: &str, name: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
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
    let id = hex::encode(Sha256::digest(absolute.to_string_lossy().as_bytes()));
    let record = cache.join("checksums").join(format!("{}.json", &id[..24]));
    let stamp = format!("{} {modified}", meta.len());
    if let Ok(text) = std::fs::read_to_string(&record)
        && let Some((recorded, sha)) = text.trim().rsplit_once(' ')
        && recorded == stamp
    {
        return Ok(sha.to_string());
    }
    let sha = sha256_file(path)?;
    if std::fs::create_dir_all(cache.join("checksums")).is_ok() {
        let _ = std::fs::write(&record, format!("{stamp} {sha}\n"));
    }
    Ok(sha)
}

fn check(key: &str, file: &FileRef, actual: &str) -> Result<()> {
    match file.sha256() {
        Some(expected) if !expected.eq_ignore_ascii_case(actual) => {
            bail!("{key} ({}): SHA-256 {actual} does not match the expected {expected}", redact(file.source()))
        }
        _ => Ok(()),
    }
}

/// Downloads `url` to `target` (through a temporary file, renamed when whole), with a progress bar on a terminal.
async fn download(url: &str, hub: bool, target: &Path, registry: &StoreRegistry, show: bool) -> Result<()> {
    let dir = target.parent().context("cache path without a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let partial = target.with_extension("partial");
    let mut out = std::fs::File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
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
        let location = if hub {
            // The hub answers with redirects and wants the token as a bearer header; object_store's HTTP store
            // follows redirects, and takes the header through its client options.
            hub_location(url, registry)?
        } else {
            registry.locate(url)?
        };
        let get =
            location.store.get(&location.path).await.with_context(|| format!("cannot fetch {}", redact(url)))?;
        if let Some(bar) = &bar {
            bar.set_length(get.meta.size);
        }
        let mut stream = get.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("download of {} broke off", redact(url)))?;
            out.write_all(&chunk).with_context(|| format!("cannot write {}", partial.display()))?;
            if let Some(bar) = &bar {
                bar.inc(chunk.len() as u64);
            }
        }
        out.sync_all().ok();
        std::fs::rename(&partial, target)
            .with_context(|| format!("cannot move the download to {}", target.display()))?;
        Ok(())
    }
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn hub_location(url: &str, registry: &StoreRegistry) -> Result<lyrics_pipeline::Location> {
    match std::env::var("HF_TOKEN") {
        Ok(token) if !token.is_empty() => {
            let store = object_store::http::HttpBuilder::new()
                .with_url(url)
                .with_client_options(
                    object_store::ClientOptions::new().with_allow_http(true).with_default_headers(bearer(&token)?),
                )
                .build()
                .with_context(|| format!("cannot reach {}", redact(url)))?;
            let parsed = url::Url::parse(url).with_context(|| format!("invalid URL {}", redact(url)))?;
            let mut base = parsed.clone();
            base.set_path("/");
            let path = object_store::path::Path::from_url_path(parsed.path())?;
            Ok(lyrics_pipeline::Location::new(Arc::new(store), path, base))
        }
        _ => Ok(registry.locate(url)?),
    }
}

fn bearer(token: &str) -> Result<http::HeaderMap> {
    let mut headers = http::HeaderMap::new();
    let value =
        http::HeaderValue::from_str(&format!("Bearer {token}")).context("HF_TOKEN is not a valid header value")?;
    headers.insert(http::header::AUTHORIZATION, value);
    Ok(headers)
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
            Resolved::Remote { url, name, hub } => {
                let target = cache_path(cache, &url, &name);
                if !target.exists() {
                    tracing::info!(file = %key, source = %redact(&url), "downloading");
                    download(&url, hub, &target, registry, show_progress)
                        .await
                        .with_context(|| format!("{key}: cannot download {}", redact(&url)))?;
                }
                target
            }
        };
        let sha = sha256_remembered(&local, cache)?;
        if let Err(e) = check(&key, &file, &sha) {
            if local.starts_with(cache) {
                let _ = std::fs::remove_file(&local);
            }
            return Err(e);
        }
        if local.starts_with(cache) {
            let _ = std::fs::write(
                local.with_extension(format!(
                    "{}.sha256",
                    local.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
                )),
                &sha,
            );
        }
        paths.paths.insert(key.clone(), local);
        paths.sha256.insert(key, sha);
    }
    Ok(paths)
}

/// `lyrics-prep models pull|list|verify`.
pub fn command(action: &crate::ModelsAction, models_uri: &str, cache: Option<&Path>) -> Result<ExitCode> {
    crate::logging::init("info");
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
                    println!("{key:<20} {}  {}", paths.sha256[key], path.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            crate::ModelsAction::List => {
                for (key, file) in models.config.files() {
                    let (state, where_) = match resolve(&models, file.source())? {
                        Resolved::Local(path) => {
                            (if path.exists() { "local" } else { "missing" }, path.display().to_string())
                        }
                        Resolved::Remote { url, name, .. } => {
                            let target = cache_path(&cache, &url, &name);
                            (if target.exists() { "cached" } else { "not cached" }, target.display().to_string())
                        }
                    };
                    println!("{key:<20} {state:<10} {:<48} {where_}", redact(file.source()));
                }
                Ok(ExitCode::SUCCESS)
            }
            crate::ModelsAction::Verify => {
                let mut bad = 0;
                for (key, file) in models.config.files() {
                    let path = match resolve(&models, file.source())? {
                        Resolved::Local(path) => path,
                        Resolved::Remote { url, name, .. } => cache_path(&cache, &url, &name),
                    };
                    if !path.exists() {
                        println!("{key:<20} MISSING  {}", path.display());
                        bad += 1;
                        continue;
                    }
                    let sha = sha256_file(&path)?;
                    let recorded = std::fs::read_to_string(path.with_extension(format!(
                        "{}.sha256",
                        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
                    )))
                    .ok();
                    let expected = file.sha256().map(str::to_string).or(recorded);
                    match expected {
                        Some(e) if !e.trim().eq_ignore_ascii_case(&sha) => {
                            println!("{key:<20} CORRUPT  {sha} (expected {})", e.trim());
                            bad += 1;
                        }
                        Some(_) => println!("{key:<20} ok       {sha}"),
                        None => println!("{key:<20} unchecked {sha} (no expected SHA-256)"),
                    }
                }
                Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
        }
    })
}

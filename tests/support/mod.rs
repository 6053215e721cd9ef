//! Shared helpers of the end-to-end tests: real servers on 127.0.0.1 (moto for S3, azurite for Azure, the fault
//! proxy), the `lyrics-prep` binary, corpora built from generated images, and readers of the output.
//!
//! Every server a test starts is stopped when its handle drops.
#![allow(dead_code)]

pub mod formats;
pub mod real_tiny;
pub mod scenes;
pub mod web;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use image::{ImageEncoder, Rgb, RgbImage};
use lyrics_schemas::{ErrorRow, SampleRow};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lyrics-prep")
}

/// A path as the command line takes it.
pub fn s(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// `lyrics-prep run` of `input` into `output`, quiet, with `extra` arguments.
pub fn run_args<'a>(input: &'a str, output: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--input", input, "--output", output, "--progress", "off"];
    args.extend_from_slice(extra);
    args
}

/// The refiner's fixture models file.
pub fn fixture_models() -> String {
    s(&repo_root().join("examples/models/fixtures.toml"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

pub type Env = Vec<(String, String)>;

// ---------------------------------------------------------------------------------------------------------------
// Servers

/// A server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/support/hub_server.py` on 127.0.0.1: the hub's `resolve` layout and GitHub's release downloads over the
/// files under `root`, with every request logged to `log`.
pub fn hub_server(root: &Path, log: &Path) -> Server {
    let args = [std::ffi::OsStr::new("--root"), root.as_os_str(), std::ffi::OsStr::new("--log"), log.as_os_str()];
    python_server("tests/support/hub_server.py", &args)
}

/// A server script of `tests/support` started with `args`; it prints `READY <port>` once it listens.
fn python_server<A: AsRef<std::ffi::OsStr>>(script: &str, args: &[A]) -> Server {
    let mut child = Command::new("python3")
        .arg(repo_root().join(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start python3 {script}: {e}"));
    let stdout = child.stdout.take().expect("the server's stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("the server's READY line");
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{script} said {line:?}"));
    Server { child, port }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on 127.0.0.1:{port}");
}

fn spawn(program: &str, args: &[String], hint: &str) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} ({e}); {hint}"))
}

const SETUP_HINT: &str = "install the test services with scripts/setup.sh";

/// An S3-compatible server (moto) on 127.0.0.1.
pub fn moto() -> Server {
    let port = free_port();
    let args = vec!["-H".to_string(), "127.0.0.1".into(), "-p".into(), port.to_string()];
    let child = spawn("moto_server", &args, SETUP_HINT);
    wait_for_port(port, "moto_server");
    Server { child, port }
}

/// A raw HTTP/1.1 request; returns the status code and the body.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body).expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.as_bytes().to_vec()).unwrap_or_default();
    (status, body)
}

pub fn create_bucket(port: u16, bucket: &str) {
    let (status, body) = http(port, "PUT", &format!("/{bucket}"), b"");
    assert_eq!(status, 200, "create bucket {bucket}: {}", String::from_utf8_lossy(&body));
}

pub fn s3_env(port: u16) -> Env {
    [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Azure blob storage (azurite) on 127.0.0.1.
pub fn azurite() -> Server {
    let port = free_port();
    let args: Vec<String> = [
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        &port.to_string(),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = spawn("azurite-blob", &args, SETUP_HINT);
    wait_for_port(port, "azurite-blob");
    Server { child, port }
}

pub fn azure_env(port: u16) -> Env {
    vec![
        ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
        ("AZURITE_BLOB_STORAGE_URL".into(), format!("http://127.0.0.1:{port}")),
    ]
}

/// The well-known key of azurite's development account.
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub fn create_container(port: u16, container: &str) {
    let script = format!(
        "from azure.storage.blob import BlobServiceClient\n\
         conn = 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;'\n\
         BlobServiceClient.from_connection_string(conn).create_container('{container}')\n"
    );
    python_inline(&script, &Env::new());
}

/// The fault-injecting proxy of `tests/support/fault_proxy.py` in front of `upstream_port`.
pub fn fault_proxy(upstream_port: u16) -> Server {
    let upstream = format!("http://127.0.0.1:{upstream_port}");
    python_server("tests/support/fault_proxy.py", &["--port", "0", "--upstream", &upstream])
}

/// Replaces the proxy's fault rules.
pub fn set_faults(proxy: &Server, rules: serde_json::Value) {
    let body = serde_json::json!({ "rules": rules }).to_string();
    let (status, _) = http(proxy.port, "POST", "/__fault__/rules", body.as_bytes());
    assert_eq!(status, 200);
}

pub fn fault_stats(proxy: &Server) -> serde_json::Value {
    let (_, body) = http(proxy.port, "GET", "/__fault__/stats", b"");
    serde_json::from_slice(&body).expect("stats JSON")
}

// ---------------------------------------------------------------------------------------------------------------
// Running lyrics-prep and Python

/// Runs lyrics-prep; through `LYRICS_TEST_EMULATOR` where that is set, a command line that runs an x86-64 binary on
/// another CPU (`qemu-x86_64 -cpu Haswell`: the kernels ONNX Runtime picks without AVX-512).
pub fn lyrics(args: &[&str], env: &Env) -> Output {
    let emulator = std::env::var("LYRICS_TEST_EMULATOR").unwrap_or_default();
    let mut words = emulator.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(bin());
            command
        }
        None => Command::new(bin()),
    };
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("LYRICS_LOG", "info")
        .output()
        .expect("run lyrics-prep")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs lyrics-prep and asserts it succeeded; returns its stderr.
pub fn lyrics_ok(args: &[&str], env: &Env) -> String {
    let output = lyrics(args, env);
    let text = stderr(&output);
    assert!(output.status.success(), "lyrics-prep {args:?} failed ({}):\n{text}", output.status);
    text
}

pub fn python_inline(script: &str, env: &Env) {
    let output = Command::new("python3")
        .args(["-c", script])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("python3");
    assert!(output.status.success(), "python failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// Runs a committed Python script of the test suite and asserts it succeeded; returns its stdout.
pub fn python_script(script: &str, args: &[&str], env: &Env) -> String {
    let output = Command::new("python3")
        .arg(repo_root().join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Object storage from the test's side

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A store for an `s3://bucket/...`, `az://container/...` or local URI, configured from `env` (never from the
/// test process's own environment).
pub fn store(uri: &str, env: &Env) -> (Arc<dyn ObjectStore>, StorePath) {
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(get("AWS_ENDPOINT").expect("AWS_ENDPOINT"))
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()
            .expect("s3 store");
        (Arc::new(store), StorePath::from(path))
    } else if let Some(rest) = uri.strip_prefix("az://") {
        let (container, path) = rest.split_once('/').unwrap_or((rest, ""));
        // The emulator switch reads its address from the process environment: name everything explicitly instead.
        let store = object_store::azure::MicrosoftAzureBuilder::new()
            .with_container_name(container)
            .with_account("devstoreaccount1")
            .with_access_key(AZURITE_KEY)
            .with_endpoint(format!("{}/devstoreaccount1", get("AZURITE_BLOB_STORAGE_URL").expect("azurite url")))
            .with_allow_http(true)
            .build()
            .expect("azure store");
        (Arc::new(store), StorePath::from(path))
    } else {
        let path = Path::new(uri.strip_prefix("file://").unwrap_or(uri));
        (
            Arc::new(object_store::local::LocalFileSystem::new()),
            StorePath::from_absolute_path(std::path::absolute(path).expect("abs")).expect("path"),
        )
    }
}

/// Uploads every file under `local` to `uri` (a prefix).
pub fn upload_dir(local: &Path, uri: &str, env: &Env) {
    let (store, prefix) = store(uri, env);
    runtime().block_on(async {
        for file in walk(local) {
            let rel = file.strip_prefix(local).expect("under").to_string_lossy().replace('\\', "/");
            let path = StorePath::from(format!("{}/{rel}", prefix.as_ref()).trim_start_matches('/'));
            store.put(&path, PutPayload::from(std::fs::read(&file).expect("read"))).await.expect("upload");
        }
    });
}

/// Downloads everything under `uri` (a prefix) into `local`; returns the relative paths.
pub fn download_dir(uri: &str, env: &Env, local: &Path) -> Vec<String> {
    let (store, prefix) = store(uri, env);
    runtime().block_on(async {
        let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.expect("list");
        let mut names = Vec::new();
        for meta in listed {
            let rel: Vec<String> = meta
                .location
                .prefix_match(&prefix)
                .expect("under prefix")
                .map(|p| p.as_ref().to_string())
                .collect();
            let rel = rel.join("/");
            let bytes = store.get(&meta.location).await.expect("get").bytes().await.expect("body");
            let target = local.join(&rel);
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::write(&target, &bytes).expect("write");
            names.push(rel);
        }
        names.sort();
        names
    })
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Corpora

/// A noisy RGB image, different for every seed.
pub fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state & 31) as u8;
        Rgb([(x * 255 / w.max(1)) as u8 ^ noise, (y * 255 / h.max(1)) as u8, (seed as u8).wrapping_mul(40) ^ noise])
    })
}

pub fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&picture(w, h, seed))
        .expect("jpeg");
    out
}

pub fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(picture(w, h, seed).as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .expect("png");
    out
}

/// A real decompression bomb: a valid 30000×30000 greyscale PNG of zeros, about 1 MB on disk.
pub fn png_bomb() -> Vec<u8> {
    let side = 30_000u32;
    // The stream writer wants to own a 'static writer: write through a temporary file.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    {
        let mut encoder = png::Encoder::new(file.reopen().expect("reopen"), side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let writer = encoder.write_header().expect("png header");
        let mut stream = writer.into_stream_writer().expect("png stream");
        let row = vec![0u8; side as usize];
        for _ in 0..side {
            stream.write_all(&row).expect("png row");
        }
        stream.finish().expect("png finish");
    }
    std::fs::read(file.path()).expect("read the bomb")
}

/// `jpeg` with an EXIF orientation tag (APP1) inserted after its SOI marker.
pub fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Builds a tar in memory, any member name allowed (hostile ones included).
pub struct Tar(tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }
}

impl Tar {
    pub fn add(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        {
            let old = header.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.0.append(&header, data).expect("tar append");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("tar finish")
    }
}

/// A moto server with buckets `corpus` and `out`, and a WebDataset corpus of `shards` × `per_shard` samples
/// uploaded to `s3://corpus/wds` (the local copy is under the returned folder's `wds`).
pub fn s3_webdataset(shards: usize, per_shard: usize) -> (Server, Env, tempfile::TempDir) {
    let moto = moto();
    let env = s3_env(moto.port);
    create_bucket(moto.port, "corpus");
    create_bucket(moto.port, "out");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("wds");
    webdataset(&corpus, shards, per_shard);
    upload_dir(&corpus, "s3://corpus/wds", &env);
    (moto, env, dir)
}

/// Writes `shards` WebDataset tars of `per_shard` samples (JPEG, caption, JSON) under `dir`; returns the keys.
pub fn webdataset(dir: &Path, shards: usize, per_shard: usize) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut keys = Vec::new();
    for s in 0..shards {
        let mut tar = Tar::default();
        for i in 0..per_shard {
            let n = (s * per_shard + i) as u32;
            let key = format!("{n:06}");
            tar.add(&format!("{key}.jpg"), &jpeg(64 + (n % 5) * 16, 48 + (n % 3) * 16, n));
            tar.add(&format!("{key}.txt"), format!("caption of sample {n}").as_bytes());
            tar.add(&format!("{key}.json"), format!("{{\"n\": {n}}}").as_bytes());
            keys.push(key);
        }
        std::fs::write(dir.join(format!("shard-{s:05}.tar")), tar.finish()).expect("write tar");
    }
    keys
}

// ---------------------------------------------------------------------------------------------------------------
// Reading the output

/// Every batch of `table`'s shards, in shard order, with its shard's file name.
fn batches_by_shard(dir: &Path, table: &str) -> Vec<(String, arrow::array::RecordBatch)> {
    let mut files: Vec<PathBuf> =
        walk(&dir.join(table)).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = file.file_name().expect("name").to_string_lossy().into_owned();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).expect("open"),
        )
        .expect("parquet")
        .build()
        .expect("reader");
        for batch in reader {
            out.push((name.clone(), batch.expect("batch")));
        }
    }
    out
}

fn batches(dir: &Path, table: &str) -> Vec<arrow::array::RecordBatch> {
    batches_by_shard(dir, table).into_iter().map(|(_, batch)| batch).collect()
}

pub fn samples(dir: &Path) -> Vec<SampleRow> {
    batches(dir, "samples").iter().flat_map(|b| SampleRow::from_batch(b).expect("samples")).collect()
}

/// The `key` of every row of `table`, with the shard it is in (relative to the table's folder), in shard order.
pub fn keys_of(dir: &Path, table: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, batch) in batches_by_shard(dir, table) {
        let keys =
            arrow::array::AsArray::as_string::<i32>(batch.column_by_name("key").expect("key").as_ref()).clone();
        out.extend(keys.iter().map(|k| (name.clone(), k.expect("key").to_string())));
    }
    out
}

pub fn errors(dir: &Path) -> Vec<ErrorRow> {
    batches(dir, "errors").iter().flat_map(|b| ErrorRow::from_batch(b).expect("errors")).collect()
}

/// Hex SHA-256 of `data` (ring, the implementation the binary uses).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Every shard's SHA-256, by path relative to the output.
pub fn shards(dir: &Path) -> BTreeMap<String, String> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| {
            let digest = sha256_hex(&std::fs::read(&p).expect("read"));
            (p.strip_prefix(dir).expect("under").to_string_lossy().into_owned(), digest)
        })
        .collect()
}

/// The samples with their `source` (which names the store) left out: what must not depend on the store.
pub fn store_independent(dir: &Path) -> Vec<SampleRow> {
    samples(dir).into_iter().map(|r| SampleRow { source: String::new(), ..r }).collect()
}

pub fn manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("_lyrics/manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest JSON")
}

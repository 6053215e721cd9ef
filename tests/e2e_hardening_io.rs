//! End-to-end tests that nothing is lost, half-written or leaked at the edges of a run: image downloads whose
//! body breaks off (fetched again, and named when they fail for good), credentials in image URLs (kept out of
//! every byte of the output), models that do not load (no output left behind to refuse the corrected rerun), a
//! claiming worker that leaves units to a dead worker's lease (it says until when), and COCO captions that name
//! no image (counted). The web is a small server on 127.0.0.1 in the test, which counts the GETs it answers.

use crate::support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use support::web::read_request_head;
use support::*;

/// What the stand-in web answers to one GET: a status and a body, of which only the first `sent` bytes go out
/// before the connection is closed (`Content-Length` always declares the whole body).
struct Answer {
    status: u16,
    body: Vec<u8>,
    sent: usize,
}

impl Answer {
    fn whole(body: Vec<u8>) -> Answer {
        Answer { status: 200, sent: body.len(), body }
    }

    fn cut(body: Vec<u8>, sent: usize) -> Answer {
        Answer { status: 200, body, sent }
    }

    fn not_found() -> Answer {
        Answer { status: 404, body: b"not found".to_vec(), sent: 9 }
    }
}

type Answers = dyn Fn(&str, usize) -> Answer + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1 answering each GET with `answer(path, n)` (`n`: the how-manieth GET of that
/// path, from 1), one connection per request. Stopped on drop.
struct Web {
    port: u16,
    gets: Arc<Mutex<BTreeMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Web {
    fn start(answer: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) -> Web {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let gets: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<Answers> = Arc::new(answer);
        let (counts, stopping) = (gets.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (counts, answer) = (counts.clone(), answer.clone());
                std::thread::spawn(move || serve(stream, &counts, answer.as_ref()));
            }
        });
        Web { port, gets, stop, thread: Some(thread) }
    }

    fn url(&self, credentials: &str, path: &str) -> String {
        format!("http://{credentials}127.0.0.1:{}{path}", self.port)
    }

    fn gets(&self, path: &str) -> usize {
        self.gets.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn serve(stream: TcpStream, counts: &Mutex<BTreeMap<String, usize>>, answer: &Answers) {
    let mut reader = BufReader::new(stream);
    let Some(first) = read_request_head(&mut reader) else { return };
    let mut words = first.split_whitespace();
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default().to_string();
    // GETs are counted by path, anything else by method and path.
    let counted = if method == "GET" { path.clone() } else { format!("{method} {path}") };
    let n = {
        let mut counts = counts.lock().unwrap();
        let n = counts.entry(counted).or_default();
        *n += 1;
        *n
    };
    let Answer { status, body, sent } = answer(&path, n);
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if method == "GET" {
        let _ = stream.write_all(&body[..sent.min(body.len())]);
    }
    let _ = stream.flush();
}

impl Drop for Web {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A JSONL manifest of `(key, url)` rows, each with a caption and a `page` column (kept in `meta`).
fn url_manifest(dir: &Path, rows: &[(&str, String, String)]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut lines = String::new();
    for (key, url, page) in rows {
        lines
            .push_str(&serde_json::json!({"key": key, "url": url, "caption": "a photo", "page": page}).to_string());
        lines.push('\n');
    }
    let manifest = dir.join("urls.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    manifest
}

/// A job spec with a small, quick retry budget: 2 retries of each request.
fn quick_retries(dir: &Path) -> String {
    let spec = dir.join("job.toml");
    std::fs::write(&spec, "[storage]\nmax_retries = 2\nbackoff_s = 0.01\n").unwrap();
    s(&spec)
}

#[test]
fn a_body_cut_short_is_fetched_again_and_a_download_that_fails_names_its_url() {
    let photo = jpeg(96, 64, 7);
    assert!(photo.len() > 600, "the photo is long enough to cut");
    let served = photo.clone();
    let web = Web::start(move |path, n| match (path, n) {
        // Cut on the first GET, whole on the second.
        ("/flaky.jpg", 1) => Answer::cut(served.clone(), 300),
        ("/flaky.jpg", _) => Answer::whole(served.clone()),
        // Cut on every GET.
        ("/cut.jpg", _) => Answer::cut(served.clone(), 300),
        ("/ok.jpg", _) => Answer::whole(served.clone()),
        _ => Answer::not_found(),
    });
    let dir = tempfile::tempdir().unwrap();
    let cut = web.url("user:SECRETPASS@", "/cut.jpg?X-Amz-Signature=SECRETSIG");
    let manifest = url_manifest(
        &dir.path().join("corpus"),
        &[
            ("flaky", web.url("", "/flaky.jpg"), String::new()),
            ("cut", cut, String::new()),
            ("ok", web.url("", "/ok.jpg"), String::new()),
        ],
    );
    let out = dir.path().join("out");
    let text =
        lyrics_ok(&run_args(&s(&manifest), &s(&out), &["--config", &quick_retries(dir.path())]), &Env::new());

    assert_eq!(web.gets("/flaky.jpg"), 2, "a body cut short is fetched again");
    let rows = samples(&out);
    let flaky = rows.iter().find(|r| r.key == "flaky").unwrap_or_else(|| panic!("no sample flaky: {rows:#?}"));
    assert_eq!(flaky.sha256, sha256_hex(&photo), "the whole body, as the second GET sent it");
    assert!(rows.iter().any(|r| r.key == "ok"));

    assert_eq!(web.gets("/cut.jpg"), 3, "one GET and the 2 retries of the budget");
    let errors = errors(&out);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let row = &errors[0];
    assert_eq!((row.key.as_str(), row.kind.as_str()), ("cut", "download"));
    let named = format!("http://127.0.0.1:{}/cut.jpg", web.port);
    assert!(row.error.contains(&named), "the error names the URL: {}", row.error);
    assert!(row.error.contains("3 attempts"), "and how often it was tried: {}", row.error);
    for secret in ["SECRETPASS", "SECRETSIG"] {
        assert!(!row.error.contains(secret), "redacted: {}", row.error);
        assert!(!text.contains(secret), "nor in the log: {text}");
    }
}

/// Every cell of every Parquet file under `dir`, as text.
fn every_cell(dir: &Path) -> String {
    let mut text = String::new();
    for file in walk(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")) {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        text += &arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    }
    text
}

#[test]
fn credentials_in_image_urls_never_reach_the_output() {
    let photo = jpeg(64, 48, 3);
    let served = photo.clone();
    let web = Web::start(move |path, _| match path {
        "/ok3.jpg" => Answer::whole(served.clone()),
        "/cut.jpg" => Answer::cut(served.clone(), 100),
        _ => Answer::not_found(),
    });
    let secret = |path: &str| web.url("user:SECRETPASS@", &format!("{path}?X-Amz-Signature=SECRETSIG&v=2"));
    let page = web.url("user:SECRETPASS@", "/page.html?token=SECRETSIG&lang=en");
    let dir = tempfile::tempdir().unwrap();
    let manifest = url_manifest(
        &dir.path().join("corpus"),
        &[
            ("ok3", secret("/ok3.jpg"), page.clone()),
            ("gone", secret("/gone.jpg"), page.clone()),
            ("cut", secret("/cut.jpg"), page),
        ],
    );
    let out = dir.path().join("out");
    let models = s(&repo_root().join("examples/models/fixtures.toml"));
    let text = lyrics_ok(
        &run_args(&s(&manifest), &s(&out), &["--config", &quick_retries(dir.path()), "--models", &models]),
        &Env::new(),
    );
    assert!(out.join("_SUCCESS").exists());

    let rows = samples(&out);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let stored = format!("http://127.0.0.1:{}/ok3.jpg?v=2", web.port);
    assert_eq!(rows[0].image.path.as_deref(), Some(stored.as_str()), "the URL, less its credentials");
    let meta = rows[0].meta.as_deref().unwrap_or_default();
    let page = format!("http://127.0.0.1:{}/page.html?lang=en", web.port);
    assert!(meta.contains(&page), "{meta}");
    let kinds: Vec<String> = errors(&out).into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");

    let cells = every_cell(&out);
    for table in ["samples", "errors", "pretrain"] {
        assert!(out.join(table).exists(), "the run wrote {table}");
    }
    for secret in ["SECRETPASS", "SECRETSIG"] {
        for file in walk(&out) {
            let bytes = std::fs::read(&file).unwrap();
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{} holds {secret}", file.display());
        }
        assert!(!cells.contains(secret), "a column holds {secret}:\n{cells}");
        assert!(!text.contains(secret), "the log holds {secret}:\n{text}");
    }
}

/// A copy of the fixture models' folder under `dir`, with `broken` (file name, bytes) written over it.
fn models_with(dir: &Path, broken: (&str, &[u8])) -> String {
    let models = repo_root().join("examples/models");
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(&models).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join(broken.0), broken.1).unwrap();
    s(&dir.join("fixtures.toml"))
}

#[test]
fn models_that_do_not_load_leave_no_output_and_the_corrected_rerun_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 2, 2);
    let wrong_contract = std::fs::read(repo_root().join("examples/models/sam_decoder.onnx")).unwrap();
    let cases: [(&str, (&str, &[u8])); 3] = [
        ("corrupt", ("tagger.onnx", b"not an onnx graph")),
        ("contract", ("tagger.onnx", &wrong_contract)),
        ("no-tags", ("tags.txt", b"")),
    ];
    let good = s(&repo_root().join("examples/models/fixtures.toml"));
    for (name, broken) in cases {
        let models = models_with(&dir.path().join(format!("models-{name}")), broken);
        let out = dir.path().join(format!("out-{name}"));
        let output = lyrics(&run_args(&s(&corpus), &s(&out), &["--models", &models]), &Env::new());
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {text}");
        assert!(text.contains("cannot load the models"), "{name}: {text}");
        let left = walk(&out);
        assert!(left.is_empty(), "{name}: nothing is written, yet there is {left:?}");
        assert!(!out.join("_lyrics").exists(), "{name}: no _lyrics/");

        lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--models", &good]), &Env::new());
        assert!(out.join("_SUCCESS").exists(), "{name}: the rerun with the good models file completes");
        assert_eq!(samples(&out).len(), 4, "{name}");
    }
}

#[test]
fn a_claiming_worker_says_until_when_a_dead_workers_lease_holds_its_unit() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 3, 2);
    let out = dir.path().join("out");
    let (corpus, out) = (s(&corpus), s(&out));
    let claiming = |extra: &[&str]| {
        let mut command = Command::new(bin());
        command
            .args(["run", "--input", &corpus, "--output", &out, "--claim", "--lease-s", "30", "--progress", "off"])
            .args(extra)
            .env("LYRICS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    // The first worker claims unit 0 and dies (kill -9) before committing it, its lease still running.
    let mut dead = claiming(&[]).env("LYRICS_FAILPOINT", "pause-before-marker:0").spawn().unwrap();
    let mut lines = BufReader::new(dead.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the worker ended before its pause point").unwrap();
        if line.contains("pausing") {
            break;
        }
    }
    dead.kill().unwrap();
    dead.wait().unwrap();
    let killed_at = std::time::SystemTime::now();

    // The survivor, and an immediate rerun, do every other unit and say when the dead worker's lease ends.
    for attempt in ["survivor", "rerun"] {
        let output = claiming(&["--summary", "json"]).output().unwrap();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{attempt}: {text}");
        // The dead worker may have claimed the units it had read ahead too: all are named, unit 0 first.
        let line = text.lines().find(|l| l.contains("held")).unwrap_or_else(|| panic!("{attempt}: {text}"));
        assert!(line.contains("unit 0") || line.contains("units 0,"), "{attempt}: {line}");
        assert!(line.contains("runs until") && line.contains("rerun"), "{attempt}: says when and what: {line}");
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let held = summary["units"]["held"].as_array().cloned().unwrap_or_default();
        assert_eq!(held.first().map(|h| h["unit"].clone()), Some(0.into()), "{attempt}: {summary}");
        let since_kill = killed_at.elapsed().unwrap().as_secs_f64();
        for unit in &held {
            let left = unit["expires_in_s"].as_f64().unwrap();
            assert!(
                left > 0.0 && left <= 30.0 - since_kill + 1.0,
                "{attempt}: {left} s left, {since_kill} s after"
            );
        }
        let last = held.iter().filter_map(|h| h["expires_at"].as_str()).max().unwrap();
        assert!(line.contains(last), "{attempt}: the text and the JSON agree: {line} / {last}");
        let done =
            summary["units"]["done"].as_u64().unwrap() + summary["units"]["already_committed"].as_u64().unwrap();
        assert_eq!(done + held.len() as u64, 3, "{attempt}: every unit is done or held: {summary}");
        assert!(!Path::new(&out).join("_SUCCESS").exists());
    }
}

#[test]
fn coco_captions_that_name_no_image_are_counted_as_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("coco");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("a.jpg"), jpeg(32, 32, 1)).unwrap();
    std::fs::write(corpus.join("b.jpg"), jpeg(32, 32, 2)).unwrap();
    let coco = serde_json::json!({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 1, "caption": "first"},
            {"image_id": 99, "caption": "names no image"},
            {"image_id": 2, "caption": "second"},
            {"caption": "names nothing at all"},
        ],
    });
    let file = corpus.join("captions.json");
    std::fs::write(&file, coco.to_string()).unwrap();
    // One image per unit: the file's warnings are counted once, not once per unit.
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, "[input]\nformat = \"coco\"\nrows_per_unit = 1\n").unwrap();
    let out = dir.path().join("out");
    let text = lyrics_ok(&run_args(&s(&file), &s(&out), &["--config", &s(&spec)]), &Env::new());
    assert_eq!(samples(&out).len(), 2);
    assert!(text.contains("warnings orphan_caption 2"), "the summary counts them: {text}");
    assert_eq!(manifest(&out)["warnings_by_kind"]["orphan_caption"], 2);
    let output = lyrics(&["status", "--output", &s(&out), "--json"], &Env::new());
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["warnings_by_kind"]["orphan_caption"], 2, "{status}");
}

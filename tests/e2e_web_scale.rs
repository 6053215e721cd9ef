//! End-to-end tests of web-scale URL corpora: 20,000 URLs through `run` on the stand-in web end as exactly one
//! sample or error row each, in bounded memory; URLs that never answer cost a unit about one attempt budget
//! (`timeout_s × (retries + 1)`), not one per URL; and a 2,000,000-row Parquet URL manifest plans into 2,000 units
//! from its footer alone.

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use support::web::{Answer, Web, url_manifest};
use support::*;

fn spec(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    s(&path)
}

/// Runs lyrics-prep to its end: whether it succeeded, its stdout and stderr, and its peak resident memory in
/// bytes (the kernel's high-water mark of the child, from `wait4`).
fn run_measuring_rss(args: &[&str], dir: &Path) -> (bool, String, String, u64) {
    let (stdout, stderr) = (dir.join("run.stdout"), dir.join("run.stderr"));
    let child = Command::new(bin())
        .args(args)
        .env("LYRICS_LOG", "info")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn lyrics-prep");
    let pid = child.id() as libc::pid_t;
    // Reaped by wait4 below, which also reports the child's peak memory; `Child::wait` would not.
    std::mem::forget(child);
    let mut status = 0;
    // SAFETY: plain FFI out-parameters; `pid` is our own child, waited for once.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(pid, &mut status, 0, &mut usage), pid);
        usage
    };
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    // ru_maxrss is in KiB on Linux.
    (ok, read(&stdout), read(&stderr), usage.ru_maxrss as u64 * 1024)
}

#[test]
fn twenty_thousand_urls_end_as_one_row_each_in_bounded_memory() {
    const URLS: usize = 20_000;
    const HOSTS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let photos: Vec<Vec<u8>> = (0..16).map(|i| jpeg(24 + i * 2, 16 + i, i)).collect();
    // Every 40th URL is missing; the rest are one of 16 small photos.
    let web = Web::start(HOSTS, move |_, target, _| {
        let name = target.trim_start_matches('/').trim_end_matches(".jpg");
        match name.parse::<usize>() {
            Ok(i) if i % 40 != 39 => Answer::image(&photos[i % photos.len()]),
            _ => Answer::status(404),
        }
    });
    let rows: Vec<(String, String)> =
        (0..URLS).map(|i| (format!("u{i:05}"), web.url(i % HOSTS + 1, &format!("/{i}.jpg")))).collect();
    let input = url_manifest(dir.path(), &rows);
    let out = dir.path().join("out");

    let started = Instant::now();
    let (ok, stdout, stderr, peak) = run_measuring_rss(
        &["run", "--input", &input, "--output", &s(&out), "--progress", "off", "--summary", "json"],
        dir.path(),
    );
    assert!(ok, "the run failed:\n{stderr}");
    eprintln!("{URLS} URLs in {:.1} s, peak RSS {} MiB", started.elapsed().as_secs_f64(), peak >> 20);
    assert!(peak < 300 << 20, "peak RSS {} MiB, expected under 300 MiB", peak >> 20);

    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    let missing = (0..URLS).filter(|i| i % 40 == 39).count();
    assert_eq!(summary["rows"]["samples"], URLS - missing, "{summary}");
    assert_eq!(summary["errors_by_kind"]["http_404"], missing, "{summary}");
    assert_eq!(manifest(&out)["units"], URLS / 1000, "default rows_per_unit: 1,000 rows a unit");

    let samples: Vec<String> = samples(&out).into_iter().map(|r| r.key).collect();
    let errors: Vec<String> = errors(&out).into_iter().map(|r| r.key).collect();
    assert_eq!(samples.len() + errors.len(), URLS, "one row per URL");
    let keys: BTreeSet<&String> = samples.iter().chain(&errors).collect();
    assert_eq!(keys.len(), URLS, "no URL has two rows");
    assert!(rows.iter().all(|(key, _)| keys.contains(key)), "every URL has a row");
    assert!(errors.iter().all(|key| key[1..].parse::<usize>().unwrap() % 40 == 39), "{errors:?}");
}

/// A Parquet manifest of `(key, url)` rows with a caption, in one row group (one unit).
fn url_parquet(dir: &Path, rows: &[(String, String)]) -> String {
    let batch = RecordBatch::try_from_iter(vec![
        ("key", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))) as ArrayRef),
        ("url", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))) as ArrayRef),
        ("caption", Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "a photo"))) as ArrayRef),
    ])
    .unwrap();
    let path = dir.join("urls.parquet");
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    s(&path)
}

/// `rows` URLs on 4 hosts, every 100th of which hangs when `hang` is set (else answers like the others), in a
/// JSONL or a Parquet manifest, run with `timeout_s = 1`, `retries = 2`; the run's wall time.
fn timed_run(dir: &Path, rows: usize, hang: bool, parquet: bool) -> Duration {
    let photo = jpeg(32, 24, 7);
    let web = Web::start(4, move |_, target, _| {
        if hang && target.starts_with("/hang/") {
            Answer::Hang
        } else {
            Answer::ok(&photo, "image/jpeg", Duration::from_millis(20))
        }
    });
    let urls: Vec<(String, String)> = (0..rows)
        .map(|i| {
            let path = if i % 100 == 50 { format!("/hang/{i}.jpg") } else { format!("/ok/{i}.jpg") };
            (format!("u{i:05}"), web.url(i % 4 + 1, &path))
        })
        .collect();
    let run_dir =
        dir.join(format!("{}-{}", if hang { "hang" } else { "answer" }, if parquet { "parquet" } else { "jsonl" }));
    std::fs::create_dir_all(&run_dir).unwrap();
    let input = if parquet { url_parquet(&run_dir, &urls) } else { url_manifest(&run_dir, &urls) };
    let spec = spec(&run_dir, "job.toml", "[download]\ntimeout_s = 1\nretries = 2\nretry_timeouts = true\n");
    let out = run_dir.join("out");
    let started = Instant::now();
    lyrics_ok(
        &["run", "--input", &input, "--output", &s(&out), "--progress", "off", "--config", &spec],
        &Env::new(),
    );
    let took = started.elapsed();
    let errors = errors(&out);
    let hanging = (0..rows).filter(|i| i % 100 == 50).count();
    if hang {
        assert_eq!(errors.len(), hanging, "{errors:#?}");
        assert!(errors.iter().all(|e| e.kind == "timeout"), "{errors:#?}");
    } else {
        assert!(errors.is_empty(), "{errors:#?}");
    }
    assert_eq!(samples(&out).len() + errors.len(), rows);
    took
}

/// Ten URLs of a unit that never answer are waited for at once: together they cost the unit about one attempt
/// budget, `timeout_s × (retries + 1)` (plus the backoffs between attempts), however many there are, while the
/// others are fetched meanwhile; in a Parquet manifest too, whose unit is read in batches of 256 rows. Units are
/// read one after another, so each unit with a hanging URL costs that much again: this test keeps to one unit
/// (1,000 rows, the default `rows_per_unit`).
#[test]
fn urls_that_never_answer_cost_a_unit_about_one_attempt_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (timeout_s, attempts) = (1.0, 3.0);
    for parquet in [false, true] {
        let answering = timed_run(dir.path(), 1000, false, parquet);
        let hanging = timed_run(dir.path(), 1000, true, parquet);
        let extra = hanging.as_secs_f64() - answering.as_secs_f64();
        eprintln!("parquet {parquet}: answering: {answering:.1?}, with 1% hanging: {hanging:.1?}");
        // Each hanging URL alone takes its 3 attempts of 1 s and backoffs of 0.25 s and 0.5 s.
        assert!(hanging.as_secs_f64() >= timeout_s * attempts, "the hanging URLs were waited for: {hanging:?}");
        assert!(
            extra <= 2.0 * timeout_s * attempts,
            "parquet {parquet}: 1% of URLs hanging added {extra:.1} s to a run of {answering:?}, more than \
             2 × timeout_s × (retries + 1)"
        );
    }
}

/// A Parquet file of `groups` row groups of `group_rows` URL rows each (`url`, `caption`), written a group at a time.
fn write_url_parquet(path: &Path, groups: usize, group_rows: usize) {
    let group = |g: usize| {
        let urls = (0..group_rows).map(|i| format!("http://127.0.0.1:9/{}.jpg", g * group_rows + i));
        let captions = (0..group_rows).map(|i| format!("photo {i}"));
        RecordBatch::try_from_iter(vec![
            ("url", Arc::new(StringArray::from_iter_values(urls)) as ArrayRef),
            ("caption", Arc::new(StringArray::from_iter_values(captions)) as ArrayRef),
        ])
        .unwrap()
    };
    let first = group(0);
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(group_rows)).build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), first.schema(), Some(props)).unwrap();
    writer.write(&first).unwrap();
    for g in 1..groups {
        writer.write(&group(g)).unwrap();
    }
    writer.close().unwrap();
}

#[test]
fn a_two_million_row_url_manifest_plans_into_two_thousand_units_from_its_footer() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let file = corpus.join("laion-part-00000.parquet");
    write_url_parquet(&file, 2000, 1000);
    // Every page overwritten with zeros: only the footer is readable, so planning that read a page would fail.
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    let footer = u32::from_le_bytes(bytes[len - 8..len - 4].try_into().unwrap()) as usize;
    bytes[4..len - 8 - footer].fill(0);
    std::fs::write(&file, bytes).unwrap();

    // No [input] rows_per_unit: the default, 1,000 rows a unit.
    let started = Instant::now();
    let output = lyrics(&["plan", "--input", &s(&corpus), "--json"], &Env::new());
    assert!(output.status.success(), "{}", stderr(&output));
    eprintln!("planned in {:.1?}", started.elapsed());
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("plan JSON");
    assert_eq!(plan["format"], "parquet");
    let units = plan["units"].as_array().expect("units");
    assert_eq!(units.len(), 2000);
    for (i, unit) in units.iter().enumerate() {
        let i = i as u64;
        assert_eq!((unit["range"][0].as_u64(), unit["range"][1].as_u64()), (Some(i), Some(i + 1)), "{unit}");
        assert_eq!(unit["first_row"].as_u64().unwrap_or(0), i * 1000, "{unit}");
    }
}

//! End-to-end tests of `run --retry-errors`: the items of committed units that failed in a transient way are read
//! again once the web has recovered and become samples; other error rows stay; units with nothing to retry keep
//! their files untouched; a second pass changes nothing; and a retry killed at any point finishes, on its rerun, with
//! the same bytes as one that was never interrupted.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::web::{Answer, Web};
use support::*;

/// Copies the folder `from` to `to`, files and all.
fn copy_dir(from: &Path, to: &Path) {
    for file in walk(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// The modification time of every shard, by path.
fn mtimes(dir: &Path) -> std::collections::BTreeMap<String, std::time::SystemTime> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| {
            let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), modified)
        })
        .collect()
}

/// Shards of unit `unit` (`part-00000U-…`).
fn of_unit<T: Clone>(all: &std::collections::BTreeMap<String, T>, unit: u64) -> Vec<(String, T)> {
    let name = format!("part-{unit:06}-");
    all.iter().filter(|(path, _)| path.contains(&name)).map(|(p, v)| (p.clone(), v.clone())).collect()
}

#[test]
fn transient_failures_become_samples_and_only_their_units_are_rewritten() {
    let recovered = Arc::new(AtomicBool::new(false));
    let photo = jpeg(48, 36, 7);
    let (up, p) = (recovered.clone(), photo.clone());
    let web = Web::start(2, move |_, target, _| {
        let up = up.load(Ordering::SeqCst);
        match target {
            "/gone.jpg" => Answer::status(404),
            "/page.jpg" => Answer::ok(b"<html>a page</html>", "text/html", std::time::Duration::ZERO),
            t if t.starts_with("/flaky") && !up => Answer::status(503),
            t if t.starts_with("/hang") && !up => Answer::Hang,
            t if t.starts_with("/busy") && !up => Answer::status(429),
            _ => Answer::image(&p),
        }
    });
    // Three units of 10 rows: unit 0 all good; unit 1 two 503s, a hang and a 404, and a second row of key k12
    // that is fetched (so k12's failed row is not retried: the key has its sample); unit 2 a 429 and a page.
    let mut rows = Vec::new();
    for i in 0..30 {
        let path = match i {
            12 | 15 => format!("/flaky{i}.jpg"),
            17 => "/hang.jpg".to_string(),
            18 => "/gone.jpg".to_string(),
            23 => "/busy.jpg".to_string(),
            27 => "/page.jpg".to_string(),
            _ => format!("/ok{i}.jpg"),
        };
        let key = if i == 19 { "k12".to_string() } else { format!("k{i:02}") };
        rows.push((key, web.url(1 + i % 2, &path)));
    }
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let lines: String = rows
        .iter()
        .map(|(key, url)| serde_json::json!({"key": key, "url": url, "caption": "a photo"}).to_string() + "\n")
        .collect();
    let manifest = corpus.join("urls.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, "[input]\nrows_per_unit = 10\n[download]\ntimeout_s = 1\nretries = 0\n").unwrap();
    let (manifest, spec) = (s(&manifest), s(&spec));
    let run = |out: &Path, extra: &[&str], env: &Env| {
        let out = s(out);
        let mut args = run_args(&manifest, &out, &["--config", &spec]);
        args.extend_from_slice(extra);
        lyrics(&args, env)
    };

    let first = dir.path().join("first");
    let log = stderr(&run(&first, &[], &Env::new()));
    let kinds = |out: &Path| -> Vec<(String, String)> {
        let mut kinds: Vec<_> = errors(out).into_iter().map(|e| (e.key, e.kind)).collect();
        kinds.sort();
        kinds
    };
    let failed: Vec<(String, String)> = [
        ("k12", "http_503"),
        ("k15", "http_503"),
        ("k17", "timeout"),
        ("k18", "http_404"),
        ("k23", "http_429"),
        ("k27", "not_an_image"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(kinds(&first), failed, "{log}");
    assert_eq!(samples(&first).len(), 24);
    let before = shards(&first);
    let (killed_committing, killed_writing) =
        (dir.path().join("killed-committing"), dir.path().join("killed-writing"));
    copy_dir(&first, &killed_committing);
    copy_dir(&first, &killed_writing);
    let times = mtimes(&first);

    // The web recovers; the transient failures are read again, and nothing else is asked for.
    recovered.store(true, Ordering::SeqCst);
    let asked = |path: &str| web.requests(1, path) + web.requests(2, path);
    let good_before: usize = (0..30).map(|i| asked(&format!("/ok{i}.jpg"))).sum();
    let retry = ["--retry-errors", "timeout,http_5xx,http_429"];
    let output = run(&first, &retry, &Env::new());
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("retried  3 items of 2 units read again (2 units rewritten): 3 are samples now"), "{log}");
    let good_after: usize = (0..30).map(|i| asked(&format!("/ok{i}.jpg"))).sum();
    assert_eq!(good_after, good_before, "no image that was fetched already is fetched again");
    assert_eq!(asked("/gone.jpg"), 1, "a 404 is not among the kinds retried");
    assert_eq!(asked("/page.jpg"), 1);
    assert_eq!(asked("/flaky15.jpg"), 2);
    assert_eq!(asked("/flaky12.jpg"), 1, "k12 has its sample: its failed row is not retried");

    let after = samples(&first);
    assert_eq!(after.len(), 27);
    for key in ["k12", "k15", "k17", "k23"] {
        assert_eq!(after.iter().filter(|r| r.key == key).count(), 1, "{key} is a sample now");
    }
    let expected_errors: Vec<(String, String)> =
        failed.iter().filter(|(k, _)| ["k12", "k18", "k27"].contains(&k.as_str())).cloned().collect();
    assert_eq!(kinds(&first), expected_errors);
    assert!(first.join("_SUCCESS").exists(), "the job is finished again");
    let manifest_json = support::manifest(&first);
    assert_eq!(manifest_json["rows"]["samples"], 27, "{manifest_json}");
    assert_eq!(manifest_json["rows"]["errors"], 3, "{manifest_json}");
    assert_eq!(
        manifest_json["errors_by_kind"],
        serde_json::json!({"http_503": 1, "http_404": 1, "not_an_image": 1})
    );
    // Unit 0 had nothing to retry: its files are the same files, untouched.
    let now = shards(&first);
    assert_eq!(of_unit(&now, 0), of_unit(&before, 0));
    assert_eq!(of_unit(&mtimes(&first), 0), of_unit(&times, 0), "unit 0's files were not rewritten");
    // Unit 2's samples shard stays as it was; the new sample came as a shard of its own.
    let unit2_samples_before =
        of_unit(&before, 2).into_iter().filter(|(p, _)| p.starts_with("samples")).collect::<Vec<_>>();
    for (path, digest) in &unit2_samples_before {
        assert_eq!(now.get(path), Some(digest), "{path} unchanged");
    }
    assert!(now.contains_key("samples/part-000002-001.parquet"), "{now:#?}");
    assert!(!first.join("_lyrics/retry").exists() || walk(&first.join("_lyrics/retry")).is_empty());

    // A second pass finds nothing to retry and changes nothing.
    let again = stderr(&run(&first, &retry, &Env::new()));
    assert!(again.contains("retried  0 items of 0 units"), "{again}");
    assert_eq!(shards(&first), now);

    // Killed with the new shards whole and recorded, before the marker: the rerun (with or without the flag)
    // completes the amendment; killed while the new shards are written: the rerun undoes and redoes it. Both end
    // with the bytes of the run that was never interrupted.
    let kill: Env = vec![("LYRICS_FAILPOINT".into(), "before-retry-marker:1".into())];
    let output = run(&killed_committing, &retry, &kill);
    assert!(!output.status.success(), "the failpoint killed the run");
    assert!(!killed_committing.join("_SUCCESS").exists(), "an output being amended is not finished");
    // A plain rerun completes unit 1's amendment and undoes unit 2's, which had not begun: a finished output
    // again, with unit 2's 429 still an error row to retry.
    let plain = stderr(&run(&killed_committing, &[], &Env::new()));
    assert!(killed_committing.join("_SUCCESS").exists(), "{plain}");
    let mut expected: Vec<(String, String)> =
        failed.iter().filter(|(k, _)| ["k12", "k18", "k23", "k27"].contains(&k.as_str())).cloned().collect();
    expected.sort();
    assert_eq!(kinds(&killed_committing), expected, "{plain}");
    assert_eq!(samples(&killed_committing).len(), 26);
    assert!(run(&killed_committing, &retry, &Env::new()).status.success());
    assert_eq!(shards(&killed_committing), now);
    assert_eq!(support::manifest(&killed_committing)["rows"], manifest_json["rows"]);

    let kill: Env = vec![("LYRICS_FAILPOINT".into(), "after-shard:1".into())];
    let output = run(&killed_writing, &retry, &kill);
    assert!(!output.status.success(), "the failpoint killed the run");
    assert_ne!(shards(&killed_writing), before, "the killed retry had written a new shard");
    // A plain rerun undoes the amendment: the unit's new shard goes, the output is as before the retry.
    assert!(run(&killed_writing, &[], &Env::new()).status.success());
    assert_eq!(shards(&killed_writing), before);
    assert_eq!(kinds(&killed_writing), failed);
    assert!(run(&killed_writing, &retry, &Env::new()).status.success());
    assert_eq!(shards(&killed_writing), now);
    assert_eq!(support::manifest(&killed_writing)["errors_by_kind"], manifest_json["errors_by_kind"]);
}

#[test]
fn retry_errors_names_kinds_and_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("out"));
    let input = s(&dir.path().join("in"));
    for (extra, says) in [
        (vec!["--retry-errors", "time out"], "not an error kind"),
        (vec!["--retry-errors", "timeout", "--claim"], "cannot be used with"),
        (vec!["--retry-errors", "timeout", "--force"], "cannot be used with"),
    ] {
        let mut args = run_args(&input, &out, &[]);
        args.extend_from_slice(&extra);
        let output = lyrics(&args, &Env::new());
        assert!(!output.status.success(), "{extra:?}");
        assert!(stderr(&output).contains(says), "{extra:?}: {}", stderr(&output));
    }
}

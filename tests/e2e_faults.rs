//! Fault injection between lyrics-prep and an S3-compatible server: 503 bursts, connection resets, truncated
//! bodies and slow responses on listing, reads and multipart writes. Transient faults must not change a byte of
//! the output; a fault that outlasts the retry budget fails its unit cleanly, and a rerun completes the job.

use crate::support;

use std::path::Path;

use serde_json::json;
use support::*;

fn run_args<'a>(output: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--input", "s3://corpus/wds", "--output", output, "--progress", "off"];
    args.extend_from_slice(extra);
    args
}

fn env_through(port: u16) -> Env {
    s3_env(port)
}

fn spec(dir: &Path, text: &str) -> String {
    let path = dir.join("job.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// Big enough shards that each goes up as a multipart upload of several 5 MiB parts.
fn big_corpus(dir: &Path) -> std::path::PathBuf {
    let corpus = dir.join("wds");
    std::fs::create_dir_all(&corpus).unwrap();
    for s in 0..2u32 {
        let mut tar = Tar::default();
        for i in 0..36u32 {
            let n = s * 100 + i;
            tar.add(&format!("{n:06}.png"), &png(640, 480, n));
            tar.add(&format!("{n:06}.txt"), format!("caption {n}").as_bytes());
        }
        std::fs::write(corpus.join(format!("shard-{s:05}.tar")), tar.finish()).unwrap();
    }
    corpus
}

#[test]
fn transient_faults_change_nothing() {
    let moto = moto();
    let direct = s3_env(moto.port);
    create_bucket(moto.port, "corpus");
    create_bucket(moto.port, "out");
    let dir = tempfile::tempdir().unwrap();
    let corpus = big_corpus(dir.path());
    upload_dir(&corpus, "s3://corpus/wds", &direct);
    let spec = spec(dir.path(), "[storage]\nupload_part_bytes = 5242880\nbackoff_s = 0.05\n");

    let reference = dir.path().join("reference");
    lyrics_ok(&run_args("s3://out/reference", &["--config", &spec]), &direct);
    download_dir("s3://out/reference", &direct, &reference);
    let sizes: Vec<u64> =
        walk(&reference.join("samples")).iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
    assert!(sizes.iter().all(|s| *s > 2 * 5_242_880), "shards must be multipart uploads: {sizes:?}");

    let proxy = fault_proxy(moto.port);
    set_faults(
        &proxy,
        json!([
            {"kind": "status", "status": 503, "match": "list-type=2", "count": 2},
            {"kind": "status", "status": 503, "method": "PUT", "match": "plan.json", "count": 1},
            {"kind": "reset", "method": "GET", "match": "shard-", "count": 2},
            {"kind": "delay", "method": "GET", "match": "shard-", "delay_s": 1.0, "count": 1},
            {"kind": "truncate", "method": "GET", "match": "shard-", "count": 1},
            {"kind": "status", "status": 503, "method": "PUT", "match": "partNumber", "count": 3},
            {"kind": "reset", "method": "PUT", "match": "partNumber", "skip": 2, "count": 1},
            {"kind": "status", "status": 500, "method": "POST", "match": "uploadId", "count": 1},
            {"kind": "status", "status": 503, "method": "PUT", "match": "_lyrics/done", "count": 2},
            {"kind": "delay", "method": "PUT", "match": "_lyrics/done", "delay_s": 0.5, "count": 1},
        ]),
    );
    let faulty = env_through(proxy.port);
    lyrics_ok(&run_args("s3://out/faulty", &["--config", &spec]), &faulty);
    let injected = fault_stats(&proxy)["injected"].clone();
    for kind in ["status", "reset", "truncate", "delay"] {
        assert!(injected[kind].as_u64().unwrap_or(0) > 0, "no {kind} fault was injected: {injected}");
    }
    let output = dir.path().join("faulty");
    download_dir("s3://out/faulty", &direct, &output);
    assert_eq!(shards(&output), shards(&reference));
    assert_eq!(manifest(&output), manifest(&reference));
}

#[test]
fn a_fault_past_the_retry_budget_fails_its_unit_cleanly_and_a_rerun_completes() {
    let (moto, direct, dir) = s3_webdataset(3, 4);
    let spec = spec(dir.path(), "[storage]\nmax_retries = 2\nretry_timeout_s = 5\nbackoff_s = 0.05\n");

    lyrics_ok(&run_args("s3://out/reference", &["--config", &spec]), &direct);
    let reference = dir.path().join("reference");
    download_dir("s3://out/reference", &direct, &reference);

    let proxy = fault_proxy(moto.port);
    set_faults(&proxy, json!([{"kind": "status", "status": 503, "match": "samples/part-000001"}]));
    let faulty = env_through(proxy.port);
    let failed = lyrics(&run_args("s3://out/job", &["--config", &spec]), &faulty);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let text = stderr(&failed);
    assert!(text.contains("FAILED   unit 1") && text.contains("part-000001-000.parquet"), "{text}");
    assert!(text.contains("rerun"), "{text}");

    let partial = dir.path().join("partial");
    let names = download_dir("s3://out/job", &direct, &partial);
    assert!(!names.iter().any(|n| n.contains("part-000001")), "no shard of the failed unit is visible: {names:?}");
    assert!(!names.contains(&"_lyrics/done/000001.json".to_string()), "{names:?}");
    assert!(
        names.contains(&"_lyrics/done/000000.json".to_string())
            && names.contains(&"_lyrics/done/000002.json".to_string()),
        "{names:?}"
    );
    assert!(!names.contains(&"_SUCCESS".to_string()));

    set_faults(&proxy, json!([]));
    let text = lyrics_ok(&run_args("s3://out/job", &["--config", &spec]), &faulty);
    assert!(text.contains("1 done, 2 already committed"), "{text}");
    let output = dir.path().join("output");
    download_dir("s3://out/job", &direct, &output);
    assert_eq!(shards(&output), shards(&reference));
}

#[test]
fn listing_failures_past_the_budget_fail_the_run_with_a_clear_error() {
    let (moto, _, dir) = s3_webdataset(1, 2);
    let spec = spec(dir.path(), "[storage]\nmax_retries = 1\nretry_timeout_s = 2\nbackoff_s = 0.05\n");
    let proxy = fault_proxy(moto.port);
    set_faults(&proxy, json!([{"kind": "status", "status": 503, "match": "list-type=2"}]));
    let failed = lyrics(&run_args("s3://out/never", &["--config", &spec]), &env_through(proxy.port));
    assert!(!failed.status.success());
    let text = stderr(&failed);
    assert!(text.contains("s3://corpus/wds") && text.contains("503"), "{text}");
}

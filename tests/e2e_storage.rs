//! End-to-end tests against real storage services on 127.0.0.1: an S3-compatible server (moto) and Azure blob
//! storage (azurite). Corpora live in buckets, output goes to buckets, and the output is read back by pyarrow,
//! DuckDB, polars and Hugging Face `datasets`.

use crate::support;

use support::*;

fn run(input: &str, output: &str, extra: &[&str], env: &Env) -> String {
    let mut args = vec!["run", "--input", input, "--output", output, "--progress", "off"];
    args.extend_from_slice(extra);
    lyrics_ok(&args, env)
}

#[test]
fn webdataset_from_s3_to_s3_is_read_alike_by_four_readers() {
    let (_moto, env, dir) = s3_webdataset(3, 4);

    run("s3://corpus/wds", "s3://out/job", &[], &env);
    let local = dir.path().join("downloaded");
    let names = download_dir("s3://out/job", &env, &local);
    assert!(
        names.contains(&"_SUCCESS".to_string()) && names.contains(&"_lyrics/manifest.json".to_string()),
        "{names:?}"
    );
    python_script("tests/readers/check_output.py", &[&s(&local), "--samples", "12", "--errors", "0"], &env);

    // The same corpus read from local files gives the same rows (but for `source`, which names the store).
    let reference = dir.path().join("local-out");
    run(&s(&dir.path().join("wds")), &s(&reference), &[], &Env::new());
    assert_eq!(store_independent(&local), store_independent(&reference));

    // A rerun on the finished output has nothing to do and changes nothing.
    let text = run("s3://corpus/wds", "s3://out/job", &[], &env);
    assert!(text.contains("3 already committed"), "{text}");

    // The gallery draws from the bucket as from a folder.
    let gallery = dir.path().join("gallery");
    lyrics_ok(&["render", "--output", "s3://out/job", "--to", &s(&gallery), "--page-size", "5"], &env);
    let pages: Vec<String> = ["index.html", "page-2.html", "page-3.html"]
        .iter()
        .map(|p| std::fs::read_to_string(gallery.join(p)).unwrap())
        .collect();
    let cards: usize = pages.iter().map(|p| p.matches("<article class=\"card sample\">").count()).sum();
    assert_eq!(cards, 12);
    assert!(pages[0].contains("s3://out/job"), "the header names the output");
    assert_eq!(std::fs::read_dir(gallery.join("thumbs")).unwrap().count(), 12);
}

#[test]
fn every_input_format_reads_from_s3() {
    let moto = moto();
    let env = s3_env(moto.port);
    create_bucket(moto.port, "corpus");
    create_bucket(moto.port, "out");
    let dir = tempfile::tempdir().unwrap();
    let corpora = formats::corpora_of_every_format(
        dir.path(),
        "s3://corpus/formats",
        "s3://corpus/formats",
        "s3://corpus/formats",
    );
    // Specs name the bucket, so they stay local files; everything else goes to the bucket.
    let local_specs: Vec<_> = corpora.iter().filter_map(|(_, _, spec)| spec.clone()).collect();
    let upload = dir.path().join("upload");
    for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let path = entry.path();
        if local_specs.contains(&s(&path)) || path == upload {
            continue;
        }
        let target = upload.join(entry.file_name());
        if path.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            for file in walk(&path) {
                let rel = file.strip_prefix(&path).unwrap();
                std::fs::create_dir_all(target.join(rel).parent().unwrap()).unwrap();
                std::fs::copy(&file, target.join(rel)).unwrap();
            }
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
    upload_dir(&upload, "s3://corpus/formats", &env);
    let mut outputs = Vec::new();
    for (input, format, spec) in &corpora {
        let output = format!("s3://out/{format}");
        let mut extra = vec!["--format", format];
        if let Some(spec) = spec {
            extra.extend(["--config", spec.as_str()]);
        }
        run(input, &output, &extra, &env);
        let local = dir.path().join(format!("out-{format}"));
        download_dir(&output, &env, &local);
        outputs.push((local, *format));
    }
    formats::check_every_format(&outputs);
}

#[test]
fn webdataset_from_azure_to_azure() {
    let azurite = azurite();
    let env = azure_env(azurite.port);
    create_container(azurite.port, "corpus");
    create_container(azurite.port, "out");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("wds");
    webdataset(&corpus, 2, 3);
    upload_dir(&corpus, "az://corpus/wds", &env);
    run("az://corpus/wds", "az://out/job", &[], &env);
    let local = dir.path().join("downloaded");
    download_dir("az://out/job", &env, &local);
    python_script("tests/readers/check_output.py", &[&s(&local), "--samples", "6", "--errors", "0"], &env);
    let reference = dir.path().join("local-out");
    run(&s(&dir.path().join("wds")), &s(&reference), &[], &Env::new());
    assert_eq!(store_independent(&local), store_independent(&reference));
}

#[test]
fn credentials_never_reach_logs_or_errors() {
    let moto = moto();
    let mut env = s3_env(moto.port);
    env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY".into(), "SuperSecretKey123".into()));
    // No such bucket: the run fails, and says so without the secret.
    let output = lyrics(
        &["run", "--input", "s3://missing-bucket/x", "--output", "s3://missing-bucket/y", "--progress", "log"],
        &env,
    );
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("missing-bucket"), "the error names the input: {text}");
    assert!(!text.contains("SuperSecretKey123"), "{text}");

    let presigned = "https://user:hunter2@127.0.0.1:9/corpus.tar?X-Amz-Signature=abcdef123&sig=SASSECRET";
    let output =
        lyrics(&["run", "--input", presigned, "--output", "/tmp/never-written", "--progress", "log"], &env);
    assert!(!output.status.success());
    let text = stderr(&output);
    for secret in ["hunter2", "abcdef123", "SASSECRET"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains("127.0.0.1:9"), "the error still names the host: {text}");
}

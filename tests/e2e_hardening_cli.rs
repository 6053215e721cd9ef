//! End-to-end tests of what the subcommands must not do with careless paths and arguments: `sql --to` over the
//! output's own shards, `..` in paths, outputs inside their input, keys too long for a file name, exports that
//! look finished when they are not, standard output closed by its reader, `render --where` that is more than one
//! predicate, galleries that keep stale pages, and a models file guessed from the working directory.

use crate::support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::scenes::{Kind, Scene, encode_png};
use support::*;

/// lyrics-prep run in the folder `cwd`.
fn lyrics_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin()).args(args).current_dir(cwd).env("LYRICS_LOG", "info").output().expect("run lyrics-prep")
}

/// A finished output of a WebDataset corpus of 2 × 8 samples, ingest only: (corpus, output).
fn finished_output(dir: &Path) -> (PathBuf, PathBuf) {
    let corpus = dir.join("corpus");
    webdataset(&corpus, 2, 8);
    let out = dir.join("out");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
    (corpus, out)
}

/// The single-column result of `query` over `out`, as CSV lines without the header.
fn sql_lines(out: &Path, query: &str) -> Vec<String> {
    let output = lyrics(&["sql", "--output", &s(out), "--format", "csv", query], &Env::new());
    assert!(output.status.success(), "sql {query}: {}", stderr(&output));
    String::from_utf8_lossy(&output.stdout).lines().skip(1).map(str::to_string).collect()
}

#[test]
fn sql_to_inside_an_output_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = finished_output(dir.path());
    let before = shards(&out);
    let shard = before.keys().find(|k| k.starts_with("samples/")).expect("a samples shard").clone();
    let targets = [
        s(&out.join(&shard)),
        s(&out.join("samples")),
        s(&out.join("errors/new.parquet")),
        s(&out.join("_lyrics")),
        s(&out.join("_lyrics/done/x.parquet")),
        format!("{}/elsewhere/../{shard}", s(&out)),
    ];
    for to in &targets {
        let output = lyrics(&["sql", "--output", &s(&out), "--to", to, "SELECT 1 AS x"], &Env::new());
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "--to {to} must be refused: {text}");
        assert!(text.contains("--to") && text.contains(&s(&out)), "the error names the path: {text}");
        assert_eq!(shards(&out), before, "--to {to} changed the output");
    }
    assert!(!out.join("samples/part-000000.parquet").exists() && !out.join("_lyrics/part-000000.parquet").exists());
    assert_eq!(sql_lines(&out, "SELECT count(*) FROM samples"), ["16"]);
    assert_eq!(sql_lines(&out, "SELECT key FROM samples ORDER BY key LIMIT 1"), ["000000"]);
    let status = lyrics(&["status", "--output", &s(&out), "--json"], &Env::new());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((status["complete"].as_bool(), status["rows"].as_u64()), (Some(true), Some(16)), "{status}");

    // Beside the output, or in a folder of its own within it, the result is written.
    let beside = dir.path().join("result.parquet");
    lyrics_ok(&["sql", "--output", &s(&out), "--to", &s(&beside), "SELECT key FROM samples"], &Env::new());
    assert!(beside.exists());
    let root_file = out.join("result.parquet");
    lyrics_ok(&["sql", "--output", &s(&out), "--to", &s(&root_file), "SELECT key FROM samples"], &Env::new());
    assert!(root_file.exists());
    let within = out.join("results");
    lyrics_ok(&["sql", "--output", &s(&out), "--to", &s(&within), "SELECT key FROM samples"], &Env::new());
    assert!(within.join("part-000000.parquet").exists());
    assert_eq!(sql_lines(&out, "SELECT count(*) FROM samples"), ["16"]);
}

#[test]
fn paths_with_dot_dot_work_in_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    webdataset(&root.join("corpus"), 2, 4);
    std::fs::create_dir_all(root.join("sub")).unwrap();
    // Through a folder that exists and one that does not, absolute and relative to the working directory.
    let input = format!("{}/sub/../corpus", s(root));
    let output = format!("{}/missing/../out", s(root));
    let ran = lyrics(&run_args(&input, &output, &[]), &Env::new());
    assert!(ran.status.success(), "run: {}", stderr(&ran));
    let out = root.join("out");
    assert!(out.join("_SUCCESS").exists(), "the output is where the path leads");
    assert!(!root.join("missing").exists());
    assert_eq!(samples(&out).len(), 8);

    let sub = root.join("sub");
    let planned = lyrics_in(&sub, &["plan", "--input", "../corpus"]);
    assert!(planned.status.success(), "plan: {}", stderr(&planned));
    assert!(String::from_utf8_lossy(&planned.stdout).contains("units   2"));
    let status = lyrics_in(&sub, &["status", "--output", "../out", "--json"]);
    assert!(status.status.success(), "status: {}", stderr(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["complete"], true);
    let status = lyrics(&["status", "--output", &output], &Env::new());
    assert!(status.status.success(), "status: {}", stderr(&status));
    let counted =
        lyrics_in(&sub, &["sql", "--output", "../out", "--format", "csv", "SELECT count(*) AS n FROM samples"]);
    assert!(counted.status.success(), "sql: {}", stderr(&counted));
    assert_eq!(String::from_utf8_lossy(&counted.stdout), "n\n8\n");
    let written =
        lyrics_in(&sub, &["sql", "--output", "../out", "--to", "../result.parquet", "SELECT key FROM samples"]);
    assert!(written.status.success(), "sql --to: {}", stderr(&written));
    assert!(root.join("result.parquet").exists());
    let rendered = lyrics_in(&sub, &["render", "--output", "../out", "--to", "../gallery"]);
    assert!(rendered.status.success(), "render: {}", stderr(&rendered));
    assert!(root.join("gallery/index.html").exists());
    // A rerun through other spellings of the same folders resumes the same job.
    let again = lyrics_in(&sub, &run_args("../corpus", &format!("{}/out", s(root)), &[]));
    assert!(again.status.success(), "rerun: {}", stderr(&again));
}

#[test]
fn an_output_inside_its_input_is_refused_at_planning() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 1, 2);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&corpus, &link).unwrap();
    for output in [corpus.join("out"), corpus.clone(), link.join("out"), corpus.join("a/../b")] {
        let ran = lyrics(&run_args(&s(&corpus), &s(&output), &[]), &Env::new());
        let text = stderr(&ran);
        assert_eq!(ran.status.code(), Some(2), "run --output {}: {text}", output.display());
        assert!(text.contains("inside the input"), "{text}");
        let spec = dir.path().join("job.toml");
        std::fs::write(&spec, format!("[output]\nuri = {:?}\n", s(&output))).unwrap();
        let planned = lyrics(&["plan", "--input", &s(&corpus), "--config", &s(&spec)], &Env::new());
        assert_eq!(planned.status.code(), Some(2), "plan: {}", stderr(&planned));
        assert!(stderr(&planned).contains("inside the input"), "{}", stderr(&planned));
    }
    let mut left: Vec<String> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["shard-00000.tar"], "nothing was written into the input");
    // A sibling whose name starts with the input's is outside it.
    lyrics_ok(&run_args(&s(&corpus), &s(&dir.path().join("corpus-out")), &[]), &Env::new());

    let (_moto, env, _dir) = s3_webdataset(1, 2);
    for output in ["s3://corpus/wds/out", "s3://corpus/wds", "s3://corpus/wds/x/../y/"] {
        let ran = lyrics(&run_args("s3://corpus/wds", output, &[]), &env);
        let text = stderr(&ran);
        assert_eq!(ran.status.code(), Some(2), "run --output {output}: {text}");
        assert!(text.contains("inside the input"), "{text}");
    }
    let (store, prefix) = store("s3://corpus/wds", &env);
    let listed: Vec<String> = runtime().block_on(async {
        use futures::TryStreamExt;
        store.list(Some(&prefix)).map_ok(|m| m.location.to_string()).try_collect().await.unwrap()
    });
    assert_eq!(listed, ["wds/shard-00000.tar"], "nothing was written into the input");
    lyrics_ok(&run_args("s3://corpus/wds", "s3://corpus/wds-out", &[]), &env);
}

/// A JSONL manifest of one scene per key (PNG files named by index beside it); returns the manifest and each
/// key's image bytes.
fn scene_corpus(dir: &Path, keys: &[&str]) -> (PathBuf, Vec<Vec<u8>>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut lines = String::new();
    let mut images = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let f = 0.05 * i as f32;
        let image =
            encode_png(&Scene::new(120, 80, &[(i % 5, Kind::Rectangle, [0.1 + f, 0.1, 0.6, 0.7 + f])]).render());
        std::fs::write(dir.join(format!("{i:06}.png")), &image).unwrap();
        images.push(image);
        lines.push_str(
            &serde_json::json!({"key": key, "image": format!("{i:06}.png"), "caption": "a shape"}).to_string(),
        );
        lines.push('\n');
    }
    let manifest = dir.join("k.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    (manifest, images)
}

#[test]
fn keys_too_long_for_a_file_name_export_under_short_distinct_names() {
    let dir = tempfile::tempdir().unwrap();
    let four = ["a".repeat(255), "b".repeat(255), "c".repeat(255), "d".repeat(256)].join("/");
    let keys = [
        "k".repeat(300),
        format!("{}/{}", "d".repeat(300), "e".repeat(300)),
        "x".repeat(1024),
        four,
        "ü".repeat(200),
        "fine".to_string(),
    ];
    assert!(keys.iter().all(|k| k.len() <= 1024));
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (manifest, images) = scene_corpus(&dir.path().join("corpus"), &refs);
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&manifest), &s(&out), &["--models", &fixture_models()]), &Env::new());
    assert_eq!(samples(&out).len(), keys.len(), "run accepts every key: {:#?}", errors(&out));

    let exported = |to: &Path| {
        let text = lyrics_ok(&["export", "--output", &s(&out), "--to", &s(to)], &Env::new());
        assert!(!text.contains("left out"), "{text}");
        let llava: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(to.join("llava.json")).unwrap()).unwrap();
        let mut named: Vec<String> =
            llava.as_array().unwrap().iter().map(|c| c["image"].as_str().unwrap().to_string()).collect();
        named.sort();
        named.dedup();
        named
    };
    let to = dir.path().join("export");
    let named = exported(&to);
    assert_eq!(named.len(), keys.len(), "one distinct image per key: {named:?}");
    assert!(named.contains(&"fine.png".to_string()), "a short key keeps its name: {named:?}");
    let mut seen = Vec::new();
    for name in &named {
        for component in name.split('/') {
            assert!(component.len() <= 255, "{} bytes in a component of {name}", component.len());
        }
        let bytes = std::fs::read(to.join("images").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let index = images.iter().position(|i| *i == bytes).expect("the image of one of the keys");
        seen.push(index);
    }
    seen.sort();
    assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>(), "each key's own image");
    let files = walk(&to.join("images")).into_iter().filter(|p| p.is_file()).count();
    assert_eq!(files, keys.len(), "no image is written that llava.json does not name");
    assert_eq!(exported(&dir.path().join("again")), named, "the names are deterministic");
}

#[test]
fn a_failed_export_never_leaves_a_json_that_looks_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, _) = scene_corpus(&dir.path().join("corpus"), &["a", "b"]);
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&manifest), &s(&out), &["--models", &fixture_models()]), &Env::new());
    for format in ["llava-json", "jsonl"] {
        let to = dir.path().join(format);
        lyrics_ok(&["export", "--output", &s(&out), "--to", &s(&to), "--format", format], &Env::new());
        let json = if format == "jsonl" { "instruct.jsonl" } else { "llava.json" };
        assert!(to.join(json).exists());
        // The images cannot be written: a file stands where their folder goes.
        std::fs::remove_dir_all(to.join("images")).unwrap();
        std::fs::write(to.join("images"), b"in the way").unwrap();
        let failed = lyrics(&["export", "--output", &s(&out), "--to", &s(&to), "--format", format], &Env::new());
        assert_eq!(failed.status.code(), Some(2), "{}", stderr(&failed));
        let left: Vec<String> = std::fs::read_dir(&to)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["images"], "{format}: a failed export leaves no JSON, old or partial");
    }
}

/// Runs lyrics-prep with its standard output a pipe whose reader is gone, as `lyrics-prep … | head` leaves it once
/// `head` has read its lines, and `stdin` piped in when given.
fn with_closed_stdout(args: &[&str], stdin: Option<&str>) -> Output {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut child = Command::new(bin())
        .args(args)
        .env("LYRICS_LOG", "info")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lyrics-prep");
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for lyrics-prep")
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, out) = finished_output(dir.path());
    let (corpus, out, models) = (s(&corpus), s(&out), fixture_models());
    let fresh = s(&dir.path().join("fresh"));
    let commands: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["plan", "--input", &corpus], None),
        (vec!["plan", "--input", &corpus, "--json"], None),
        (vec!["status", "--output", &out], None),
        (vec!["status", "--output", &out, "--json"], None),
        (vec!["status", "--output", &out, "--unfinished"], None),
        (vec!["sql", "--output", &out, "SELECT key FROM samples"], None),
        (vec!["sql", "--output", &out, "--format", "csv", "SELECT key FROM samples"], None),
        (vec!["sql", "--output", &out, "--format", "json", "SELECT key FROM samples"], None),
        (vec!["sql", "--output", &out], Some("SELECT key FROM samples;\nSELECT 1;\n")),
        (vec!["models", "list", "--models", &models], None),
        (run_args(&corpus, &fresh, &["--summary", "json"]), None),
    ];
    for (args, stdin) in &commands {
        let output = with_closed_stdout(args, *stdin);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {text}");
        for noise in ["panicked", "error:", "Broken pipe", "broken pipe"] {
            assert!(!text.contains(noise), "{args:?} said {noise:?}: {text}");
        }
    }
    assert!(Path::new(&fresh).join("_SUCCESS").exists(), "the run finished though nobody read its summary");
}

#[test]
fn render_where_is_one_predicate() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = finished_output(dir.path());
    let to = dir.path().join("gallery");
    for predicate in [
        "1=1) UNION ALL SELECT * FROM samples WHERE (1=1",
        "1=1 UNION SELECT * FROM samples",
        "1=1; DROP TABLE samples",
        "1=1) --",
        "key = 'x' AS chosen",
    ] {
        let output = lyrics(&["render", "--output", &s(&out), "--where", predicate, "--to", &s(&to)], &Env::new());
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "--where {predicate:?} must be refused: {text}");
        assert!(text.contains("--where"), "the error names the flag: {text}");
    }
    assert!(!to.join("index.html").exists(), "nothing was drawn");
    // A predicate, a subquery within it included, still chooses the samples.
    for (predicate, shown) in
        [("key < '000003'", 3), ("key IN (SELECT key FROM samples WHERE key >= '000014')", 2), ("true", 16)]
    {
        let text = lyrics_ok(&["render", "--output", &s(&out), "--where", predicate, "--to", &s(&to)], &Env::new());
        assert!(text.contains(&format!("rendered {shown} samples")), "{predicate}: {text}");
    }
}

#[test]
fn a_rerender_leaves_no_stale_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = finished_output(dir.path());
    let to = dir.path().join("gallery");
    let render = |extra: &[&str]| {
        let mut args =
            vec!["render", "--output", out.to_str().unwrap(), "--to", to.to_str().unwrap(), "--page-size", "3"];
        args.extend_from_slice(extra);
        lyrics_ok(&args, &Env::new())
    };
    render(&[]);
    assert!(to.join("page-6.html").exists() && to.join("thumbs/000016.jpg").exists());
    let mine = to.join("page-notes.html");
    std::fs::write(&mine, "a file of the user's").unwrap();
    render(&["--limit", "4"]);
    let mut pages: Vec<String> = std::fs::read_dir(&to)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".html"))
        .collect();
    pages.sort();
    assert_eq!(pages, ["index.html", "page-2.html", "page-notes.html"], "stale pages are gone, other files kept");
    let mut thumbs: Vec<String> = std::fs::read_dir(to.join("thumbs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    thumbs.sort();
    assert_eq!(thumbs, ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]);
    let index = std::fs::read_to_string(to.join("index.html")).unwrap();
    assert!(index.contains("page 1 of 2"), "{index}");
}

#[test]
fn a_manifest_without_an_image_column_says_so_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    std::fs::write(&manifest, "caption,picture_at\na,x.jpg\n").unwrap();
    let out = dir.path().join("out");
    let output = lyrics(&run_args(&s(&manifest), &s(&out), &[]), &Env::new());
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("found no image column (looked for"), "{text}");
}

#[test]
fn models_commands_need_a_models_file_named() {
    let dir = tempfile::tempdir().unwrap();
    for cwd in [dir.path(), repo_root().as_path()] {
        for action in ["list", "pull", "verify"] {
            let output = lyrics_in(cwd, &["models", action]);
            let text = stderr(&output);
            assert_eq!(output.status.code(), Some(2), "models {action} in {}: {text}", cwd.display());
            assert!(text.contains("--models"), "the error says what to pass: {text}");
            assert!(output.stdout.is_empty());
        }
    }
    let listed = lyrics_in(dir.path(), &["models", "list", "--models", &fixture_models()]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("local"));
}

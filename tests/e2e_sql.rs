//! End-to-end tests of `lyrics-prep sql`: DataFusion queries over a refined output on local files and on S3 (moto),
//! checked against what was drawn and against the manifest; tables with no shard stay
//! queryable; a query of an unfinished job sees only committed units.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::scenes::{Kind, Scene, encode_png};
use support::*;

/// Runs a query and returns its rows as JSON objects.
fn query(output: &str, sql: &str, env: &Env) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let result = lyrics(&["sql", "--output", output, "--format", "json", sql], env);
    assert!(result.status.success(), "sql {sql:?} failed:\n{}", stderr(&result));
    String::from_utf8(result.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn int(row: &serde_json::Map<String, serde_json::Value>, column: &str) -> i64 {
    row[column].as_i64().unwrap_or_else(|| panic!("{column} in {row:?}"))
}

/// Three fixture scenes (five shapes: two red, one of each of green, blue, yellow) and one corrupt image.
fn refined_corpus(dir: &Path) -> std::path::PathBuf {
    use Kind::{Ellipse, Rectangle};
    let scenes = [
        ("a", Scene::new(640, 480, &[(0, Rectangle, [0.05, 0.1, 0.4, 0.5]), (2, Ellipse, [0.5, 0.2, 0.9, 0.7])])),
        ("b", Scene::new(480, 640, &[(1, Ellipse, [0.1, 0.05, 0.8, 0.4]), (0, Rectangle, [0.3, 0.5, 0.9, 0.9])])),
        ("c", Scene::new(300, 300, &[(3, Rectangle, [0.2, 0.2, 0.7, 0.8])])),
    ];
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut tar = Tar::default();
    for (key, scene) in &scenes {
        tar.add(&format!("{key}.png"), &encode_png(&scene.render()));
        tar.add(&format!("{key}.txt"), b"shapes on grey");
    }
    tar.add("d.jpg", b"not a jpeg at all");
    std::fs::write(corpus.join("scenes.tar"), tar.finish()).unwrap();
    corpus
}

#[test]
fn sql_over_a_refined_output_counts_what_was_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = refined_corpus(dir.path());
    let out = s(&dir.path().join("out"));
    let models = s(&repo_root().join("examples/models/fixtures.toml"));
    lyrics_ok(
        &["run", "--input", &s(&corpus), "--output", &out, "--models", &models, "--progress", "off"],
        &Env::new(),
    );
    let env = Env::new();

    let labels = query(
        &out,
        "SELECT o['label'] AS label, count(*) AS n FROM (SELECT unnest(objects) AS o FROM samples) GROUP BY 1 ORDER BY 1",
        &env,
    );
    let labels: BTreeMap<String, i64> =
        labels.iter().map(|r| (r["label"].as_str().unwrap().to_string(), int(r, "n"))).collect();
    let expected: BTreeMap<String, i64> = [("blue", 1), ("green", 1), ("red", 2), ("yellow", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(labels, expected);

    // Every table is there, and agrees with the manifest.
    let manifest = manifest(&dir.path().join("out"));
    for table in ["samples", "errors", "pretrain", "instruct"] {
        let rows = query(&out, &format!("SELECT count(*) AS n FROM {table}"), &env);
        assert_eq!(int(&rows[0], "n"), manifest["rows"][table].as_i64().unwrap_or(0), "{table}");
    }
    let errors = query(&out, "SELECT key, stage FROM errors", &env);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["key"], "d");

    // Nested columns and joins: boxes of the red shapes, joined back to their image sizes.
    let red = query(
        &out,
        "SELECT s.key, s.width, o['box'][1] AS x1 FROM (SELECT key, width, unnest(objects) AS o FROM samples) s \
         JOIN pretrain p ON p.key = s.key WHERE o['label'] = 'red' ORDER BY s.key",
        &env,
    );
    let keys: Vec<&str> = red.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert!((red[0]["x1"].as_f64().unwrap() - 0.05).abs() < 0.01, "{red:?}");

    // The table printer and CSV work; a bad query fails with DataFusion's reason.
    let printed = lyrics(&["sql", "--output", &out, "SELECT count(*) AS n FROM samples"], &env);
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("| n |") && printed.contains("| 3 |"), "{printed}");
    let csv = lyrics(&["sql", "--output", &out, "--format", "csv", "SELECT key FROM samples ORDER BY key"], &env);
    assert_eq!(String::from_utf8_lossy(&csv.stdout), "key\na\nb\nc\n");
    let bad = lyrics(&["sql", "--output", &out, "SELECT nope FROM samples"], &env);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("nope"), "{}", stderr(&bad));
}

#[test]
fn sql_reads_an_output_on_s3_and_only_committed_units_of_an_unfinished_job() {
    let moto = moto();
    let env = s3_env(moto.port);
    create_bucket(moto.port, "out");
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("wds");
    webdataset(&corpus, 3, 4);

    lyrics_ok(&["run", "--input", &s(&corpus), "--output", "s3://out/job", "--progress", "off"], &env);
    let rows =
        query("s3://out/job", "SELECT count(*) AS n, count(distinct key) AS k, min(width) AS w FROM samples", &env);
    assert_eq!((int(&rows[0], "n"), int(&rows[0], "k")), (12, 12));
    assert!(int(&rows[0], "w") > 0);
    // No refiner ran: pretrain and instruct are empty tables with their schemas, not missing ones.
    let rows = query("s3://out/job", "SELECT count(*) AS n FROM instruct", &env);
    assert_eq!(int(&rows[0], "n"), 0);

    // One worker of three leaves the job unfinished: the query sees exactly that worker's committed units.
    lyrics_ok(
        &["run", "--input", &s(&corpus), "--output", "s3://out/partial", "--worker", "1/3", "--progress", "off"],
        &env,
    );
    let result = lyrics(
        &["sql", "--output", "s3://out/partial", "--format", "json", "SELECT count(*) AS n FROM samples"],
        &env,
    );
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(stderr(&result).contains("1 of 3 units"), "{}", stderr(&result));
    assert!(
        String::from_utf8_lossy(&result.stdout).contains("\"n\":4"),
        "{}",
        String::from_utf8_lossy(&result.stdout)
    );

    // A query naming no table of the output fails with DataFusion's reason.
    let bad = lyrics(&["sql", "--output", "s3://out/job", "SELECT * FROM nowhere"], &env);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("nowhere"), "{}", stderr(&bad));
}

#[test]
fn sql_is_read_only_and_says_each_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("wds");
    webdataset(&corpus, 1, 2);
    let out = s(&dir.path().join("out"));
    let env = Env::new();
    lyrics_ok(&["run", "--input", &s(&corpus), "--output", &out, "--progress", "off"], &env);

    let copied = dir.path().join("copied.csv");
    let created = dir.path().join("created");
    std::fs::create_dir_all(&created).unwrap();
    for refused in [
        format!("COPY (SELECT key FROM samples) TO '{}'", s(&copied)),
        format!("COPY samples TO '{}' STORED AS PARQUET", s(&created.join("x.parquet"))),
        format!("CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '{}'", s(&created)),
        "CREATE TABLE t AS SELECT 1".to_string(),
        "INSERT INTO samples SELECT * FROM samples".to_string(),
        "DROP TABLE samples".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ] {
        let result = lyrics(&["sql", "--output", &out, &refused], &env);
        assert!(!result.status.success(), "{refused} ran");
        assert!(stderr(&result).contains("read-only"), "{refused}: {}", stderr(&result));
    }
    assert!(!copied.exists(), "COPY wrote {}", copied.display());
    assert_eq!(std::fs::read_dir(&created).unwrap().count(), 0, "COPY or CREATE wrote into {}", created.display());
    // The tables are still there, and reads still work.
    let rows = query(&out, "SELECT count(*) AS n FROM samples", &env);
    assert_eq!(int(&rows[0], "n"), 2);

    let said_once = |sql: &str, needle: &str| {
        let result = lyrics(&["sql", "--output", &out, sql], &env);
        assert!(!result.status.success(), "{sql} ran");
        let text = stderr(&result);
        assert_eq!(text.matches(needle).count(), 1, "{sql}: `{needle}` not said exactly once:\n{text}");
        text
    };
    let missing = said_once("SELECT * FROM nowhere", "nowhere");
    assert!(["samples", "errors", "pretrain", "instruct"].iter().all(|t| missing.contains(t)), "{missing}");
    said_once("SELEC key FROM samples", "SELEC");
    said_once("SELECT nope FROM samples", "No field named nope");
}

/// `lyrics-prep sql` as a sqllogictest database: each query runs through the binary, and the printed table is the
/// result (an empty cell is NULL); a failing query's message is the error.
struct Cli {
    output: String,
}

#[derive(Debug)]
struct CliError(String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl sqllogictest::DB for Cli {
    type Error = CliError;
    type ColumnType = sqllogictest::DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<sqllogictest::DBOutput<Self::ColumnType>, Self::Error> {
        let result = lyrics(&["sql", "--output", &self.output, sql], &Env::new());
        if !result.status.success() {
            return Err(CliError(stderr(&result)));
        }
        let text = String::from_utf8_lossy(&result.stdout).into_owned();
        let mut lines = text.lines().filter(|l| l.starts_with('|'));
        let header = lines.next().ok_or_else(|| CliError(format!("no table printed:\n{text}")))?;
        let columns = header.matches('|').count() - 1;
        let rows: Vec<Vec<String>> = lines
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
                cells.iter().map(|c| if c.is_empty() { "NULL".to_string() } else { c.to_string() }).collect()
            })
            .collect();
        Ok(sqllogictest::DBOutput::Rows { types: vec![sqllogictest::DefaultColumnType::Any; columns], rows })
    }
}

/// `lyrics-prep demo --to <dir>/demo`: the bundled corpus refined, the output under `demo/output`.
fn demo_in(dir: &Path) -> PathBuf {
    let demo = dir.join("demo");
    let output = lyrics(&["demo", "--to", &s(&demo)], &Env::new());
    assert!(output.status.success(), "{}", stderr(&output));
    demo
}

#[test]
fn annotation_views_and_functions_give_the_expected_results() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_in(dir.path());
    let out = s(&demo.join("output"));
    let mut runner = sqllogictest::Runner::new(|| {
        let out = out.clone();
        async move { Ok(Cli { output: out }) }
    });
    if let Err(e) = runner.run_file(repo_root().join("tests/sql/annotations.slt")) {
        panic!("{}", e.display(false));
    }
}

#[test]
fn a_query_result_written_as_parquet_feeds_a_new_run() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_in(dir.path());
    let out = s(&demo.join("output"));
    let busy = dir.path().join("busy.parquet");
    let text = lyrics_ok(
        &[
            "sql",
            "--output",
            &out,
            "--to",
            &s(&busy),
            "SELECT * FROM samples WHERE array_length(objects) >= 3 ORDER BY key",
        ],
        &Env::new(),
    );
    assert!(text.contains("wrote 3 rows"), "{text}");
    let rerun = dir.path().join("rerun");
    lyrics_ok(&["run", "--input", &s(&busy), "--output", &s(&rerun), "--progress", "off"], &Env::new());
    let keys: Vec<String> = samples(&rerun).into_iter().map(|r| r.key).collect();
    let expected = query(&out, "SELECT key FROM objects GROUP BY 1 HAVING count(*) >= 3 ORDER BY 1", &Env::new());
    let expected: Vec<String> = expected.iter().map(|r| r["key"].as_str().unwrap().to_string()).collect();
    assert_eq!(keys, expected);
    // The images are the stored ones, byte for byte.
    let originals: BTreeMap<String, Vec<u8>> =
        samples(&demo.join("output")).into_iter().map(|r| (r.key, r.image.bytes.unwrap())).collect();
    for row in samples(&rerun) {
        assert_eq!(row.image.bytes.as_ref(), originals.get(&row.key), "{}", row.key);
    }
}

#[test]
fn statements_piped_into_the_prompt_run_one_by_one() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_in(dir.path());
    let script =
        "SELECT count(*) AS n\n  FROM samples;\nSELECT nope FROM samples;\nSELECT count(*) AS t FROM tags;\n";
    // `sql` on the demo's output with `script` on its standard input.
    let piped = |extra: &[&str]| {
        let mut child = std::process::Command::new(bin())
            .args(["sql", "--output", &s(&demo.join("output")), "--format", "csv"])
            .args(extra)
            .env("HOME", dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let result = piped(&[]);
    let printed = String::from_utf8_lossy(&result.stdout);
    assert_eq!(printed, "n\n16\nt\n28\n", "a multi-line statement, then one after the failing one");
    assert!(String::from_utf8_lossy(&result.stderr).contains("No field named nope"));
    assert_eq!(result.status.code(), Some(1), "a piped script with a failing statement fails");
    assert!(!dir.path().join(".cache/lyrics-prep/sql_history").exists(), "no history for piped statements");

    // `--timing`: one `time:` line on stderr for each statement, the failing one included; stdout is unchanged.
    let timed = piped(&["--timing"]);
    assert_eq!(String::from_utf8_lossy(&timed.stdout), printed);
    let stderr = String::from_utf8_lossy(&timed.stderr);
    let times: Vec<f64> =
        stderr.lines().filter_map(|l| l.strip_prefix("time: ")?.strip_suffix(" ms")?.parse().ok()).collect();
    assert_eq!(times.len(), 3, "{stderr}");
}

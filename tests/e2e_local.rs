//! End-to-end tests of `lyrics-prep` on the local filesystem: accounting of hostile input, resume after `kill -9`,
//! worker partitioning, every input format, resizing and EXIF, job-spec errors, status.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn bundled_sample_corpus_is_read_alike_by_four_readers() {
    let out = tempfile::tempdir().unwrap();
    let corpus = repo_root().join("examples/corpus");
    lyrics_ok(&run_args(&s(&corpus), &s(out.path()), &[]), &Env::new());
    python_script(
        "tests/readers/check_output.py",
        &[&s(out.path()), "--samples", "16", "--errors", "0"],
        &Env::new(),
    );
}

#[test]
fn every_hostile_item_ends_as_exactly_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let good = jpeg(64, 48, 1);
    let mut tar = Tar::default();
    tar.add("good.jpg", &good).add("good.txt", b"a good one");
    tar.add("truncated.jpg", &jpeg(64, 48, 2)[..600]).add("truncated.txt", b"cut");
    tar.add("empty.jpg", b"").add("empty.txt", b"nothing");
    tar.add("bomb.png", &png_bomb()).add("bomb.txt", b"boom");
    tar.add("text.jpg", b"this is not an image at all").add("text.txt", b"liar");
    tar.add("../evil.jpg", &good);
    tar.add("nocaption.jpg", &jpeg(32, 32, 3));
    tar.add("onlytext.txt", b"where is my image");
    tar.add("good.jpg", &good).add("good.txt", b"again");
    std::fs::write(corpus.join("hostile.tar"), tar.finish()).unwrap();
    let out = dir.path().join("out");
    let text = lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
    assert!(text.contains("decompression_bomb 1"), "{text}");

    let samples = samples(&out);
    let keys: Vec<&str> = samples.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["good", "nocaption"]);
    assert_eq!(samples[0].caption.as_deref(), Some("a good one"));
    assert_eq!(samples[1].caption, None);
    assert_eq!((samples[0].width, samples[0].height), (64, 48));

    let errors = errors(&out);
    // In key order, as every shard holds its rows.
    let expected = [
        ("../evil", "unsafe_path"),
        ("bomb", "decompression_bomb"),
        ("empty", "empty"),
        ("good", "duplicate_key"),
        ("onlytext", "missing_image"),
        ("text", "not_an_image"),
        ("truncated", "truncated"),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (row, (key, kind)) in errors.iter().zip(expected) {
        assert_eq!((row.key.as_str(), row.kind.as_str()), (key, kind), "{row:#?}");
        assert!(row.error.contains(key.trim_start_matches("../")), "the error names the item: {row:#?}");
        assert!(row.source.contains("hostile.tar#"), "{row:#?}");
    }
    assert!(errors.iter().find(|e| e.key == "bomb").unwrap().error.contains("30000x30000"));
    let m = manifest(&out);
    assert_eq!(m["items"], 9);
    assert_eq!(m["rows"]["samples"], 2);
    assert_eq!(m["rows"]["errors"], 7);
}

fn small_shards_spec(dir: &Path) -> String {
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        "[output]\nshard_rows = 2\nrow_group_rows = 1\n[pipeline]\nbatch_size = 2\nchannel_capacity = 1\n",
    )
    .unwrap();
    s(&spec)
}

#[test]
fn kill_9_at_any_point_then_rerun_gives_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 4, 5);
    let spec = small_shards_spec(dir.path());
    let reference = dir.path().join("reference");
    lyrics_ok(&run_args(&s(&corpus), &s(&reference), &["--config", &spec]), &Env::new());
    let expected = shards(&reference);
    assert_eq!(expected.len(), 12, "4 units of 5 rows in shards of 2: {:?}", expected.keys());

    for failpoint in ["after-shard:1", "before-marker:2", "before-marker:3"] {
        let out = dir.path().join(failpoint.replace(':', "-"));
        let env: Env = vec![("LYRICS_FAILPOINT".into(), failpoint.into())];
        let crashed = lyrics(&run_args(&s(&corpus), &s(&out), &["--config", &spec]), &env);
        assert!(!crashed.status.success(), "{failpoint} must kill the run");
        assert!(stderr(&crashed).contains("failpoint"), "{}", stderr(&crashed));
        assert!(!out.join("_SUCCESS").exists());
        let text = lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &spec]), &Env::new());
        assert!(text.contains("already committed"), "{text}");
        assert_eq!(shards(&out), expected, "after a crash at {failpoint}");
        assert_eq!(manifest(&out), manifest(&reference));
    }

    // A real SIGKILL at arbitrary moments, repeated until the job is through.
    let out = dir.path().join("sigkill");
    let mut kills = 0;
    for delay_ms in [30u64, 80, 150, 250, 400, 600, 900] {
        let mut child = Command::new(bin())
            .args(run_args(&s(&corpus), &s(&out), &["--config", &spec, "--threads", "1"]))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &spec]), &Env::new());
    assert!(kills > 0, "no run was killed: make the corpus bigger");
    assert_eq!(shards(&out), expected, "after {kills} SIGKILLs");
    assert_eq!(manifest(&out), manifest(&reference));
}

#[test]
fn three_concurrent_workers_write_what_one_writes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 7, 3);
    let one = dir.path().join("one");
    lyrics_ok(&run_args(&s(&corpus), &s(&one), &[]), &Env::new());
    let three = dir.path().join("three");
    let children: Vec<_> = (0..3)
        .map(|i| {
            let worker = format!("{i}/3");
            Command::new(bin()).args(run_args(&s(&corpus), &s(&three), &["--worker", &worker])).output_async()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(shards(&three), shards(&one));
    assert_eq!(manifest(&three), manifest(&one));
    assert!(three.join("_SUCCESS").exists());

    // The scheduler's environment gives the same split.
    let slurm = dir.path().join("slurm");
    for i in 0..3 {
        let env: Env = vec![
            ("SLURM_ARRAY_TASK_ID".into(), (i + 1).to_string()),
            ("SLURM_ARRAY_TASK_MIN".into(), "1".into()),
            ("SLURM_ARRAY_TASK_COUNT".into(), "3".into()),
        ];
        lyrics_ok(&run_args(&s(&corpus), &s(&slurm), &[]), &env);
    }
    let k8s = dir.path().join("k8s");
    for i in 0..3 {
        let env: Env = vec![("JOB_COMPLETION_INDEX".into(), i.to_string())];
        lyrics_ok(&run_args(&s(&corpus), &s(&k8s), &["--workers", "3"]), &env);
    }
    assert_eq!(shards(&slurm), shards(&one));
    assert_eq!(shards(&k8s), shards(&one));
}

trait SpawnOutput {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }
}

#[test]
fn every_input_format_reads_from_local_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    let root = s(dir.path());
    let corpora = formats::corpora_of_every_format(dir.path(), &root, &root, &format!("file://{root}"));
    for (input, format, spec) in corpora {
        let out = dir.path().join(format!("out-{format}"));
        let mut extra = vec!["--format", format];
        if let Some(spec) = &spec {
            extra.extend(["--config", spec.as_str()]);
        }
        lyrics_ok(&run_args(&input, &s(&out), &extra), &Env::new());
        outputs.push((out, format));
    }
    // The image without a COCO caption is a sample with none.
    let coco_out = &outputs.iter().find(|(_, f)| *f == "coco").unwrap().0;
    let c = samples(coco_out).into_iter().find(|r| r.key == "c").unwrap();
    assert!(c.captions.is_empty() && c.caption.is_none());
    formats::check_every_format(&outputs);
}

#[test]
fn resize_reencode_and_exif_orientation() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut tar = Tar::default();
    tar.add("wide.jpg", &jpeg(640, 480, 1));
    tar.add("rotated.jpg", &with_orientation(&jpeg(320, 200, 2), 6));
    tar.add("small.png", &png(20, 10, 3));
    std::fs::write(corpus.join("s.tar"), tar.finish()).unwrap();
    let spec = dir.path().join("job.toml");
    std::fs::write(
        &spec,
        "[resize]\nmode = \"keep_ratio\"\nimage_size = 256\n[encode]\nformat = \"jpg\"\nquality = 90\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &s(&spec)]), &Env::new());
    let rows = samples(&out);
    let size = |k: &str| rows.iter().find(|r| r.key == k).map(|r| (r.width, r.height, r.format.clone())).unwrap();
    assert_eq!(size("wide"), (256, 192, "jpeg".into()));
    assert_eq!(size("rotated"), (160, 256, "jpeg".into()), "EXIF orientation 6 turns 320x200 into 200x320");
    assert_eq!(size("small"), (256, 128, "jpeg".into()));
    for row in &rows {
        let img = image::load_from_memory(row.image.bytes.as_ref().unwrap()).unwrap();
        assert_eq!((img.width() as i32, img.height() as i32), (row.width, row.height), "{}", row.key);
    }

    // Without resizing, a rotated JPEG is stored upright; others keep their bytes.
    let out2 = dir.path().join("out2");
    lyrics_ok(&run_args(&s(&corpus), &s(&out2), &[]), &Env::new());
    let rows = samples(&out2);
    let rotated = rows.iter().find(|r| r.key == "rotated").unwrap();
    assert_eq!((rotated.width, rotated.height), (200, 320));
    let img = image::load_from_memory(rotated.image.bytes.as_ref().unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (200, 320), "stored upright, without EXIF");
    let small = rows.iter().find(|r| r.key == "small").unwrap();
    assert_eq!(small.image.bytes.as_deref(), Some(png(20, 10, 3).as_slice()));
}

#[test]
fn job_spec_errors_name_the_key_and_resume_refuses_another_spec() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 1, 2);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[resize]\nmode = \"stretch\"\n").unwrap();
    let out = dir.path().join("out");
    let output = lyrics(&run_args(&s(&corpus), &s(&out), &["--config", &s(&bad)]), &Env::new());
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("stretch") && text.contains("keep_ratio") && text.contains("bad.toml"), "{text}");

    let range = dir.path().join("range.toml");
    std::fs::write(&range, "[encode]\nquality = 101\n").unwrap();
    let text = stderr(&lyrics(&run_args(&s(&corpus), &s(&out), &["--config", &s(&range)]), &Env::new()));
    assert!(text.contains("encode.quality") && text.contains("1 to 100"), "{text}");

    lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "[encode]\nquality = 50\n").unwrap();
    let refused = lyrics(&run_args(&s(&corpus), &s(&out), &["--config", &s(&other)]), &Env::new());
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--force"), "{}", stderr(&refused));
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &s(&other), "--force"]), &Env::new());
    assert_eq!(samples(&out).len(), 2);

    let missing = lyrics(&run_args("/definitely/not/here", &s(&dir.path().join("o3")), &[]), &Env::new());
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/definitely/not/here"), "{}", stderr(&missing));
}

#[test]
fn one_input_spelt_relative_or_absolute_is_one_job() {
    let dir = tempfile::tempdir().unwrap();
    webdataset(&dir.path().join("corpus"), 2, 2);
    let out = s(&dir.path().join("out"));
    let relative =
        Command::new(bin()).current_dir(dir.path()).args(run_args("corpus", &out, &[])).output().unwrap();
    assert!(relative.status.success(), "{}", stderr(&relative));
    for input in [s(&dir.path().join("corpus")), format!("{}/./corpus/", s(dir.path()))] {
        let text = lyrics_ok(&run_args(&input, &out, &[]), &Env::new());
        assert!(text.contains("0 done, 2 already committed"), "{input}: {text}");
    }
    let elsewhere = dir.path().join("copy");
    webdataset(&elsewhere, 2, 2);
    let refused = lyrics(&run_args(&s(&elsewhere), &out, &[]), &Env::new());
    assert!(!refused.status.success(), "another folder's corpus is another job");
}

#[test]
fn plan_and_status_report_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 3, 2);
    let plan = Command::new(bin()).args(["plan", "--input", &s(&corpus)]).output().unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success() && text.contains("webdataset") && text.contains("units   3"), "{text}");
    let out = dir.path().join("out");
    // `--summary json` is the run's own account, for launchers: one JSON object on stdout.
    let run = lyrics(&run_args(&s(&corpus), &s(&out), &["--worker", "0/2", "--summary", "json"]), &Env::new());
    assert!(run.status.success(), "{}", stderr(&run));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        (summary["units"]["done"].as_u64(), summary["units"]["in_plan"].as_u64(), summary["items"].as_u64()),
        (Some(2), Some(3), Some(4))
    );
    assert_eq!((summary["rows"]["samples"].as_u64(), &summary["complete"]), (Some(4), &serde_json::json!(false)));
    // The busy line at full precision, for benchmarks.
    assert!(summary["busy_s"]["decode"].as_f64().is_some_and(|s| s > 0.0), "{summary}");
    // And the decode threads' own CPU time, summed from their thread clocks.
    assert!(summary["busy_s"]["decode.cpu"].as_f64().is_some_and(|s| s > 0.0), "{summary}");
    let status = Command::new(bin()).args(["status", "--output", &s(&out), "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (json["units_done"].as_u64(), json["units_total"].as_u64(), json["rows"].as_u64()),
        (Some(2), Some(3), Some(4))
    );
    assert_eq!(json["complete"], false);
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--worker", "1/2"]), &Env::new());
    let status = Command::new(bin()).args(["status", "--output", &s(&out), "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["complete"], true);
}

#[test]
fn a_resize_above_max_pixels_becomes_an_error_row() {
    // keep_ratio_smallest of a 1x50000 strip at 256 would be 256x12800000 (about 10 GB of pixels).
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut tar = Tar::default();
    tar.add("strip.png", &png(1, 50_000, 1)).add("strip.txt", b"a thin strip");
    tar.add("photo.jpg", &jpeg(64, 48, 2)).add("photo.txt", b"a small photo");
    std::fs::write(corpus.join("s.tar"), tar.finish()).unwrap();
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, "[resize]\nmode = \"keep_ratio_smallest\"\nimage_size = 256\n").unwrap();
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &s(&spec)]), &Env::new());

    let samples = samples(&out);
    assert_eq!(samples.len(), 1);
    assert_eq!((samples[0].key.as_str(), samples[0].width, samples[0].height), ("photo", 341, 256));
    let errors = errors(&out);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let error = &errors[0];
    assert_eq!(
        (error.key.as_str(), error.stage.as_str(), error.kind.as_str()),
        ("strip", "decode", "resize_too_large")
    );
    assert!(error.error.contains("256x12800000") && error.error.contains("decode.max_pixels"), "{error:#?}");
}

#[test]
fn shards_carry_row_group_statistics_and_the_page_index() {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::metadata::PageIndexPolicy;
    let out = tempfile::tempdir().unwrap();
    let corpus = repo_root().join("examples/corpus");
    lyrics_ok(&run_args(&s(&corpus), &s(out.path()), &[]), &Env::new());
    let shard =
        walk(&out.path().join("samples")).into_iter().find(|p| p.extension().is_some_and(|e| e == "parquet"));
    let file = std::fs::File::open(shard.unwrap()).unwrap();
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).unwrap();
    let metadata = builder.metadata();
    let key = metadata.file_metadata().schema_descr().columns().iter().position(|c| c.name() == "key").unwrap();
    let stats = metadata.row_group(0).column(key).statistics().expect("row-group statistics of key");
    assert!(stats.min_bytes_opt().is_some() && stats.max_bytes_opt().is_some());
    assert!(metadata.column_index().is_some(), "the page index (column index) is written");
    assert!(metadata.offset_index().is_some(), "the page index (offset index) is written");
}

#[test]
fn shards_hold_their_rows_sorted_by_key_whatever_order_the_source_gave() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::statistics::Statistics;
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("wds");
    std::fs::create_dir_all(&corpus).unwrap();
    // 150 samples: the first 70 in key order, the other 80 scrambled (37 is prime to 80); every tenth corrupt, so
    // the errors table has rows too.
    let order = (0..70u32).chain((0..80u32).map(|i| 70 + (i * 37) % 80));
    let mut tar = Tar::default();
    for n in order {
        let key = format!("k{n:03}");
        let image = if n % 10 == 3 { b"not a jpeg".to_vec() } else { jpeg(32, 24, n) };
        tar.add(&format!("{key}.jpg"), &image);
        tar.add(&format!("{key}.txt"), format!("caption {n}").as_bytes());
    }
    std::fs::write(corpus.join("shard-00000.tar"), tar.finish()).unwrap();
    // Row groups (and sorting runs) of 8 rows: the scrambled rows are sorted from several spilled runs.
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, "[output]\nrow_group_rows = 8\n").unwrap();
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &s(&spec)]), &Env::new());

    // Samples: the rows that came in order went straight to the first shard (cut where the order broke, after
    // the first batch of 64), the rest were sorted into the second.
    for (table, rows_per_shard) in [("samples", vec![64, 71]), ("errors", vec![15])] {
        let mut files: Vec<PathBuf> =
            walk(&out.join(table)).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
        files.sort();
        let keys = keys_of(&out, table);
        let mut counts = Vec::new();
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let keys: Vec<&str> =
                keys.iter().filter(|(shard, _)| *shard == name).map(|(_, k)| k.as_str()).collect();
            assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{table} {name}: {keys:?}");
            // The footer says so, and each row group's key range starts after the last one's ended.
            let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap()).unwrap();
            let metadata = builder.metadata();
            let columns = metadata.file_metadata().schema_descr();
            let key = columns.columns().iter().position(|c| c.name() == "key").unwrap();
            let mut last_max: Option<Vec<u8>> = None;
            for group in metadata.row_groups() {
                let sorting = group.sorting_columns().expect("sorting columns in the footer");
                assert_eq!(sorting.len(), 1);
                assert_eq!((sorting[0].column_idx, sorting[0].descending), (key as i32, false));
                let Some(Statistics::ByteArray(stats)) = group.column(key).statistics() else {
                    panic!("key stats")
                };
                let (min, max) =
                    (stats.min_opt().unwrap().data().to_vec(), stats.max_opt().unwrap().data().to_vec());
                if let Some(previous) = &last_max {
                    assert!(previous <= &min, "{table}: row groups overlap");
                }
                last_max = Some(max);
            }
            counts.push(keys.len());
        }
        assert_eq!(counts, rows_per_shard, "{table}: {files:?}");
    }
}

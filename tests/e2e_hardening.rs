//! End-to-end tests of what hostile or careless input must not do: keys that climb out of the export folder,
//! duplicate keys, tars cut short, members refused together, misspelt columns, refused sidecars, panicking
//! stages, models that fail to load, and reruns of a finished refining job.

use crate::support;

use std::path::Path;

use support::*;

/// A JSONL manifest whose rows name `000000.jpg`, `000001.jpg`, … beside it, one per key.
fn manifest_corpus(dir: &Path, keys: &[&str]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut lines = String::new();
    for (i, key) in keys.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:06}.jpg")), jpeg(64, 48, i as u32)).unwrap();
        lines
            .push_str(&serde_json::json!({"key": key, "image": format!("{i:06}.jpg"), "caption": "a"}).to_string());
        lines.push('\n');
    }
    let manifest = dir.join("k.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    manifest
}

#[test]
fn hostile_keys_are_refused_and_export_never_leaves_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let long = "k".repeat(5000);
    let keys = ["../../escape", "/abs/dir/ABS", "a/../../b", "C:\\x", &long, "fine", "sub/fine"];
    let manifest = manifest_corpus(&dir.path().join("corpus"), &keys);
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&manifest), &s(&out), &["--models", &fixture_models()]), &Env::new());

    let mut accepted: Vec<String> = samples(&out).into_iter().map(|r| r.key).collect();
    accepted.sort();
    assert_eq!(accepted, ["fine", "sub/fine"]);
    let errors = errors(&out);
    assert_eq!(errors.len(), 5, "{errors:#?}");
    for row in &errors {
        assert_eq!((row.stage.as_str(), row.kind.as_str()), ("read", "bad_key"), "{row:#?}");
        assert!(row.key.len() <= 1024, "an error row keeps at most 1,024 bytes of the key");
        assert!(row.error.contains("key"), "{row:#?}");
    }

    let to = dir.path().join("a/b/dir");
    lyrics_ok(&["export", "--output", &s(&out), "--to", &s(&to)], &Env::new());
    let written: Vec<_> =
        walk(dir.path()).into_iter().filter(|p| !p.starts_with(dir.path().join("corpus"))).collect();
    for path in &written {
        assert!(
            path.starts_with(&out) || path.starts_with(&to),
            "export wrote {} outside its folder",
            path.display()
        );
    }
    assert!(!Path::new("/abs/dir/ABS.jpg").exists());
    assert!(to.join("images/fine.jpg").exists() && to.join("images/sub/fine.jpg").exists());
    let llava: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(to.join("llava.json")).unwrap()).unwrap();
    for conversation in llava.as_array().unwrap() {
        let image = conversation["image"].as_str().unwrap();
        assert!(image == "fine.jpg" || image == "sub/fine.jpg", "{image}");
    }
}

#[test]
fn a_duplicate_key_is_an_error_row_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_corpus(&dir.path().join("corpus"), &["dup", "other", "dup"]);
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&manifest), &s(&out), &[]), &Env::new());
    let rows = samples(&out);
    assert_eq!(rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["dup", "other"]);
    assert!(rows[0].source.ends_with("#row=0"));
    let errors = errors(&out);
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].key.as_str(), errors[0].kind.as_str()), ("dup", "duplicate_key"));
    assert!(errors[0].error.contains("k.jsonl#row=0"), "names the first occurrence: {}", errors[0].error);
}

/// Two tars (two work units) that share the key `dup`.
fn tars_sharing_a_key(corpus: &Path) {
    std::fs::create_dir_all(corpus).unwrap();
    let mut first = Tar::default();
    first.add("a.jpg", &jpeg(64, 48, 1)).add("dup.jpg", &jpeg(64, 48, 2)).add("b.jpg", &jpeg(64, 48, 3));
    std::fs::write(corpus.join("00.tar"), first.finish()).unwrap();
    let mut second = Tar::default();
    second.add("dup.jpg", &jpeg(64, 48, 4)).add("dup.txt", b"another").add("c.jpg", &jpeg(64, 48, 5));
    std::fs::write(corpus.join("01.tar"), second.finish()).unwrap();
}

#[test]
fn a_key_repeated_in_another_unit_is_an_error_row_and_every_run_shape_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    tars_sharing_a_key(&corpus);
    let models = fixture_models();
    let one = dir.path().join("one");
    let text = lyrics_ok(&run_args(&s(&corpus), &s(&one), &["--models", &models]), &Env::new());
    assert!(text.contains("1 samples repeated a key"), "{text}");
    let before = shards(&one);
    let again = lyrics_ok(&run_args(&s(&corpus), &s(&one), &["--models", &models]), &Env::new());
    assert!(again.contains("1 samples repeated a key"), "a rerun of the finished job reports it too: {again}");
    assert_eq!(shards(&one), before, "a rerun of the finished job changes nothing");

    let mut keys: Vec<String> = samples(&one).into_iter().map(|r| r.key).collect();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c", "dup"]);
    let dup = samples(&one).into_iter().find(|r| r.key == "dup").unwrap();
    assert!(dup.source.contains("00.tar"), "the first unit's sample is kept: {}", dup.source);
    let errors = errors(&one);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].key.as_str(), errors[0].kind.as_str()), ("dup", "duplicate_key"));
    assert!(errors[0].source.contains("01.tar"), "{:?}", errors[0]);
    assert!(errors[0].error.contains("00.tar") && errors[0].error.contains("work unit 0"), "{:?}", errors[0]);
    for table in ["pretrain", "instruct"] {
        let of_dup: Vec<_> = keys_of(&one, table).into_iter().filter(|(_, k)| k == "dup").collect();
        assert!(!of_dup.is_empty(), "{table} keeps the first unit's rows");
        assert!(of_dup.iter().all(|(shard, _)| shard.starts_with("part-000000-")), "{table}: {of_dup:?}");
    }
    let manifest = manifest(&one);
    assert_eq!(manifest["rows"]["samples"], 4);
    assert_eq!(manifest["rows"]["errors"], 1);
    assert_eq!(manifest["errors_by_kind"]["duplicate_key"], 1);
    let marker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("_lyrics/done/000001.json")).unwrap()).unwrap();
    assert_eq!(
        (marker["rows"].as_u64(), marker["errors"].as_u64(), marker["duplicates"].as_u64()),
        (Some(1), Some(1), Some(1))
    );

    // The export holds one `dup`, and nothing is left out for a repeated key.
    let to = dir.path().join("export");
    let text = lyrics_ok(&["export", "--output", &s(&one), "--to", &s(&to)], &Env::new());
    assert!(!text.contains("left out"), "{text}");
    assert_eq!(std::fs::read(to.join("images/dup.jpg")).unwrap(), jpeg(64, 48, 2));

    // Two workers, the later unit first; and a finalize killed after rewriting, then rerun: the same bytes.
    let two = dir.path().join("two");
    for worker in ["1/2", "0/2"] {
        lyrics_ok(&run_args(&s(&corpus), &s(&two), &["--models", &models, "--worker", worker]), &Env::new());
    }
    assert_eq!(shards(&two), shards(&one), "two workers write what one does");
    let killed = dir.path().join("killed");
    let env: Env = vec![("LYRICS_FAILPOINT".into(), "before-amended-marker:1".into())];
    let crashed = lyrics(&run_args(&s(&corpus), &s(&killed), &["--models", &models]), &env);
    assert!(!crashed.status.success(), "the failpoint must kill the run");
    assert!(!killed.join("_SUCCESS").exists());
    lyrics_ok(&run_args(&s(&corpus), &s(&killed), &["--models", &models]), &Env::new());
    assert_eq!(shards(&killed), shards(&one), "a finalize rerun after a crash writes what one run does");
    for name in ["_lyrics/manifest.json", "_lyrics/duplicates.json", "_lyrics/done/000001.json"] {
        let read = |dir: &Path| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read(&killed), read(&one), "{name}");
        assert_eq!(read(&two), read(&one), "{name}");
    }
}

#[test]
fn a_tar_cut_inside_a_header_keeps_every_complete_sample() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let (a, b, c) = (jpeg(64, 48, 1), jpeg(64, 48, 2), jpeg(64, 48, 3));
    let mut tar = Tar::default();
    tar.add("a.jpg", &a).add("b.jpg", &b).add("c.jpg", &c);
    let bytes = tar.finish();
    let padded = |n: usize| n.div_ceil(512) * 512;
    let third_header = 512 + padded(a.len()) + 512 + padded(b.len());
    std::fs::write(corpus.join("cut.tar"), &bytes[..third_header + 100]).unwrap();
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
    // `b` may have had more members past the cut (a caption): it is the damage's row, not a half sample.
    let keys: Vec<String> = samples(&out).into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["a"]);
    let errors = errors(&out);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].key.as_str(), errors[0].kind.as_str()), ("b", "corrupt_archive"));
    assert_eq!(manifest(&out)["items"], 2);
}

/// The six-sample shard of the trial (image and caption each, 20,480 bytes), cut as `head -c N` cuts it: on a
/// 512-byte boundary between members (8192, where the `tar` crate sees a clean end), inside a header, inside a
/// caption, inside the end-of-archive blocks, and not at all. Every offset is covered by the reader's unit tests.
#[test]
fn a_tar_cut_anywhere_keeps_only_complete_samples_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut tar = Tar::default();
    for i in 0..6u32 {
        tar.add(&format!("{i}.jpg"), &jpeg(32, 32, i)).add(&format!("{i}.txt"), format!("caption {i}").as_bytes());
    }
    let full = tar.finish();
    let (mut starts, mut at) = (Vec::new(), 0);
    {
        let mut archive = tar::Archive::new(&full[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            starts.push(entry.raw_header_position() as usize);
            at = entry.raw_file_position() as usize + (entry.size() as usize).div_ceil(512) * 512;
        }
    }
    let end_blocks = at;
    // The header of sample 3's image: a cut right before it is a clean-looking 512-byte boundary.
    let boundary = starts[6];
    let cuts = [
        (boundary, 2, "2"),
        (starts[8] + 100, 3, "3"),
        (starts[9] + 512 + 3, 4, "4"),
        (end_blocks, 5, "5"),
        (end_blocks + 300, 5, "5"),
    ];
    for (n, (cut, kept, damaged)) in cuts.into_iter().enumerate() {
        let corpus = dir.path().join(format!("in-{n}"));
        std::fs::create_dir_all(&corpus).unwrap();
        std::fs::write(corpus.join("shard-00000.tar"), &full[..cut]).unwrap();
        let out = dir.path().join(format!("out-{n}"));
        let text = lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
        let rows = samples(&out);
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let expected: Vec<String> = (0..kept).map(|i| i.to_string()).collect();
        assert_eq!(keys, expected, "cut at {cut} of {}: {text}", full.len());
        for row in &rows {
            assert_eq!(row.caption.as_deref(), Some(format!("caption {}", row.key).as_str()), "cut at {cut}");
        }
        let errors = errors(&out);
        assert_eq!(errors.len(), 1, "cut at {cut}: {errors:#?}");
        assert_eq!((errors[0].key.as_str(), errors[0].kind.as_str()), (damaged, "corrupt_archive"), "cut at {cut}");
        assert_eq!(manifest(&out)["items"], kept + 1, "cut at {cut}");
        assert_eq!(manifest(&out)["errors_by_kind"]["corrupt_archive"], 1, "cut at {cut}");
    }
    // Whole, the shard is six samples and no error.
    let corpus = dir.path().join("whole");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("shard-00000.tar"), &full).unwrap();
    let out = dir.path().join("out-whole");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
    assert_eq!(samples(&out).len(), 6);
    assert!(errors(&out).is_empty());
}

/// Every sample is one row: a link as the image member refuses the sample once (not also as "no image"), and a
/// member that comes back to a key after another sample's members is a counted warning, not a second row.
#[test]
fn every_tar_sample_is_exactly_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |name: &str, data: &[u8], kind: tar::EntryType| {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).unwrap();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(kind);
        if kind == tar::EntryType::Symlink {
            header.set_link_name("a.jpg").unwrap();
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    };
    append("a.jpg", &jpeg(32, 32, 1), tar::EntryType::Regular);
    append("a.txt", b"caption a", tar::EntryType::Regular);
    append("b.jpg", b"", tar::EntryType::Symlink);
    append("b.txt", b"caption b", tar::EntryType::Regular);
    append("c.jpg", &jpeg(32, 32, 3), tar::EntryType::Regular);
    append("d.jpg", &jpeg(32, 32, 4), tar::EntryType::Regular);
    append("e.txt", b"caption e", tar::EntryType::Regular);
    append("d.txt", b"caption d, late", tar::EntryType::Regular);
    std::fs::write(corpus.join("x.tar"), builder.into_inner().unwrap()).unwrap();
    let out = dir.path().join("out");
    let text = lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
    let keys: Vec<String> = samples(&out).into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["a", "c", "d"]);
    let mut errors: Vec<(String, String)> = errors(&out).into_iter().map(|e| (e.key, e.kind)).collect();
    errors.sort();
    assert_eq!(errors, [("b".to_string(), "unsupported_member".to_string()), ("e".into(), "missing_image".into())]);
    assert_eq!(manifest(&out)["items"], 5, "five samples, five rows: {text}");
    assert!(text.contains("split_sample 1"), "the late member is a counted warning: {text}");
}

/// A kill -9 between a shard's last byte and its rename leaves a staging file. It is hidden from the readers that
/// open the folder, the rerun of its unit removes it, and `finalize` sweeps any left in committed units.
#[test]
fn staging_files_left_by_a_kill_break_no_reader_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 3, 4);
    let out = dir.path().join("out");
    let env: Env = vec![("LYRICS_FAILPOINT".into(), "before-rename:1".into())];
    let killed = lyrics(&run_args(&s(&corpus), &s(&out), &[]), &env);
    assert!(!killed.status.success(), "the failpoint kills the run: {}", stderr(&killed));
    let staged = |dir: &Path| -> Vec<String> {
        walk(dir)
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .filter(|name| name.contains('#'))
            .collect()
    };
    let left = staged(&out);
    assert!(!left.is_empty(), "the kill leaves a staging file");
    for name in &left {
        assert!(name.starts_with('.'), "a staging file is hidden from readers: {name}");
    }
    // Staging files as the earlier naming, and object_store's local store, left them: one in the killed unit, one in
    // a unit that is committed by the rerun.
    std::fs::write(out.join("samples/part-000001-000.parquet#21654000085"), b"").unwrap();
    std::fs::write(out.join("samples/part-000000-000.parquet#7"), b"").unwrap();
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
    assert_eq!(staged(&out), Vec::<String>::new(), "the rerun and its finalization remove every staging file");
    python_script("tests/readers/check_output.py", &[&s(&out), "--samples", "12", "--errors", "0"], &Env::new());

    // A finished output that a stray writer left a staging file in: `finalize` sweeps it.
    std::fs::write(out.join("samples/.part-000002-000.parquet#1000001"), b"").unwrap();
    python_script("tests/readers/check_output.py", &[&s(&out), "--samples", "12", "--errors", "0"], &Env::new());
    std::fs::write(out.join("samples/part-000002-000.parquet#3"), b"").unwrap();
    lyrics_ok(&["finalize", "--output", &s(&out)], &Env::new());
    assert_eq!(staged(&out), Vec::<String>::new());
    python_script("tests/readers/check_output.py", &[&s(&out), "--samples", "12", "--errors", "0"], &Env::new());
}

/// A Parquet input file that is not Parquet (a corrupt footer) is its unit's one `corrupt_input` error row naming
/// it: the unit commits and the job finishes, as for a damaged tar; deleting nothing, forcing nothing.
#[test]
fn a_corrupt_parquet_input_is_an_error_row_and_the_job_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let write = |name: &str, keys: &[&str]| {
        use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
        use std::sync::Arc;
        let images: Vec<Vec<u8>> = (0..keys.len()).map(|i| jpeg(40, 30, i as u32)).collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("key", Arc::new(StringArray::from_iter_values(keys.iter())) as ArrayRef),
            ("jpg", Arc::new(BinaryArray::from_iter_values(images.iter())) as ArrayRef),
        ])
        .unwrap();
        let path = corpus.join(name);
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None)
                .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        std::fs::read(&path).unwrap()
    };
    write("b.parquet", &["b0", "b1"]);
    // A footer that does not parse: the file's own bytes with its metadata overwritten.
    let mut broken = write("a.parquet", &["a0", "a1"]);
    let n = broken.len();
    for byte in &mut broken[n - 40..n - 8] {
        *byte = 0xff;
    }
    std::fs::write(corpus.join("a.parquet"), &broken).unwrap();
    // Cut mid-file, with the magic at both ends: the footer's length points nowhere.
    let mut cut = write("c.parquet", &["c0"]);
    cut.drain(10..cut.len() - 8);
    std::fs::write(corpus.join("c.parquet"), &cut).unwrap();

    let out = dir.path().join("out");
    for attempt in 0..2 {
        let output = lyrics(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
        assert!(output.status.success(), "attempt {attempt}: {}", stderr(&output));
        assert!(out.join("_SUCCESS").exists());
    }
    let keys: Vec<String> = samples(&out).into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["b0", "b1"]);
    let mut errors = errors(&out);
    errors.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    for (row, name) in errors.iter().zip(["a", "c"]) {
        assert_eq!((row.key.as_str(), row.kind.as_str()), (name, "corrupt_input"), "{row:#?}");
        assert!(row.source.ends_with(&format!("{name}.parquet")), "{row:#?}");
        assert!(row.error.contains(&format!("{name}.parquet")), "the error names the object: {row:#?}");
    }
    assert_eq!(manifest(&out)["errors_by_kind"]["corrupt_input"], 2);
}

#[test]
fn members_refused_together_are_one_row_and_a_second_image_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut tar = Tar::default();
    tar.add("../h-escape.jpg", &jpeg(32, 32, 1)).add("../h-escape.txt", b"out");
    tar.add("two.jpg", &jpeg(32, 32, 2)).add("two.png", &png(32, 32, 3));
    tar.add("ok.jpg", &jpeg(32, 32, 4));
    std::fs::write(corpus.join("x.tar"), tar.finish()).unwrap();
    let out = dir.path().join("out");
    let text = lyrics_ok(&run_args(&s(&corpus), &s(&out), &[]), &Env::new());
    assert_eq!(samples(&out).len(), 2);
    let errors = errors(&out);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].kind, "unsafe_path");
    assert!(text.contains("warnings second_image 1"), "the summary counts the warning: {text}");
    let output = lyrics(&["status", "--output", &s(&out), "--json"], &Env::new());
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["warnings_by_kind"]["second_image"], 1, "{status}");
}

#[test]
fn a_misspelt_column_is_refused_at_planning_for_every_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_corpus(&dir.path().join("corpus"), &["a", "b"]);
    let csv = dir.path().join("corpus/m.csv");
    std::fs::write(&csv, "image,caption\n000000.jpg,a\n").unwrap();
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, "[input]\nimage_column = \"nope\"\n").unwrap();
    for input in [&manifest, &csv] {
        let out = dir.path().join(format!("out-{}", input.extension().unwrap().to_string_lossy()));
        let output = lyrics(&run_args(&s(input), &s(&out), &["--config", &s(&spec)]), &Env::new());
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let text = stderr(&output);
        assert!(text.contains("input.image_column") && text.contains("nope"), "{text}");
        assert!(!out.join("_SUCCESS").exists());
    }
}

#[test]
fn a_refused_sidecar_makes_its_item_an_error_row() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("a.jpg"), jpeg(32, 32, 1)).unwrap();
    std::fs::write(corpus.join("a.txt"), "x".repeat(200_000)).unwrap();
    std::fs::write(corpus.join("b.jpg"), jpeg(32, 32, 2)).unwrap();
    std::fs::write(corpus.join("b.txt"), "fine").unwrap();
    let spec = dir.path().join("job.toml");
    std::fs::write(&spec, "[decode]\nmax_bytes = 100000\n").unwrap();
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &s(&spec)]), &Env::new());
    let rows = samples(&out);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].caption.as_deref(), Some("fine"));
    let errors = errors(&out);
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].key.as_str(), errors[0].kind.as_str()), ("a", "bad_sidecar"));
    assert!(errors[0].error.contains("a.txt"), "{}", errors[0].error);
}

#[test]
fn a_panic_costs_its_item_and_never_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 1, 4);
    // Per item (the text stage catches each sample), and per batch (the inference stage calls the models on a
    // whole batch: the runner turns the batch's items into error rows).
    for (point, expected_errors) in [("text:000001", 1), ("refine.infer:000002", 4)] {
        let out = dir.path().join(point.replace(':', "-"));
        let env: Env = vec![("LYRICS_FAILPOINT".into(), point.into())];
        let spec = dir.path().join("job.toml");
        std::fs::write(&spec, "[refine]\nbatch_size = 4\n").unwrap();
        lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--models", &fixture_models(), "--config", &s(&spec)]), &env);
        let errors = errors(&out);
        assert_eq!(errors.len(), expected_errors, "{point}: {errors:#?}");
        let stage = point.split(':').next().unwrap();
        for row in &errors {
            assert_eq!((row.stage.as_str(), row.kind.as_str()), (stage, "panic"), "{row:#?}");
        }
        assert!(errors.iter().any(|r| r.key == point.split(':').nth(1).unwrap()));
        assert_eq!(samples(&out).len() + errors.len(), 4);
        assert!(out.join("_SUCCESS").exists(), "the unit commits");
    }
}

#[test]
fn models_that_do_not_load_end_the_job_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 2, 2);
    let models_dir = repo_root().join("examples/models");
    let broken = dir.path().join("models");
    std::fs::create_dir_all(&broken).unwrap();
    let fixtures = std::fs::read_to_string(models_dir.join("fixtures.toml")).unwrap();
    for entry in std::fs::read_dir(&models_dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        std::fs::copy(&path, broken.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(broken.join("tagger.onnx"), b"not an onnx graph").unwrap();
    std::fs::write(broken.join("fixtures.toml"), fixtures).unwrap();
    let out = dir.path().join("out");
    let output =
        lyrics(&run_args(&s(&corpus), &s(&out), &["--models", &s(&broken.join("fixtures.toml"))]), &Env::new());
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("cannot load the models"), "{text}");
    assert!(!out.join("_SUCCESS").exists());
    assert!(!out.join("samples").exists(), "nothing of an unfinished unit is visible");
}

#[test]
fn reruns_of_a_finished_refining_job_exit_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    webdataset(&corpus, 1, 2);
    let out = dir.path().join("out");
    let (corpus, out, models) = (s(&corpus), s(&out), fixture_models());
    let args = run_args(&corpus, &out, &["--models", &models]);
    lyrics_ok(&args, &Env::new());
    for attempt in 0..30 {
        let output = lyrics(&args, &Env::new());
        assert_eq!(output.status.code(), Some(0), "rerun {attempt}: {}", stderr(&output));
    }
}

#[test]
fn a_key_repeated_in_another_unit_never_pairs_a_conversation_with_the_wrong_image() {
    use support::scenes::{Kind, Scene, encode_png};
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let first = encode_png(&Scene::new(120, 80, &[(0, Kind::Rectangle, [0.1, 0.1, 0.6, 0.7])]).render());
    let second = encode_png(&Scene::new(90, 90, &[(2, Kind::Ellipse, [0.2, 0.2, 0.9, 0.9])]).render());
    for (shard, image) in [("a.tar", &first), ("b.tar", &second)] {
        let mut tar = Tar::default();
        tar.add("dup.png", image).add("dup.txt", b"a shape");
        std::fs::write(corpus.join(shard), tar.finish()).unwrap();
    }
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--models", &fixture_models()]), &Env::new());
    let to = dir.path().join("export");
    let text = lyrics_ok(&["export", "--output", &s(&out), "--to", &s(&to)], &Env::new());
    // Finalizing made the second unit's `dup` an error row, so export has nothing to leave out.
    assert!(!text.contains("an earlier work unit already used"), "{text}");
    assert_eq!(std::fs::read(to.join("images/dup.png")).unwrap(), first, "the first unit's image is kept");
    let llava: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(to.join("llava.json")).unwrap()).unwrap();
    let conversations = llava.as_array().unwrap();
    assert!(!conversations.is_empty());
    let ids: std::collections::HashSet<&str> = conversations.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), conversations.len(), "conversation ids are unique in the export");
    for conversation in conversations {
        let talk = conversation["conversations"].to_string();
        assert!(!talk.contains("blue"), "a conversation of the second image was exported: {talk}");
    }
}

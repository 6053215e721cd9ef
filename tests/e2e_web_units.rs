//! End-to-end tests of web-scale Parquet inputs: a file cut into units of whole row groups, planned from its footer
//! alone; the samples of any cut are those of one unit per file, and a run killed mid-file resumes to the same
//! shards.

use crate::support;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use support::*;

fn spec(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    s(&path)
}

/// A Parquet file of `rows` rows in row groups of `group_rows`: inline JPEG bytes (`jpg`) when `images`, else a
/// few bytes each, a caption and a metadata column.
fn write_parquet(path: &Path, rows: usize, group_rows: usize, images: bool) {
    let bytes: Vec<Vec<u8>> = (0..rows)
        .map(|i| if images { jpeg(16 + (i % 7) as u32 * 4, 12, i as u32) } else { vec![i as u8; 3] })
        .collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("jpg", Arc::new(BinaryArray::from_iter_values(bytes.iter())) as ArrayRef),
        ("caption", Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("caption {i}")))) as ArrayRef),
        ("similarity", Arc::new(Int64Array::from_iter_values(0..rows as i64)) as ArrayRef),
    ])
    .unwrap();
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(group_rows)).build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    // One write per row group: the writer splits a larger batch by recursing once per group.
    for start in (0..rows).step_by(group_rows) {
        writer.write(&batch.slice(start, group_rows.min(rows - start))).unwrap();
    }
    writer.close().unwrap();
}

/// `lyrics-prep plan --json`'s units.
fn planned_units(input: &str, spec: &str) -> Vec<serde_json::Value> {
    let output = lyrics(&["plan", "--input", input, "--config", spec, "--json"], &Env::new());
    assert!(output.status.success(), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).expect("plan JSON");
    assert_eq!(plan["format"], "parquet");
    plan["units"].as_array().expect("units").clone()
}

fn sorted_samples(out: &Path) -> Vec<lyrics_schemas::SampleRow> {
    let mut rows = samples(out);
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    rows
}

#[test]
fn a_parquet_file_is_cut_on_row_groups_into_units_giving_the_samples_of_one_unit() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    write_parquet(&corpus.join("part.parquet"), 50, 5, true);
    let cut = spec(dir.path(), "cut.toml", "[input]\nrows_per_unit = 12\n");
    let whole = spec(dir.path(), "whole.toml", "[input]\nrows_per_unit = 1000000\n");

    let units = planned_units(&s(&corpus), &cut);
    let shape: Vec<(u64, [u64; 2], u64)> = units
        .iter()
        .map(|u| {
            assert!(u["object"].as_str().unwrap().ends_with("part.parquet"), "{u}");
            let range = [u["range"][0].as_u64().unwrap(), u["range"][1].as_u64().unwrap()];
            (u["id"].as_u64().unwrap(), range, u["first_row"].as_u64().unwrap_or(0))
        })
        .collect();
    // Ten groups of 5 rows: two groups (10 rows) fit in 12, a third does not.
    assert_eq!(shape, [(0, [0, 2], 0), (1, [2, 4], 10), (2, [4, 6], 20), (3, [6, 8], 30), (4, [8, 10], 40)]);
    let units = planned_units(&s(&corpus), &whole);
    assert_eq!(units.len(), 1, "{units:?}");
    assert!(units[0].get("range").is_none(), "a file that fits is one whole-file unit: {:?}", units[0]);

    let (out_cut, out_whole) = (dir.path().join("out-cut"), dir.path().join("out-whole"));
    lyrics_ok(&run_args(&s(&corpus), &s(&out_cut), &["--config", &cut]), &Env::new());
    lyrics_ok(&run_args(&s(&corpus), &s(&out_whole), &["--config", &whole]), &Env::new());
    assert_eq!(manifest(&out_cut)["units"], 5);
    assert!(errors(&out_cut).is_empty(), "{:?}", errors(&out_cut));
    let rows = sorted_samples(&out_cut);
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[49].key, "part-000000049");
    assert!(rows[49].source.ends_with("part.parquet#row=49"), "{}", rows[49].source);
    assert_eq!(rows[49].caption.as_deref(), Some("caption 49"));
    assert_eq!(rows, sorted_samples(&out_whole), "a cut must not change a sample");
}

#[test]
fn a_kill_9_in_the_middle_of_a_parquet_file_resumes_to_identical_shards() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    write_parquet(&corpus.join("part.parquet"), 40, 5, true);
    let spec = spec(
        dir.path(),
        "job.toml",
        "[input]\nrows_per_unit = 10\n[output]\nshard_rows = 4\nrow_group_rows = 2\n\
         [pipeline]\nbatch_size = 2\nchannel_capacity = 1\n",
    );
    let reference = dir.path().join("reference");
    lyrics_ok(&run_args(&s(&corpus), &s(&reference), &["--config", &spec]), &Env::new());
    assert_eq!(manifest(&reference)["units"], 4);

    let out = dir.path().join("out");
    let env: Env = vec![("LYRICS_FAILPOINT".into(), "before-marker:2".into())];
    let crashed = lyrics(&run_args(&s(&corpus), &s(&out), &["--config", &spec]), &env);
    assert!(!crashed.status.success(), "the failpoint must kill the run");
    assert!(stderr(&crashed).contains("failpoint"), "{}", stderr(&crashed));
    assert!(!out.join("_SUCCESS").exists());
    let text = lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &spec]), &Env::new());
    assert!(text.contains("already committed"), "{text}");
    assert_eq!(shards(&out), shards(&reference));
    assert_eq!(manifest(&out), manifest(&reference));
}

#[test]
fn planning_reads_only_footers_and_a_file_without_one_is_one_unit() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("a-broken.parquet"), b"PAR1 not a parquet file").unwrap();
    // 2,000 row groups of one row whose pages are all overwritten with zeros: only the footer is readable, so
    // planning that read a page would fail.
    let file = corpus.join("b-rows.parquet");
    write_parquet(&file, 2000, 1, false);
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    let footer = u32::from_le_bytes(bytes[len - 8..len - 4].try_into().unwrap()) as usize;
    bytes[4..len - 8 - footer].fill(0);
    std::fs::write(&file, bytes).unwrap();

    let units = planned_units(&s(&corpus), &spec(dir.path(), "seven.toml", "[input]\nrows_per_unit = 7\n"));
    assert_eq!(units.len(), 1 + 286, "the broken file whole, then 2,000 rows in sevens");
    assert!(units[0]["object"].as_str().unwrap().ends_with("a-broken.parquet"));
    assert!(units[0].get("range").is_none(), "{:?}", units[0]);
    let last = &units[286];
    assert_eq!((last["range"][0].as_u64(), last["range"][1].as_u64()), (Some(1995), Some(2000)));
    assert_eq!(last["first_row"], 1995);

    // Every unit reads its own row groups, finds them unreadable, and commits one error row.
    let per_hundred = spec(dir.path(), "hundred.toml", "[input]\nrows_per_unit = 100\n");
    let out = dir.path().join("out");
    lyrics_ok(&run_args(&s(&corpus), &s(&out), &["--config", &per_hundred]), &Env::new());
    assert_eq!(manifest(&out)["units"], 21);
    assert!(samples(&out).is_empty());
    let errors = errors(&out);
    assert_eq!(errors.len(), 21, "{errors:#?}");
    assert!(errors.iter().all(|e| e.kind == "corrupt_input"), "{errors:#?}");
    assert!(errors.iter().any(|e| e.error.contains("no row of it can be read")), "{errors:#?}");
    assert!(errors.iter().any(|e| e.error.contains("row groups 1900..2000 from row 1900 on")), "{errors:#?}");
}

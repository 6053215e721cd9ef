//! Small corpora of every input format describing the same three images, and the checks of what they produce.

use std::collections::BTreeSet;
use std::path::Path;

use super::{Tar, errors, jpeg, samples};

fn s(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Writes one small corpus per input format under `dir`, all describing the same three images (one with two
/// captions); returns (input, format name, job spec or None) triples. Manifests name their images in every way
/// users do: relative to the manifest, absolute, and relative to a configured `image_prefix` (path or URL).
///
/// The corpus is written under `dir`; `dir` is also found at `input_root` (a local path, or where a test uploads
/// it). `absolute_root` is how a manifest names it absolutely (a path or a URL), `prefix_root` how a job spec names
/// it as an image prefix.
pub fn corpora_of_every_format(
    dir: &Path,
    input_root: &str,
    absolute_root: &str,
    prefix_root: &str,
) -> Vec<(String, &'static str, Option<String>)> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        std::fs::write(images.join(format!("{name}.jpg")), jpeg(40 + i as u32 * 8, 30, i as u32)).unwrap();
        std::fs::write(images.join(format!("{name}.txt")), format!("caption {name}")).unwrap();
    }
    let jsonl = dir.join("manifest.jsonl");
    std::fs::write(
        &jsonl,
        format!(
            "{{\"image\": \"images/a.jpg\", \"caption\": \"caption a\"}}\n\
             {{\"url\": \"images/b.jpg\", \"caption\": [\"caption b\", \"second b\"], \"license\": \"cc0\"}}\n\
             \n\
             {{\"path\": \"{absolute_root}/images/c.jpg\", \"text\": \"caption c\", \"key\": \"custom-c\"}}\n"
        ),
    )
    .unwrap();
    let prefix_spec = |name: &str, prefix: String| {
        let spec = dir.join(format!("{name}.toml"));
        std::fs::write(&spec, format!("[input]\nimage_prefix = \"{prefix}\"\n")).unwrap();
        Some(s(&spec))
    };
    let csv = dir.join("csv");
    std::fs::create_dir_all(&csv).unwrap();
    std::fs::write(
        csv.join("manifest.csv"),
        "file_name,caption,score\na.jpg,\"caption a, with comma\",1\nb.jpg,\"caption\nb\",2\nc.jpg,caption c,3\n",
    )
    .unwrap();
    let coco = dir.join("coco");
    std::fs::create_dir_all(&coco).unwrap();
    std::fs::write(
        coco.join("captions.json"),
        r#"{"images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}, {"id": 2, "file_name": "b.jpg"}, {"id": 3, "file_name": "c.jpg"}],
            "annotations": [{"image_id": 1, "caption": "caption a"}, {"image_id": 2, "caption": "caption b"}, {"image_id": 1, "caption": "second a"}]}"#,
    )
    .unwrap();
    let wds = dir.join("wds");
    std::fs::create_dir_all(&wds).unwrap();
    let mut tar = Tar::default();
    for name in ["a", "b", "c"] {
        tar.add(&format!("{name}.jpg"), &std::fs::read(images.join(format!("{name}.jpg"))).unwrap());
        tar.add(&format!("{name}.txt"), format!("caption {name}").as_bytes());
    }
    std::fs::write(wds.join("shard-00000.tar"), tar.finish()).unwrap();
    let parquet = dir.join("parquet");
    std::fs::create_dir_all(&parquet).unwrap();
    write_parquet(&parquet.join("bytes.parquet"), &images);
    vec![
        (format!("{input_root}/wds"), "webdataset", None),
        (format!("{input_root}/parquet"), "parquet", None),
        (format!("{input_root}/manifest.jsonl"), "jsonl", None),
        (format!("{input_root}/csv"), "csv", prefix_spec("csv", format!("{absolute_root}/images"))),
        (format!("{input_root}/coco"), "coco", prefix_spec("coco", format!("{prefix_root}/images"))),
        (format!("{input_root}/images"), "images", None),
    ]
}

/// A Parquet file with a plain binary `jpg` column, a `txt` caption column and an extra metadata column.
fn write_parquet(path: &Path, images: &Path) {
    use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let names = ["a", "b", "c"];
    let bytes: Vec<Vec<u8>> =
        names.iter().map(|n| std::fs::read(images.join(format!("{n}.jpg"))).unwrap()).collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("jpg", Arc::new(BinaryArray::from_iter_values(bytes.iter())) as ArrayRef),
        (
            "caption",
            Arc::new(StringArray::from_iter_values(names.iter().map(|n| format!("caption {n}")))) as ArrayRef,
        ),
        ("similarity", Arc::new(Int64Array::from(vec![7, 8, 9])) as ArrayRef),
    ])
    .unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

pub fn check_every_format(outputs: &[(std::path::PathBuf, &str)]) {
    for (out, format) in outputs {
        let rows = samples(out);
        assert_eq!(rows.len(), 3, "{format}: {rows:#?}");
        assert!(errors(out).is_empty(), "{format}: {:#?}", errors(out));
        let widths: BTreeSet<i32> = rows.iter().map(|r| r.width).collect();
        assert_eq!(widths, BTreeSet::from([40, 48, 56]), "{format}");
        for row in &rows {
            let captioned = row.caption.as_deref().is_some_and(|c| c.starts_with("caption"));
            assert!(captioned || (*format == "coco" && row.key == "c"), "{format}: {row:?}");
            assert_eq!(row.height, 30);
        }
        match *format {
            "coco" => {
                let a = rows.iter().find(|r| r.key == "a").unwrap();
                assert_eq!(a.captions, ["caption a", "second a"]);
            }
            "jsonl" => {
                assert!(rows.iter().any(|r| r.key == "custom-c"));
                let b = rows.iter().find(|r| r.captions.len() == 2).unwrap();
                assert!(b.meta.as_deref().unwrap().contains("cc0"));
            }
            "csv" => {
                assert!(rows.iter().any(|r| r.caption.as_deref() == Some("caption a, with comma")));
                assert!(rows.iter().any(|r| r.caption.as_deref() == Some("caption\nb")));
            }
            "parquet" => assert!(rows[0].meta.as_deref().unwrap().contains("similarity")),
            _ => {}
        }
    }
}

//! End-to-end tests of grounded text and instruction data: fixture scenes through `lyrics-prep run --models`, the
//! `pretrain` table's formats carrying the drawn shapes' coordinates, and the `instruct` table loading in Hugging
//! Face `datasets`, passing a LLaVA validator, and exporting as JSON that `json.load` reads, as ms-swift's grounding
//! format and as InternVL's JSONL, whose boxes read back as those frameworks read them are the objects' boxes.

use crate::support;

use std::path::Path;

use lyrics_operators::text::{GroundedFormat, Size};
use lyrics_schemas::{InstructRow, PretrainRow};
use support::scenes::{Kind, Scene, box_iou, encode_png};
use support::*;

fn table<T>(dir: &Path, name: &str, read: impl Fn(&arrow::array::RecordBatch) -> Vec<T>) -> Vec<T> {
    let mut files: Vec<_> =
        walk(&dir.join(name)).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            out.extend(read(&batch.unwrap()));
        }
    }
    out
}

#[test]
fn grounded_texts_carry_the_drawn_coordinates_and_instructions_load_in_trainers() {
    use Kind::{Ellipse, Rectangle};
    let scenes = [
        (
            "a",
            Scene::new(640, 480, &[(0, Rectangle, [0.05, 0.1, 0.4, 0.5]), (2, Ellipse, [0.5, 0.2, 0.9, 0.7])]),
            "a red box next to a blue ball",
        ),
        (
            "b",
            Scene::new(480, 640, &[(1, Ellipse, [0.1, 0.05, 0.8, 0.4]), (4, Rectangle, [0.3, 0.5, 0.9, 0.9])]),
            "Green and purple shapes",
        ),
        ("c", Scene::new(300, 300, &[(3, Rectangle, [0.2, 0.2, 0.7, 0.8])]), "一个黄色的方块 yellow"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let mut tar = Tar::default();
    for (key, scene, caption) in &scenes {
        tar.add(&format!("{key}.png"), &encode_png(&scene.render()));
        tar.add(&format!("{key}.txt"), caption.as_bytes());
    }
    std::fs::write(corpus.join("scenes.tar"), tar.finish()).unwrap();
    let out = dir.path().join("out");
    let models = s(&repo_root().join("examples/models/fixtures.toml"));
    lyrics_ok(
        &["run", "--input", &s(&corpus), "--output", &s(&out), "--models", &models, "--progress", "off"],
        &Env::new(),
    );

    let pretrain = table(&out, "pretrain", |b| PretrainRow::from_batch(b).unwrap());
    assert_eq!(pretrain.len(), scenes.len());
    for (key, scene, caption) in &scenes {
        let row = pretrain.iter().find(|r| r.key == *key).unwrap();
        assert_eq!(row.caption.as_deref(), Some(*caption));
        assert!(row.image.bytes.is_some(), "pretrain rows carry the image");
        let image = Size::new(scene.width, scene.height);
        assert_eq!(row.formats.len(), 4, "the default formats: {:?}", row.formats);
        for (name, text) in &row.formats {
            let format = GroundedFormat::named(name).unwrap();
            // Kosmos-2's 32×32 grid decodes to cell centres.
            let min_iou = if format.name() == "kosmos2" { 0.7 } else { 0.95 };
            let parsed = format.parse_objects(text, image);
            assert_eq!(parsed.len(), scene.shapes.len(), "{key} {format:?}: {text}");
            for shape in &scene.shapes {
                let got = parsed
                    .iter()
                    .find(|o| o.phrase == shape.name())
                    .unwrap_or_else(|| panic!("{key} {format:?}: no {} in {text}", shape.name()));
                let iou = box_iou(got.bbox, shape.normalized_box(scene.width, scene.height));
                assert!(iou >= min_iou, "{key} {format:?} {}: IoU {iou} in {text}", shape.name());
            }
        }
        assert!(row.format("lyrics").unwrap().ends_with(caption), "the Lyrics input ends with the caption");
        let frames: Vec<(&str, i32, i32)> =
            row.frames.iter().map(|f| (f.format.as_str(), f.width, f.height)).collect();
        let side = scene.width.max(scene.height) as i32;
        assert!(frames.contains(&("shikra", side, side)), "{key}: Shikra's padded square is recorded: {frames:?}");
    }
    // Caption grounding: the colour words of the captions are grounded, character offsets and all.
    let a = pretrain.iter().find(|r| r.key == "a").unwrap();
    let spans: Vec<(i32, i32, &str)> =
        a.caption_spans.iter().map(|s| (s.start, s.end, s.phrase.as_str())).collect();
    assert_eq!(spans, vec![(0, 5, "red"), (18, 24, "blue")], "spans take in their article");
    let b = pretrain.iter().find(|r| r.key == "b").unwrap();
    let spans: Vec<(i32, i32, &str)> =
        b.caption_spans.iter().map(|s| (s.start, s.end, s.phrase.as_str())).collect();
    assert_eq!(spans, vec![(0, 5, "green"), (10, 16, "purple")]);
    assert!(
        b.grounded_caption.as_deref().unwrap().starts_with("<phrase>Green</phrase><object><patch_index_"),
        "{:?}",
        b.grounded_caption
    );
    let c = pretrain.iter().find(|r| r.key == "c").unwrap();
    assert_eq!(
        c.caption_spans.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(),
        vec![(8, 14)],
        "offsets count characters"
    );

    let instruct = table(&out, "instruct", |b| InstructRow::from_batch(b).unwrap());
    assert!(instruct.len() >= scenes.len() * 4, "{} conversations", instruct.len());
    let export = dir.path().join("export");
    lyrics_ok(&["export", "--output", &s(&out), "--format", "llava-json", "--to", &s(&export)], &Env::new());
    lyrics_ok(
        &["export", "--output", &s(&out), "--format", "jsonl", "--to", &s(&export), "--images", "none"],
        &Env::new(),
    );
    python_script(
        "tests/readers/check_instruct.py",
        &[&s(&out), &s(&export), "--conversations", &instruct.len().to_string()],
        &Env::new(),
    );
    // The fine-tuning frameworks' files: every conversation has a template (no caption holds a placeholder), and
    // the boxes each framework reads back are the objects' boxes.
    assert!(instruct.iter().all(|r| r.template.is_some()), "every conversation has its template");
    let (swift, internvl) = (dir.path().join("swift"), dir.path().join("internvl"));
    lyrics_ok(&["export", "--output", &s(&out), "--format", "swift", "--to", &s(&swift)], &Env::new());
    lyrics_ok(&["export", "--output", &s(&out), "--format", "internvl", "--to", &s(&internvl)], &Env::new());
    let checked = python_script(
        "tests/reference/fine_tuning_exports.py",
        &[&s(&out), &s(&swift), &s(&internvl), "--conversations", &instruct.len().to_string()],
        &Env::new(),
    );
    assert!(checked.contains("boxes read back"), "{checked}");

    // Reruns write the same conversations, byte for byte.
    let again = dir.path().join("again");
    lyrics_ok(
        &["run", "--input", &s(&corpus), "--output", &s(&again), "--models", &models, "--progress", "off"],
        &Env::new(),
    );
    assert_eq!(shards(&again), shards(&out));
}

//! SAM 3 as a detector that segments (`[detector] family = "sam3"`), on its real architecture exported tiny with
//! random weights (`scripts/export_real_models.py --size tiny`, `examples/models/real-tiny/sam3*`): both public
//! layouts through `lyrics-prep run` on photos of every shape, parity with an independent Python reference run at
//! test time on the same graphs (`tests/reference/sam3_reference.py`: usls's inference and transformers'
//! post-processing, on ONNX Runtime and numpy), the refusal of a decoder that follows neither layout, and the public
//! models file pulled from stand-ins of its host.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;

use lyrics_schemas::SampleRow;
use support::real_tiny::{PHOTOS, check_object, dir as real_tiny};
use support::scenes::{decode_rle, mask_iou};
use support::*;

/// A models file beside the real-tiny graphs (absolute paths), from `base` with `edit` applied.
fn models_file(dir: &Path, base: &str, edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(real_tiny().join(base)).unwrap();
    let root = s(&real_tiny());
    let files = ["model", "tags", "thresholds", "tokenizer", "vision_encoder", "text_encoder", "decoder"];
    let text: String = edit(text)
        .lines()
        .map(|line| match line.split_once(" = \"") {
            Some((key, rest)) if files.contains(&key.trim()) && !rest.starts_with('/') => {
                format!("{key} = \"{root}/{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let path = dir.join(base);
    std::fs::write(&path, text).unwrap();
    s(&path)
}

/// `lyrics-prep run` of `models` on the committed photos.
fn run_models(models: &str, out: &Path) -> std::process::Output {
    let photos = s(&real_tiny().join("photos"));
    let args = ["run", "--input", &photos, "--format", "images", "--output", &s(out), "--models", models];
    lyrics(&[&args[..], &["--progress", "off", "--summary", "json"]].concat(), &Env::new())
}

/// The run's rows by key; the run must succeed without error rows.
fn refine(models: &str, out: &Path) -> BTreeMap<String, SampleRow> {
    let output = run_models(models, out);
    assert!(output.status.success(), "{models}: {}", stderr(&output));
    assert!(errors(out).is_empty(), "{models}: {:#?}", errors(out));
    samples(out).into_iter().map(|r| (r.key.clone(), r)).collect()
}

/// Every photo at its displayed size, every box inside it, one mask per box at the displayed size whose area is
/// its pixels', `label` the prompt (`phrase`) it answers and `mask_score` its score; some objects in all.
fn check_contract(
    models: &str,
    rows: &BTreeMap<String, SampleRow>,
    prompts_of: impl Fn(&SampleRow) -> Vec<String>,
) {
    assert_eq!(rows.len(), PHOTOS.len(), "{models}");
    let mut objects = 0;
    for (key, w, h) in PHOTOS {
        let row = &rows[key];
        assert_eq!((row.width as u32, row.height as u32), (w, h), "{models}/{key}: displayed size");
        let prompts = prompts_of(row);
        for object in row.objects.as_ref().unwrap() {
            check_object(models, key, (w, h), object);
            assert!(prompts.contains(&object.phrase), "{models}/{key}: {object:?} answers none of {prompts:?}");
            assert_eq!(object.label, object.phrase, "{models}/{key}");
            assert_eq!(object.mask_score, Some(object.score), "{models}/{key}");
            objects += 1;
        }
    }
    assert!(objects > 0, "{models}: no objects at all");
}

#[test]
fn v2_layout_prompted_with_ram_tags() {
    let dir = tempfile::tempdir().unwrap();
    let rows = refine(&s(&real_tiny().join("sam3.toml")), &dir.path().join("out"));
    check_contract("sam3.toml", &rows, |row| row.tags.as_ref().unwrap().iter().map(|t| t.tag.clone()).collect());
    // The refiner column names SAM 3's three graphs and its tokenizer.
    let refiner: serde_json::Value = serde_json::from_str(rows["square"].refiner.as_deref().unwrap()).unwrap();
    let detector = &refiner["detector"];
    assert_eq!(detector["family"], "sam3", "{refiner}");
    for key in ["vision_encoder", "text_encoder", "decoder", "tokenizer"] {
        assert_eq!(detector[key]["sha256"].as_str().map(str::len), Some(64), "{key}: {refiner}");
    }
    assert!(refiner.get("segmenter").is_none(), "{refiner}");
}

#[test]
fn v1_layout_prompted_with_fixed_classes() {
    let dir = tempfile::tempdir().unwrap();
    let rows = refine(&models_file(dir.path(), "sam3_v1.toml", |t| t), &dir.path().join("out"));
    let classes: Vec<String> = ["person", "dog", "red car"].iter().map(|c| c.to_string()).collect();
    check_contract("sam3_v1.toml", &rows, |_| classes.clone());
    for row in rows.values() {
        assert!(row.tags.as_ref().is_none_or(|t| t.is_empty()), "{}: no tagger, no tags", row.key);
    }
}

#[test]
fn the_captions_phrases_are_the_prompts_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["landscape", "tiny"] {
        std::fs::copy(real_tiny().join(format!("photos/{name}.png")), photos.join(format!("{name}.png"))).unwrap();
    }
    std::fs::write(photos.join("landscape.txt"), "A Dog, next to a red car.").unwrap();
    // tiny has no caption: nothing to look for, and no error either.
    let models = models_file(dir.path(), "sam3_v1.toml", |t| {
        t.replace("prompt = [\"person\", \"dog\", \"red car\"]", "prompt = \"caption\"")
    });
    let out = dir.path().join("out");
    let args = ["run", "--input", &s(&photos), "--format", "images", "--output", &s(&out), "--models", &models];
    let output = lyrics(&[&args[..], &["--progress", "off"]].concat(), &Env::new());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(errors(&out).is_empty(), "{:#?}", errors(&out));
    let rows: BTreeMap<String, SampleRow> = samples(&out).into_iter().map(|r| (r.key.clone(), r)).collect();
    let objects = rows["landscape"].objects.as_ref().unwrap();
    assert!(!objects.is_empty(), "nothing found from the caption");
    for object in objects {
        assert!(["a dog", "next to a red car"].contains(&object.phrase.as_str()), "{object:?}");
    }
    assert!(rows["tiny"].objects.as_ref().is_none_or(|o| o.is_empty()));
}

/// A run is a tie when the reference's closest decision (a score to the threshold, an IoU to the NMS threshold)
/// is nearer than this: ONNX Runtime's kernels on another CPU, or another batch, may tip it.
const TIE: f64 = 1e-5;

/// Parity with `tests/reference/sam3_reference.py` on the same graphs and photos: the same instances kept (phrase,
/// score within 1e-4, box within 1e-3 of the image side, in the same order) and each mask's IoU with the
/// reference's at least 0.99. A photo whose reference run has a decision within `TIE` is compared loosely (at most
/// one instance more or less), and at most two photos may be so.
fn check_parity(base: &str, edit: impl Fn(String) -> String, decoder: &str) {
    let dir = tempfile::tempdir().unwrap();
    let models = models_file(dir.path(), base, edit);
    let rows = refine(&models, &dir.path().join("out"));
    let reference = dir.path().join("reference.json");
    let tiny = real_tiny();
    let file = |name: &str| s(&tiny.join(name));
    let mut args: Vec<String> = vec![
        "--vision".into(),
        file("sam3_vision_encoder.onnx"),
        "--text".into(),
        file("sam3_text_encoder.onnx"),
        "--decoder".into(),
        file(decoder),
        "--tokenizer".into(),
        file("sam3_tokenizer.json"),
        "--threshold".into(),
        "0.5".into(),
        "--iou".into(),
        "0.6".into(),
        "--max".into(),
        "100".into(),
    ];
    for prompt in ["person", "dog", "red car"] {
        args.extend(["--prompt".into(), prompt.into()]);
    }
    args.push(s(&reference));
    args.extend(PHOTOS.iter().map(|(key, ..)| file(&format!("photos/{key}.png"))));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python_script("tests/reference/sam3_reference.py", &args, &Env::new());
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let (mut compared, mut ties) = (0, 0);
    for entry in expected.as_array().unwrap() {
        let key = Path::new(entry["image"].as_str().unwrap()).file_stem().unwrap().to_string_lossy().into_owned();
        let row = &rows[&key];
        let (w, h) = (row.width as f32, row.height as f32);
        let objects = row.objects.as_ref().unwrap();
        let want = entry["objects"].as_array().unwrap();
        assert!(!want.is_empty(), "{base}/{key}: the reference keeps nothing: the test would tell nothing");
        let same = |got: &lyrics_schemas::ObjectRow, want: &serde_json::Value| {
            let b: Vec<f32> = want["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            got.phrase == want["phrase"].as_str().unwrap()
                && (f64::from(got.score) - want["score"].as_f64().unwrap()).abs() < 1e-4
                && (0..4).all(|k| {
                    let side = if k % 2 == 0 { w } else { h };
                    (got.bbox[k] - b[k]).abs() * side <= 1e-3 * w.max(h)
                })
        };
        let mask_iou_with = |got: &lyrics_schemas::ObjectRow, want: &serde_json::Value| {
            let mask = got.mask.as_ref().unwrap();
            let size = [
                want["mask"]["size"][0].as_i64().unwrap() as i32,
                want["mask"]["size"][1].as_i64().unwrap() as i32,
            ];
            assert_eq!(mask.size, size, "{base}/{key}: mask size");
            mask_iou(
                &decode_rle(mask.size, &mask.counts),
                &decode_rle(size, want["mask"]["counts"].as_str().unwrap()),
            )
        };
        if entry["margin"].as_f64().unwrap() < TIE {
            ties += 1;
            eprintln!("{base}/{key}: a decision within {TIE} of going the other way; compared loosely");
            assert!(objects.len().abs_diff(want.len()) <= 1, "{base}/{key}: {} vs {}", objects.len(), want.len());
            let found = want.iter().filter(|w| objects.iter().any(|g| same(g, w))).count();
            assert!(found + 1 >= want.len(), "{base}/{key}: {found} of {} found", want.len());
            continue;
        }
        assert_eq!(objects.len(), want.len(), "{base}/{key}: instances kept");
        for (i, (got, want)) in objects.iter().zip(want).enumerate() {
            assert!(same(got, want), "{base}/{key}#{i}: {got:?} vs {want}");
            let iou = mask_iou_with(got, want);
            assert!(iou >= 0.99, "{base}/{key}#{i}: mask IoU {iou}");
            compared += 1;
        }
    }
    eprintln!("{base}: {compared} instances compared, {ties} photos with a tie");
    assert!(ties <= 2 && compared > 0, "{base}: {ties} photos with a tie, {compared} instances compared");
}

#[test]
fn parity_with_the_python_reference_v2_in_batches_of_two() {
    // Classes rather than tags, so that the reference runs three prompts a photo; two prompts a decoder run.
    check_parity(
        "sam3.toml",
        |t| {
            let detector = t.find("[detector]").unwrap();
            t[detector..].replace("batch_size = 4", "batch_size = 2\nprompt = [\"person\", \"dog\", \"red car\"]")
        },
        "sam3_geo_encoder_mask_decoder.onnx",
    );
}

#[test]
fn parity_with_the_python_reference_v1() {
    check_parity("sam3_v1.toml", |t| t, "sam3_v1_decoder.onnx");
}

#[test]
fn a_decoder_of_neither_layout_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    // SAM 2's decoder in the decoder's place: a graph of another family.
    let models =
        models_file(dir.path(), "sam3_v1.toml", |t| t.replace("sam3_v1_decoder.onnx", "sam2_decoder.onnx"));
    let output = run_models(&models, &dir.path().join("out"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    for wanted in ["detector.decoder", "v1: 4 graphs", "v2: 3 graphs", "prompt_features", "input_boxes_labels"] {
        assert!(message.contains(wanted), "{wanted}: {message}");
    }
    // A text encoder of another family is refused the same way.
    let models =
        models_file(dir.path(), "sam3_v1.toml", |t| t.replace("sam3_text_encoder.onnx", "ram_logits.onnx"));
    let output = run_models(&models, &dir.path().join("out2"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("text_encoder"), "{}", stderr(&output));
}

/// `examples/models/public_sam3.toml` as written, its release assets served by a stand-in of their host on
/// 127.0.0.1 holding the real-tiny graphs of the same contract under the same names: the file parses, every source
/// downloads, and the graphs load and run under the keys it gives them.
#[test]
fn the_public_models_file_pulls_and_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hosts");
    let stand_ins = [
        ("CVHub520/X-AnyLabeling/v2.4.0/releases/ram_plus_swin_large_14m.onnx", "ram_targets.onnx"),
        ("jamjamjon/assets/sam3/releases/vision-encoder.onnx", "sam3_vision_encoder.onnx"),
        ("jamjamjon/assets/sam3/releases/text-encoder.onnx", "sam3_text_encoder.onnx"),
        ("jamjamjon/assets/sam3/releases/geo-encoder-mask-decoder.onnx", "sam3_geo_encoder_mask_decoder.onnx"),
        ("jamjamjon/assets/sam3/releases/tokenizer.json", "sam3_tokenizer.json"),
    ];
    for (path, graph) in stand_ins {
        let target = root.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(real_tiny().join(graph), target).unwrap();
    }
    let log = dir.path().join("hosts.log");
    let server = hub_server(&root, &log);
    let env: Env = vec![
        ("HF_HOME".into(), s(&dir.path().join("hf-home"))),
        ("LYRICS_CACHE".into(), s(&dir.path().join("cache"))),
    ];
    let name = "public_sam3.toml";
    let text = std::fs::read_to_string(repo_root().join("examples/models").join(name)).unwrap();
    let text = text
        .replace("https://github.com/", &format!("http://127.0.0.1:{}/", server.port))
        .replace("\"real-tiny/", &format!("\"{}/", s(&real_tiny())));
    assert!(!text.contains("https://"), "{name}: a source with no stand-in");
    let models = dir.path().join(name);
    std::fs::write(&models, text).unwrap();
    let pulled = lyrics(&["models", "pull", "--models", &s(&models)], &env);
    assert!(pulled.status.success(), "{name}: {}", stderr(&pulled));
    let out = dir.path().join("out");
    let photos = s(&real_tiny().join("photos"));
    let output = lyrics(
        &["run", "--input", &photos, "--format", "images", "--output", &s(&out), "--models", &s(&models)],
        &env,
    );
    assert!(output.status.success(), "{name}: {}", stderr(&output));
    assert!(errors(&out).is_empty(), "{name}: {:#?}", errors(&out));
    assert_eq!(samples(&out).len(), PHOTOS.len(), "{name}");
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(requests.contains("/jamjamjon/assets/releases/download/sam3/"), "{requests}");
}

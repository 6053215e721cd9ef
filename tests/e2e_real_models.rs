//! The refiner on the public model architectures (exported by `scripts/export_real_models.py --size tiny`, committed
//! under `examples/models/real-tiny/`): every contract through `lyrics-prep run` on photos of mixed shapes, parity
//! with what each export's own Python ecosystem makes of the same graphs (`reference.json`), and the refusal of a
//! graph that follows no known contract.

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;

use lyrics_schemas::SampleRow;
use support::real_tiny::{PHOTOS, check_object, dir as real_tiny};
use support::scenes::{decode_rle, mask_iou};
use support::*;

/// `lyrics-prep run` of a committed models file on the photos: its rows by key, and the process's output.
fn refine(models: &str, out: &Path) -> (BTreeMap<String, SampleRow>, std::process::Output) {
    let output = run_models(&s(&real_tiny().join(models)), out);
    assert!(output.status.success(), "{models}: {}", stderr(&output));
    assert!(errors(out).is_empty(), "{models}: {:#?}", errors(out));
    (samples(out).into_iter().map(|r| (r.key.clone(), r)).collect(), output)
}

/// The run's account of the inference thread (`--summary json`): time inside the sessions, and this thread's CPU
/// time outside them, which is at most its wall time outside them. The wait for the sessions to load comes before
/// the run writes anything (models that do not load leave no output), outside `refine.infer`.
fn check_time_accounting(models: &str, output: &std::process::Output) {
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{models}: no JSON summary ({e}): {}", String::from_utf8_lossy(&output.stdout)));
    let busy = |key: &str| summary["busy_s"][key].as_f64().unwrap_or(0.0);
    let (infer, session) = (busy("refine.infer"), busy("refine.session_run"));
    let cpu_outside = summary["busy_s"]["refine.infer_cpu_outside_run"]
        .as_f64()
        .unwrap_or_else(|| panic!("{models}: no refine.infer_cpu_outside_run in {summary}"));
    assert!(session > 0.0 && session <= infer, "{models}: {summary}");
    // Each clock is read a few microseconds apart from the other around every run.
    assert!(cpu_outside > 0.0 && cpu_outside <= infer - session + 0.005, "{models}: {summary}");
    // The CPU stages around the sessions report their threads' own CPU time.
    for stage in ["decode.cpu", "refine.prepare.cpu", "refine.finish.cpu"] {
        assert!(busy(stage) > 0.0, "{models}: no {stage} in {summary}");
    }
}

/// Every contract: no error rows, every photo's displayed size, every box inside the image, a mask for every box
/// at the displayed image's size; and the run's account of its inference thread's time. The parity tests leave the
/// time out: they run on emulated CPUs too (see `check_parity`), where the clocks say nothing about lyrics-prep.
fn check_contract(models: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (rows, output) = refine(models, &dir.path().join("out"));
    check_time_accounting(models, &output);
    assert_eq!(rows.len(), PHOTOS.len(), "{models}");
    let mut objects = 0;
    for (key, w, h) in PHOTOS {
        let row = &rows[key];
        assert_eq!((row.width as u32, row.height as u32), (w, h), "{models}/{key}: displayed size");
        assert!(!row.tags.as_ref().unwrap().is_empty(), "{models}/{key}: no tags");
        for object in row.objects.as_ref().unwrap() {
            check_object(models, key, (w, h), object);
            objects += 1;
        }
    }
    assert!(objects > 0, "{models}: no objects at all");
}

#[test]
fn hf_grounding_dino_with_sam_and_samexporter_encoder() {
    check_contract("hf.toml");
}

#[test]
fn idea_grounding_dino_static_size_with_raw_encoder_and_single_mask_decoder() {
    check_contract("idea.toml");
}

#[test]
fn hf_sam_split_every_box_in_one_call() {
    check_contract("hf_sam.toml");
}

#[test]
fn hf_sam_split_with_a_box_input() {
    check_contract("hf_sam_boxes.toml");
}

#[test]
fn a_graph_that_runs_at_its_traced_size_only_runs_with_image_size() {
    check_contract("hf_800.toml");
    // Without the setting the images go in at their own aspect: the graph fails inside (the backbone's padding was
    // frozen at 800x800), and each such photo is an error row naming the detector while the job goes on.
    let dir = tempfile::tempdir().unwrap();
    let models = models_file(dir.path(), "hf_800.toml", |t| t.replace("image_size = [800, 800]\n", ""));
    let out = dir.path().join("out");
    let output = run_models(&models, &out);
    assert!(output.status.success(), "{}", stderr(&output));
    let failed = errors(&out);
    assert!(!failed.is_empty() && failed.len() < PHOTOS.len(), "{failed:#?}");
    assert!(failed.iter().all(|e| e.error.contains("detector")), "{failed:#?}");
    assert_eq!(samples(&out).len() + failed.len(), PHOTOS.len());
    // On a graph that declares another static size the setting is refused at load.
    let models =
        models_file(dir.path(), "hf.toml", |t| t.replace("tokenizer = ", "image_size = [800, 800]\ntokenizer = "));
    let output = run_models(&models, &dir.path().join("static"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("detector.image_size = [800, 800]"), "{}", stderr(&output));
}

#[test]
fn sam2_as_samexporter_exports_it() {
    check_contract("sam2.toml");
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(real_tiny().join("reference.json")).unwrap()).unwrap()
}

/// Reference decisions closer than this, in logit units, to going the other way are ties (`margin` in
/// reference.json, from tests/reference/real_tiny_margins.py). ONNX Runtime's AVX-512 and AVX2 kernels give these
/// graphs' logits up to 6e-6 apart on the same input, and two sigmoid implementations round a score a unit either
/// way, which the margins count as 0: 1e-3 is well clear of both.
const TIE: f64 = 1e-3;

/// A mask chosen by a predicted IoU less than this ahead of the second is a tie too (`margin` of the `hf_sam*`
/// masks): PyTorch's and ONNX Runtime's predicted IoUs differ by up to 8e-8 on these graphs.
const MASK_TIE: f64 = 1e-5;

/// Parity with what each ecosystem's reference Python makes of the same graphs (`reference.json`): tags equal to
/// RAM's rule; each detection of transformers' post-processing (then NMS) found with its phrase, its score within
/// 1e-3 and its box within 1e-3 of the image side; no other detection; and the first masks' IoU with the segmenter's
/// reference at least 0.99.
///
/// With random weights some decisions are ties: two overlapping boxes whose scores are a rounding apart (NMS keeps
/// either), a token a hair from the text threshold. The reference was made on one CPU, and which way a tie goes
/// depends on the CPU's kernels: the reference records each detection's margin, and those under `TIE` are left out
/// (counted and printed), the objects a tie may give instead (the tied detection itself, or a `detection_rivals`
/// box the reference did not keep) are accepted by box and score, and a tied detection's mask is not compared; nor
/// is a mask chosen of three by a predicted IoU within `MASK_TIE` of the second's. At most a tenth of the
/// detections, and of the masks, may be ties, or the reference tells nothing.
///
/// On an x86 CPU without AVX-512 (ONNX Runtime picks its kernels by CPUID, with no switch of its own), run the
/// binary on an emulated Haswell, AVX2 only (Debian's `qemu-user`; tens of minutes, so not under nextest's
/// timeout): `LYRICS_TEST_EMULATOR="qemu-x86_64 -cpu Haswell" cargo test -p lyrics-prep --test e2e
/// e2e_real_models::parity -- --test-threads 1`.
fn check_parity(models: &str, masks_key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (rows, _) = refine(models, &dir.path().join("out"));
    let reference = reference();
    let margin = |d: &serde_json::Value| {
        d["margin"].as_f64().unwrap_or_else(|| panic!("reference.json: no margin in {d}: rerun the margins"))
    };
    let (mut total, mut ties, mut masks, mut mask_ties) = (0, 0, 0, 0);
    for (key, w, h) in PHOTOS {
        let row = &rows[key];
        let tags: Vec<&str> = row.tags.as_ref().unwrap().iter().map(|t| t.tag.as_str()).collect();
        let want: Vec<&str> =
            reference["tags"][key].as_array().unwrap().iter().map(|t| t["tag"].as_str().unwrap()).collect();
        assert_eq!(tags, want, "{models}/{key}: tags");
        let objects = row.objects.as_ref().unwrap();
        let detections = reference["detections"][key].as_array().unwrap();
        let side = w.max(h) as f32;
        // Scores equal to the last bits (saturated sigmoids) may come in either order: each reference detection is
        // matched to any one of ours.
        let same_box = |got: &lyrics_schemas::ObjectRow, want: &serde_json::Value| {
            let b: Vec<f32> = want["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let clamped = [
                b[0].clamp(0.0, w as f32),
                b[1].clamp(0.0, h as f32),
                b[2].clamp(0.0, w as f32),
                b[3].clamp(0.0, h as f32),
            ];
            let ours =
                [got.bbox[0] * w as f32, got.bbox[1] * h as f32, got.bbox[2] * w as f32, got.bbox[3] * h as f32];
            (got.score - want["score"].as_f64().unwrap() as f32).abs() < 1e-3
                && (0..4).all(|k| (ours[k] - clamped[k]).abs() <= 1e-3 * side)
        };
        let mut used = vec![false; objects.len()];
        let mut matched = vec![None; detections.len()];
        let mut tied = Vec::new();
        for (i, want) in detections.iter().enumerate() {
            total += 1;
            if margin(want) < TIE {
                eprintln!(
                    "{models}/{key}#{i}: a tie (margin {}, score {}), not compared",
                    margin(want),
                    want["score"]
                );
                ties += 1;
                tied.push(want);
                continue;
            }
            let found = objects.iter().enumerate().position(|(j, got)| {
                !used[j] && got.phrase == want["phrase"].as_str().unwrap() && same_box(got, want)
            });
            let j = found.unwrap_or_else(|| panic!("{models}/{key}#{i}: no detection matches {want}"));
            used[j] = true;
            matched[i] = Some(j);
        }
        // Each other object of ours is one a tie gave: a tied reference detection, or a box the reference dropped.
        let rivals = reference["detection_rivals"][key].as_array().unwrap();
        tied.extend(rivals.iter().filter(|r| margin(r) < TIE));
        let mut taken = vec![false; tied.len()];
        for got in objects.iter().enumerate().filter(|(j, _)| !used[*j]).map(|(_, got)| got) {
            let t = (0..tied.len()).find(|&t| !taken[t] && same_box(got, tied[t]));
            let t = t.unwrap_or_else(|| {
                panic!(
                    "{models}/{key}: {:?} {} {:?} is no reference detection, nor a tie's",
                    got.phrase, got.score, got.bbox
                )
            });
            taken[t] = true;
        }
        for (i, want) in reference[masks_key][key].as_array().unwrap().iter().enumerate() {
            let Some(j) = matched[i] else { continue };
            masks += 1;
            // transformers' SAM keeps the best of three masks by predicted IoU; segment-anything's single mask is
            // no choice (no margin).
            if want["margin"].as_f64().is_some_and(|m| m < MASK_TIE) {
                eprintln!("{models}/{key}#{i}: a tie between masks (margin {}), not compared", want["margin"]);
                mask_ties += 1;
                continue;
            }
            let got = objects[j].mask.as_ref().unwrap();
            let size =
                [want["rle"]["size"][0].as_i64().unwrap() as i32, want["rle"]["size"][1].as_i64().unwrap() as i32];
            assert_eq!(got.size, size, "{models}/{key}#{i}: mask size");
            let iou = mask_iou(
                &decode_rle(got.size, &got.counts),
                &decode_rle(size, want["rle"]["counts"].as_str().unwrap()),
            );
            assert!(iou >= 0.99, "{models}/{key}#{i}: mask IoU {iou} with the reference");
        }
    }
    eprintln!("{models}: {ties} of {total} reference detections within {TIE} of a decision, not compared");
    eprintln!("{models}: {mask_ties} of {masks} masks chosen within {MASK_TIE} of another, not compared");
    assert!(ties * 10 <= total, "{models}: {ties} of {total} reference detections are ties");
    assert!(mask_ties * 10 <= masks, "{models}: {mask_ties} of {masks} reference masks are ties");
}

/// The reference's decisions, rerun here: `gdino_hf.onnx` and transformers' SAM split in Python's ONNX Runtime on
/// this CPU's kernels, on the reference's own inputs, give every detection and mask choice of reference.json but
/// for ties, and the same ties. Where a parity test fails and this passes, the difference is lyrics-prep's, not the
/// CPU's.
#[test]
fn the_reference_decisions_hold_on_this_cpu_but_for_ties() {
    let out = python_script("tests/reference/real_tiny_margins.py", &[&s(&real_tiny())], &Env::new());
    assert!(
        out.lines().count() == PHOTOS.len() && out.lines().all(|l| l.ends_with(" 0 ties other than recorded")),
        "{out}"
    );
}

#[test]
fn parity_with_transformers_and_segment_anything() {
    check_parity("hf.toml", "sam");
}

#[test]
fn parity_with_transformers_sam_processor() {
    check_parity("hf_sam.toml", "hf_sam_points");
    check_parity("hf_sam_boxes.toml", "hf_sam");
}

#[test]
fn a_graph_of_no_known_contract_is_refused_naming_what_it_has_and_what_each_contract_needs() {
    let dir = tempfile::tempdir().unwrap();
    // The tagger graph where the detector should be.
    let models = models_file(dir.path(), "hf.toml", |t| t.replace("\"gdino_hf.onnx\"", "\"ram_logits.onnx\""));
    let output = run_models(&models, &dir.path().join("out"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    for needle in [
        "detector",
        "image f32[?, 3, 384, 384]",
        "logits",
        "export = \"idea\" needs inputs (img",
        "export = \"hf\" needs inputs (pixel_values",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in: {err}");
    }
}

/// A models file beside the real-tiny graphs (absolute paths), from `base` with `edit` applied.
fn models_file(dir: &Path, base: &str, edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(real_tiny().join(base)).unwrap();
    let root = s(&real_tiny());
    let files = ["model", "tags", "thresholds", "tokenizer", "encoder", "decoder"];
    let text: String = edit(text)
        .lines()
        .map(|line| match line.split_once(" = \"") {
            Some((key, rest)) if files.contains(&key.trim()) && !rest.starts_with('/') => {
                format!("{key} = \"{root}/{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let path = dir.join(format!("{}.toml", base.trim_end_matches(".toml")));
    std::fs::write(&path, text).unwrap();
    s(&path)
}

/// `lyrics-prep run` of `models` on the committed photos.
fn run_models(models: &str, out: &Path) -> std::process::Output {
    run_on(&real_tiny().join("photos"), models, out)
}

/// `lyrics-prep run` of `models` on a folder of images.
fn run_on(photos: &Path, models: &str, out: &Path) -> std::process::Output {
    lyrics(
        &[
            "run",
            "--input",
            &s(photos),
            "--format",
            "images",
            "--output",
            &s(out),
            "--models",
            models,
            "--progress",
            "off",
            "--summary",
            "json",
        ],
        &Env::new(),
    )
}

#[test]
fn detector_batches_give_what_single_images_give() {
    let dir = tempfile::tempdir().unwrap();
    let (single, _) = refine("hf.toml", &dir.path().join("single"));
    let models = models_file(dir.path(), "hf.toml", |t| t.replace("tokenizer = ", "batch_size = 3\ntokenizer = "));
    let out = dir.path().join("batched");
    let output = run_models(&models, &out);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(errors(&out).is_empty(), "{:#?}", errors(&out));
    let batched: BTreeMap<String, SampleRow> = samples(&out).into_iter().map(|r| (r.key.clone(), r)).collect();
    for (key, ..) in PHOTOS {
        let (a, b) = (single[key].objects.as_ref().unwrap(), batched[key].objects.as_ref().unwrap());
        assert_eq!(a.len(), b.len(), "{key}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.phrase, y.phrase, "{key}");
            assert!(
                x.bbox.iter().zip(y.bbox).all(|(p, q)| (p - q).abs() < 1e-4),
                "{key}: {:?} vs {:?}",
                x.bbox,
                y.bbox
            );
        }
    }
}

#[test]
fn batch_sizes_a_graph_cannot_take_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    // The IDEA graph takes a fixed batch of 1.
    let models =
        models_file(dir.path(), "idea.toml", |t| t.replace("tokenizer = ", "batch_size = 2\ntokenizer = "));
    let output = run_models(&models, &dir.path().join("idea"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("detector.batch_size = 2"), "{}", stderr(&output));
    // The official SAM decoder takes one box per call.
    let models = models_file(dir.path(), "hf.toml", |t| t + "batch_size = 8\n");
    let output = run_models(&models, &dir.path().join("sam"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("segmenter.batch_size = 8"), "{}", stderr(&output));
}

#[test]
fn a_fixed_vocabulary_is_detected_without_a_tagger() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_file(dir.path(), "hf_sam.toml", |t| {
        let detector = t.find("[detector]").unwrap();
        t[detector..].replace("tokenizer = ", "prompt = [\"Window\", \"stop light\"]\ntokenizer = ")
    });
    let out = dir.path().join("out");
    let output = run_models(&models, &out);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(errors(&out).is_empty(), "{:#?}", errors(&out));
    let rows = samples(&out);
    let mut objects = 0;
    for row in &rows {
        assert!(row.tags.as_ref().is_none_or(|t| t.is_empty()), "{}: no tagger, no tags", row.key);
        for object in row.objects.as_ref().unwrap() {
            // A phrase maps back to its class where it names one.
            if object.phrase.contains("window") {
                assert_eq!(object.label, "Window", "{}: {object:?}", row.key);
            }
            assert!(object.mask.is_some());
            objects += 1;
        }
    }
    assert!(objects > 0);
    assert!(std::fs::read_to_string(out.join("_lyrics/manifest.json")).is_ok());
}

#[test]
fn the_caption_is_the_prompt_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["landscape", "square", "tiny"] {
        std::fs::copy(real_tiny().join(format!("photos/{name}.png")), photos.join(format!("{name}.png"))).unwrap();
    }
    std::fs::write(photos.join("landscape.txt"), "A red Sardine next to a stop light").unwrap();
    std::fs::write(photos.join("square.txt"), "a window").unwrap();
    // tiny has no caption: nothing to detect, and no error either.
    let models = models_file(dir.path(), "hf.toml", |t| {
        let detector = t.find("[detector]").unwrap();
        t[detector..].replace("tokenizer = ", "prompt = \"caption\"\ntokenizer = ")
    });
    let out = dir.path().join("out");
    let output = run_on(&photos, &models, &out);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(errors(&out).is_empty(), "{:#?}", errors(&out));
    let rows: BTreeMap<String, SampleRow> = samples(&out).into_iter().map(|r| (r.key.clone(), r)).collect();
    let words = ["a", "red", "sardine", "next", "to", "stop", "light", "window", ",", "."];
    for key in ["landscape", "square"] {
        let objects = rows[key].objects.as_ref().unwrap();
        assert!(!objects.is_empty(), "{key}: nothing detected from its caption");
        for object in objects {
            // Phrases are made of the caption's tokens (word pieces rejoined), nothing else.
            for word in object.phrase.split_whitespace() {
                let word = word.trim_start_matches("##").trim_matches(|c| c == ',' || c == '.');
                assert!(
                    word.is_empty() || words.iter().any(|w| w.contains(word) || word.contains(w)),
                    "{key}: {word} in {object:?}"
                );
            }
        }
    }
    assert!(rows["tiny"].objects.as_ref().is_none_or(|o| o.is_empty()));
}

/// The public models files (`examples/models/public*.toml`) as written, with every source served by a stand-in of
/// its host on 127.0.0.1 (the hub's `resolve` redirects for `hf://` files, GitHub's release redirects for the
/// release assets) holding a real-tiny graph of the same contract at the same path and revision: the files parse,
/// every source resolves and downloads, and each graph loads and runs under the keys the file gives it.
#[test]
fn the_public_models_files_pull_and_run_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("hosts");
    let gdino = "onnx-community/grounding-dino-tiny-ONNX/ff690b0a8050566c290287545bd059350f3e9096";
    let slimsam = "Xenova/slimsam-77-uniform/5850ab45f587c112167512ffef949107115e26a0";
    let stand_ins = [
        ("CVHub520/X-AnyLabeling/v2.4.0/releases/ram_plus_swin_large_14m.onnx", "ram_targets.onnx"),
        (&format!("{gdino}/onnx/model.onnx") as &str, "gdino_hf_traced_800.onnx"),
        (&format!("{gdino}/tokenizer.json"), "tokenizer.json"),
        (&format!("{slimsam}/onnx/vision_encoder.onnx"), "hf_sam_vision_encoder.onnx"),
        (&format!("{slimsam}/onnx/prompt_encoder_mask_decoder.onnx"), "hf_sam_prompt_encoder_mask_decoder.onnx"),
        ("CVHub520/X-AnyLabeling/v0.2.0/releases/sam_vit_b_01ec64.encoder.onnx", "sam_encoder_preprocess.onnx"),
        ("CVHub520/X-AnyLabeling/v0.2.0/releases/sam_vit_b_01ec64.decoder.onnx", "sam_decoder.onnx"),
    ];
    for (path, graph) in stand_ins {
        let target = root.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(real_tiny().join(graph), target).unwrap();
    }
    let log = dir.path().join("hosts.log");
    let _server = hub_server(&root, &log);
    let port = _server.port;
    let env: Env = vec![
        ("HF_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
        ("HF_HOME".into(), s(&dir.path().join("hf-home"))),
        ("LYRICS_CACHE".into(), s(&dir.path().join("cache"))),
    ];
    for name in ["public.toml", "public_sam_vit_b.toml"] {
        let text = std::fs::read_to_string(repo_root().join("examples/models").join(name)).unwrap();
        let text = text
            .replace("https://github.com/", &format!("http://127.0.0.1:{port}/"))
            .replace("\"real-tiny/", &format!("\"{}/", s(&real_tiny())));
        assert!(!text.contains("https://"), "{name}: a source with no stand-in");
        let models = dir.path().join(name);
        std::fs::write(&models, text).unwrap();
        let pulled = lyrics(&["models", "pull", "--models", &s(&models)], &env);
        assert!(pulled.status.success(), "{name}: {}", stderr(&pulled));
        let verified = lyrics(&["models", "verify", "--models", &s(&models)], &env);
        let listing = String::from_utf8_lossy(&verified.stdout).into_owned();
        assert!(verified.status.success(), "{name}: {listing}");
        assert!(!listing.contains("CORRUPT") && !listing.contains("MISSING"), "{name}: {listing}");
        let out = dir.path().join(name.trim_end_matches(".toml"));
        let output = lyrics(
            &[
                "run",
                "--input",
                &s(&real_tiny().join("photos")),
                "--format",
                "images",
                "--output",
                &s(&out),
                "--models",
                &s(&models),
                "--progress",
                "off",
            ],
            &env,
        );
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        assert!(errors(&out).is_empty(), "{name}: {:#?}", errors(&out));
        let rows = samples(&out);
        assert_eq!(rows.len(), PHOTOS.len(), "{name}");
        let objects: Vec<_> = rows.iter().flat_map(|r| r.objects.clone().unwrap_or_default()).collect();
        assert!(!objects.is_empty() && objects.iter().all(|o| o.mask.is_some()), "{name}: {objects:#?}");
    }
    let requests = std::fs::read_to_string(&log).unwrap();
    assert!(requests.contains("/releases/download/v2.4.0/") && requests.contains("GET /cdn/"), "{requests}");
}
